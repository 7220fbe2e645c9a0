"""`domainvlm distill`, `domainvlm detect` and `domainvlm demo robot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def distill_command(
    config: Annotated[Path, typer.Option(
        help="YAML recipe: train (COCO instances.json), split (base/novel names), validation "
        "(COCO with every label, to tune scoring), teacher (hub id or folder of a CLIP-like "
        "model; empty: the shipped nano CLIP), steps, batch_size, learning_rate, "
        "image_loss_weight, distill_start, distill_proposals, student {...}. Paths are "
        "relative to the recipe file.", exists=True, dir_okay=False)],
    output: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, config.json and "
                                               "the final detector/.")] = Path("runs/distill"),
    resume: Annotated[bool, typer.Option(help="Continue from OUTPUT/checkpoint.pt.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start again over an earlier run.")] = False,
) -> None:
    """Distil an open-vocabulary detector (ViLD) from a CLIP-like teacher.

    Trains on base-category boxes only; the teacher's region embeddings carry every other
    category in. The result, OUTPUT/detector, answers any prompt: `domainvlm detect IMAGE
    --model OUTPUT/detector --prompt "red mug"`.
    """
    import sys

    from domainvlm.detection.distill import DistillConfig, distill
    from domainvlm.errors import RunInterrupted

    try:
        final = distill(DistillConfig.from_yaml(config), output, resume=resume,
                        overwrite=overwrite, recipe=config)
    except RunInterrupted as stop:
        typer.echo(f"{stop}\nresume with: domainvlm distill --config {config} --output "
                   f"{output} --resume", err=True)
        sys.exit(130)
    typer.echo(f"wrote {final}")


def detect_command(
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...).",
                                                 exists=True, dir_okay=False)],
    prompt: Annotated[list[str], typer.Option(
        help="A category to find, in words; repeat for several: --prompt 'red mug' "
        "--prompt 'blue box'.")],
    model: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="A distilled detector folder (domainvlm distill), or an OWLv2 / OWL-ViT / "
        "Grounding DINO hub id or folder [default: the shipped robot detector, distilled by "
        "`domainvlm demo robot` for its synthetic tabletop].")] = None,
    output: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "-o", "--output", help="Write the image with boxes, labels and scores drawn (one "
        "input) or a folder of them (several inputs).")] = None,
    score_threshold: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.3,
    nms_threshold: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.5,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON: per image, boxes "
                                               "(x1, y1, x2, y2 pixels), scores, labels.")]
    = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT (a file, or an earlier "
                                                 "`detect` folder).")] = False,
) -> None:
    """Find objects named in words: boxes, labels and scores per image.

    Example: domainvlm detect scene.png --prompt "red mug" --prompt "metal can" -o out.png
    """
    import json

    from PIL import Image

    from domainvlm.detection.detector import load_detector, shipped_detector
    from domainvlm.outputs import check_file

    if output is not None and len(images) == 1:
        check_file(output, inputs=images, overwrite=overwrite)

    detector = load_detector(model or shipped_detector())
    opened = []
    for path in images:
        with Image.open(path) as img:
            img.load()
            opened.append(img.copy())
    found = detector.detect(opened, prompt, score_threshold=score_threshold,
                            nms_threshold=nms_threshold)
    if json_output:
        typer.echo(json.dumps([{"image": str(path), "boxes": [[round(v, 1) for v in box]
                                                                for box in d.boxes.tolist()],
                                "scores": [round(s, 4) for s in d.scores.tolist()],
                                "labels": d.labels} for path, d in zip(images, found,
                                                                        strict=True)], indent=2))
    else:
        for path, d in zip(images, found, strict=True):
            typer.echo(f"{path}: {len(d)} detection(s)")
            for box, score, label in zip(d.boxes.tolist(), d.scores.tolist(), d.labels,
                                         strict=True):
                x1, y1, x2, y2 = (round(v) for v in box)
                typer.echo(f"  {label:<24} {score:.2f}  [{x1}, {y1}, {x2}, {y2}]")
    if output is not None:
        _draw(output, images, opened, found, overwrite=overwrite)
        typer.echo(f"wrote {output}", err=json_output)  # stdout stays JSON with --json


def _draw(output: Path, paths: list[Path], images, found, *, overwrite: bool) -> None:
    """One input: the file OUTPUT; several: OUTPUT/<name>-detections.png in a new folder."""
    import io

    from domainvlm.atomic import write_bytes
    from domainvlm.detection.draw import draw_detections
    from domainvlm.outputs import new_output

    def png(image, detections) -> bytes:
        buffer = io.BytesIO()
        draw_detections(image, detections).save(buffer, format="PNG")
        return buffer.getvalue()

    if len(paths) == 1:
        write_bytes(output, png(images[0], found[0]))
        return
    with new_output(output, "detect", inputs=paths, overwrite=overwrite) as folder:
        for path, image, detections in zip(paths, images, found, strict=True):
            write_bytes(folder / f"{path.stem}-detections.png", png(image, detections))


def robot_demo_command(
    output: Annotated[Path, typer.Option(help="Folder for the world, the run and "
                                               "report.md.")] = Path("runs/robot-demo"),
    config: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="The recipe (default: the shipped domainvlm/detection/robot-demo.yaml; copy it "
        "to make your own).")] = None,
    split: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Category split of the tabletop world: easy or hard (recipe: `world.split`).")]
    = None,
    steps: Annotated[Optional[int], typer.Option(  # noqa: UP045
        min=1, help="Distillation steps (recipe: `distill.steps`).")] = None,
    seed: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="World seed: training, validation and test scenes use seed, seed+1 and seed+2 "
        "(recipe: `world.seed`).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo in OUTPUT.")]
    = False,
) -> None:
    """Open-vocabulary detection on a laptop: a synthetic robot tabletop (COCO) -> the shipped
    nano CLIP teacher -> ViLD distillation on base categories -> evaluation on held-out images
    for base and never-labelled novel categories -> OUTPUT/report.md with pictures, tables,
    a precision-recall plot and speed."""
    from domainvlm.detection.demo import run_robot_demo

    report = run_robot_demo(output, config=config, split=split, steps=steps, seed=seed,
                            overwrite=overwrite)
    typer.echo(f"wrote {report}")
