"""The robot demo's report: report.md, metrics.json and pictures, from the computed figures."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from domainvlm.atomic import write_bytes
from domainvlm.detection.assess import Assessment
from domainvlm.detection.coco import CategorySplit, CocoDataset
from domainvlm.detection.demo import save_metrics
from domainvlm.detection.draw import draw_detections
from domainvlm.detection.evaluate import category_table, precision_recall_plot
from domainvlm.detection.types import Detections


def write_robot_report(output: Path, recipe: dict, detector, test: CocoDataset,
                       split: CategorySplit, result: Assessment, timings: dict) -> Path:
    figures = save_metrics(output, result, timings)
    precision_recall_plot(test, result.detections, split, output / "precision-recall.png",
                          title="ViLD student, held-out tabletop images (IoU 0.5)")
    _gallery(output / "detections.png", test, split, result, recipe)
    text = _markdown(recipe, detector, split, result, figures, timings)
    write_bytes(output / "report.md", text.encode())
    return output / "report.md"


def _gallery(path: Path, test: CocoDataset, split: CategorySplit, result: Assessment,
             recipe: dict) -> None:
    """Held-out images with the ensemble's detections (and the truth dashed in white)."""
    threshold = recipe["evaluation"]["score_threshold"]
    count = recipe["evaluation"]["gallery"]
    tiles = []
    names = test.categories
    for entry in test.images[-count:]:  # the last images: not the teacher's subset
        found = result.detections[entry.id]
        keep = found.scores >= threshold
        shown = Detections(found.boxes[keep], found.scores[keep],
                           [label for label, k in zip(found.labels, keep.tolist(), strict=True)
                            if k])
        truth = [(names[c], tuple(b)) for c, b in zip(test.labels[entry.id],
                                                      test.boxes[entry.id].tolist(),
                                                      strict=True)]
        with Image.open(entry.path) as img:
            tiles.append(draw_detections(img, shown, truth=truth))
    if not tiles:
        return
    columns = min(3, len(tiles))
    rows = (len(tiles) + columns - 1) // columns
    width, height = tiles[0].size
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * width, (i // columns) * height))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value < 0 else f"{100 * value:.1f}"


def _markdown(recipe: dict, detector, split: CategorySplit, result: Assessment,
              figures: dict, timings: dict) -> str:
    world = recipe["world"]
    lines = [
        "# Robot demo: open-vocabulary detection by ViLD distillation", "",
        f"Synthetic tabletop, split **{world['split']}**: {len(split.base)} base categories "
        f"(box labels in {world['train_images']} training images) and {len(split.novel)} "
        "novel categories, present in the training images but never labelled and never a "
        f"text target. Teacher: `{detector.teacher.name}`. Held-out test: "
        f"{world['test_images']} images, every object labelled; scoring tuned on "
        f"{world['validation_images']} validation images.", "",
        f"Novel categories: {', '.join(split.novel)}.", "",
        "## Results on held-out images", "",
        "| row | base AP50 | novel AP50 | base AP | novel AP | base top-1 | novel top-1 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in result.rows.items():
        coco, acc = row["coco"], row["accuracy"]
        lines.append(f"| {name} | {_pct(coco['base']['AP50'])} | {_pct(coco['novel']['AP50'])}"
                     f" | {_pct(coco['base']['AP'])} | {_pct(coco['novel']['AP'])} | "
                     f"{_pct(acc['base'])} | {_pct(acc['novel'])} |")
    teacher_note = ""
    if result.teacher_images:
        teacher_note = (f" The teacher rows and the \"same images\" row use the first "
                        f"{result.teacher_images} test images.")
    lines += [
        "",
        "Top-1: label accuracy over the whole vocabulary of ground-truth objects that some "
        "region localises (IoU >= 0.5), so a novel object named as a base category of the same"
        " colour counts as wrong. The control scores the same regions with a head trained on "
        "random category embeddings: what transfers without the teacher's text space."
        + teacher_note, "",
        f"Class-agnostic proposal recall (IoU 0.5, {result.proposals_per_image:.0f} proposals "
        f"per image): base {_pct(result.recall.get('base'))} %, novel "
        f"{_pct(result.recall.get('novel'))} %.", "",
        "## Against the targets", "",
        "| figure | value | target |", "| --- | --- | --- |",
        f"| novel AP50 / base AP50 | {figures['novel_over_base_AP50']} | >= 0.9 (easy) |",
        f"| novel top-1 / base top-1 | {figures['novel_over_base_top1']} | >= 0.85 (easy) |",
        f"| ensemble vs text-only, novel AP50 | {_pct(figures['novel_AP50'])} vs "
        f"{_pct(figures['text_only_novel_AP50'])} | ensemble above |",
        f"| ensemble vs text-only, novel top-1 | {_pct(figures['novel_top1'])} vs "
        f"{_pct(figures['text_only_novel_top1'])} | ensemble above |",
    ]
    if "student_over_teacher_novel_AP50" in figures:
        lines += [
            f"| student / teacher novel AP50, same proposals | "
            f"{figures['student_over_teacher_novel_AP50']} | >= 0.8 |",
            f"| speed: teacher crop-and-classify / student | "
            f"{figures['speedup_over_teacher']}x ({figures['teacher_ms_per_image']:.0f} vs "
            f"{figures['student_ms_per_image']:.0f} ms per image) | >= 10x "
            "(benchmarks/detect_speed.py measures it properly) |",
        ]
    lines += [
        "", "## Pictures", "",
        "Held-out images, detections above the score threshold "
        f"{recipe['evaluation']['score_threshold']} (truth dashed in white):", "",
        "![detections](detections.png)", "", "![precision-recall](precision-recall.png)", "",
        "## Per category (ViLD ensemble)", "",
        category_table(result.rows["ViLD (ensemble)"]["coco"], split), "",
        "## Time", "",
        " | ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()), "",
        f"Scoring chosen on validation: `{detector.scoring}`.", "",
        "Try it: `domainvlm detect IMAGE --model "
        f"{Path('run') / 'detector'} --prompt 'red mug' --prompt 'metal can' -o out.png` "
        "(from this folder).", "",
    ]
    return "\n".join(lines)
