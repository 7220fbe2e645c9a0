"""Detection metrics against hand-worked cases and pycocotools' own summary.

Every dataset here is a real instances.json with real (blank) images, written by the test;
boxes are chosen so that each IoU is a round number (worked out beside each box).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from domainvlm.detection.coco import CategorySplit, CocoDataset, read_coco
from domainvlm.detection.evaluate import (
    category_table,
    coco_metrics,
    label_accuracy,
    precision_recall_plot,
    proposal_recall,
)
from domainvlm.detection.types import DetectionInputError, Detections, RegionScores

VOCABULARY = ["red mug", "blue mug", "red can", "blue can", "green box", "yellow ball"]
# "red can" has no object anywhere; "yellow ball" is in the dataset but in neither group.
# Novel not in id order: figures must follow the category ids, not the split's order.
SPLIT = CategorySplit(name="test", base=("red mug", "blue mug", "red can"),
                      novel=("green box", "blue can"))
SCORED = VOCABULARY[:5]  # the split's categories: what regions are scored against

# Two 200x100 images. Objects by (image, name, xyxy box).
OBJECTS = [
    (1, "red mug", (10, 10, 50, 50)),      # A
    (1, "blue mug", (110, 10, 150, 50)),   # D
    (1, "blue can", (10, 60, 40, 90)),     # B
    (1, "yellow ball", (150, 60, 190, 95)),  # outside the split
    (2, "green box", (10, 10, 50, 50)),    # C
    (2, "blue can", (110, 10, 150, 50)),   # E
    (2, "green box", (60, 50, 100, 90)),   # F
]


def write_dataset(folder: Path, objects, *, crowd=(), size=(200, 100), images=2,
                  bare=False) -> CocoDataset:
    """instances.json (xywh boxes, all of VOCABULARY as categories; areas and iscrowd flags
    unless `bare`, as some exporters write it) and blank PNGs."""
    (folder / "images").mkdir(parents=True)
    entries = []
    for image_id in range(1, images + 1):
        name = f"images/{image_id:06d}.png"
        Image.new("RGB", size, "white").save(folder / name)
        entries.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
    annotations = []
    for crowded, rows in ((0, objects), (1, crowd)):
        for image_id, name, (x1, y1, x2, y2) in rows:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": VOCABULARY.index(name) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1],
                                **({} if bare else {"area": (x2 - x1) * (y2 - y1),
                                                    "iscrowd": crowded})})
    categories = [{"id": n + 1, "name": name} for n, name in enumerate(VOCABULARY)]
    instances = folder / "instances.json"
    instances.write_text(json.dumps({"images": entries, "annotations": annotations,
                                     "categories": categories}))
    return read_coco(instances)


def detections(rows) -> dict[int, Detections]:
    """(image, name, xyxy box, score) rows -> Detections per image."""
    found: dict[int, list] = {}
    for image_id, name, box, score in rows:
        found.setdefault(image_id, []).append((name, box, score))
    return {image_id: Detections(boxes=torch.tensor([b for _, b, _ in items], dtype=torch.float),
                                 scores=torch.tensor([s for _, _, s in items]),
                                 labels=[n for n, _, _ in items])
            for image_id, items in found.items()}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> CocoDataset:
    return write_dataset(tmp_path_factory.mktemp("scenes"), OBJECTS)


# --- COCO AP -----------------------------------------------------------------------------------


def test_perfect_detections_score_one_and_categories_without_objects_stay_out(scenes, capsys):
    metrics = coco_metrics(scenes, detections([(i, n, b, 0.9) for i, n, b in OBJECTS]), SPLIT)
    assert capsys.readouterr().out == ""  # pycocotools' progress lines kept off our output
    for group in ("base", "novel", "all"):
        assert metrics[group] == {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0)}
    assert set(metrics["per_category"]) == set(SPLIT.base) | set(SPLIT.novel)
    assert {n: m["instances"] for n, m in metrics["per_category"].items()} == {
        "red mug": 1, "blue mug": 1, "red can": 0, "blue can": 2, "green box": 2}
    assert metrics["per_category"]["red can"] == {"AP": None, "AP50": None, "instances": 0}
    assert metrics["per_category"]["green box"]["AP"] == pytest.approx(1.0)


def test_detections_of_base_objects_only_leave_novel_ap_at_zero(scenes):
    base = [(i, n, b, 0.9) for i, n, b in OBJECTS if n in SPLIT.base]
    metrics = coco_metrics(scenes, detections(base), SPLIT)
    assert metrics["base"] == {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0)}
    assert metrics["novel"] == {"AP": 0.0, "AP50": 0.0}
    # all: mean over the 4 categories with objects, 2 found perfectly, 2 not at all
    assert metrics["all"] == {"AP": pytest.approx(0.5), "AP50": pytest.approx(0.5)}


def test_no_detections_at_all_score_zero(scenes):
    metrics = coco_metrics(scenes, {}, SPLIT)
    assert metrics["base"] == metrics["novel"] == {"AP": 0.0, "AP50": 0.0}


def test_ap_of_a_hand_worked_ranking(tmp_path):
    """Two red mugs, one per image; by score: a hit (IoU 1), a miss, a loose hit (IoU 0.52).

    Precision/recall after each: (1, 1/2), (1/2, 1/2), (2/3, 1). COCO interpolates precision
    as the best at any higher recall, read at 101 recall points 0, 0.01, ..., 1:
    at IoU 0.5 the 51 points up to 0.5 read 1 and the 50 above read 2/3;
    at IoU 0.55..0.95 (9 thresholds) the loose hit is a miss: 51 points read 1, the rest 0."""
    dataset = write_dataset(tmp_path, [(1, "red mug", (10, 20, 110, 120)),
                                       (2, "red mug", (10, 20, 110, 120))], size=(200, 150))
    ranked = detections([(1, "red mug", (10, 20, 110, 120), 0.9),
                         (2, "red mug", (130, 20, 190, 80), 0.8),     # overlaps nothing
                         (2, "red mug", (10, 20, 110, 72), 0.7)])     # IoU 5200/10000
    ap50 = (51 * 1 + 50 * 2 / 3) / 101
    ap = (ap50 + 9 * (51 / 101)) / 10
    metrics = coco_metrics(dataset, ranked, SPLIT)
    assert metrics["base"]["AP50"] == pytest.approx(ap50, abs=1e-9)
    assert metrics["base"]["AP"] == pytest.approx(ap, abs=1e-9)
    assert metrics["all"] == metrics["base"]
    assert metrics["novel"] == {"AP": None, "AP50": None}


def test_crowd_regions_count_as_the_instances_file_says(tmp_path):
    """A detection on a crowd region (iscrowd 1 in the file) is neither a hit nor a miss; built
    from the training boxes, which leave crowds out, it would be a false positive ranked first."""
    dataset = write_dataset(tmp_path, [(1, "red mug", (10, 10, 50, 50))],
                            crowd=[(1, "red mug", (100, 0, 200, 100))], images=1)
    found = detections([(1, "red mug", (110, 10, 190, 90), 0.95),
                        (1, "red mug", (10, 10, 50, 50), 0.9)])
    metrics = coco_metrics(dataset, found, SPLIT)
    assert metrics["base"] == {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0)}
    assert metrics["per_category"]["red mug"]["instances"] == 1


def test_annotations_without_area_or_crowd_flag_are_plain_objects(tmp_path):
    dataset = write_dataset(tmp_path, OBJECTS, bare=True)
    metrics = coco_metrics(dataset, detections([(i, n, b, 0.9) for i, n, b in OBJECTS]), SPLIT)
    assert metrics["all"] == {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0)}
    assert metrics["per_category"]["blue can"]["instances"] == 2


def test_group_figures_equal_cocoevals_own_summary_of_each_group(scenes):
    """Noisy detections; the oracle is COCOeval.summarize run on each group's categories."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    generator = torch.Generator().manual_seed(0)
    rows = []
    for image_id, _, box in OBJECTS:
        for _ in range(3):
            jitter = (torch.rand(4, generator=generator) - 0.5) * 16
            name = SCORED[int(torch.randint(len(SCORED), (1,), generator=generator))]
            rows.append((image_id, name, (torch.tensor(box) + jitter).tolist(),
                         float(torch.rand(1, generator=generator))))
    metrics = coco_metrics(scenes, detections(rows), SPLIT)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(scenes.source))
        found = truth.loadRes([{"image_id": i, "category_id": VOCABULARY.index(n) + 1,
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s}
                               for i, n, b, s in rows])
        for group, names in (("base", SPLIT.base), ("novel", SPLIT.novel),
                             ("all", SPLIT.base + SPLIT.novel)):
            evaluation = COCOeval(truth, found, iouType="bbox")
            evaluation.params.catIds = [VOCABULARY.index(n) + 1 for n in names]
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            assert 0 < metrics[group]["AP"] < metrics[group]["AP50"] < 1
            assert metrics[group]["AP"] == pytest.approx(evaluation.stats[0], abs=1e-12)
            assert metrics[group]["AP50"] == pytest.approx(evaluation.stats[1], abs=1e-12)


# --- label accuracy and proposal recall --------------------------------------------------------


def regions(rows) -> dict[int, RegionScores]:
    """(image, xyxy box, {name: probability}) rows -> RegionScores over SCORED per image."""
    found: dict[int, list] = {}
    for image_id, box, probs in rows:
        found.setdefault(image_id, []).append((box, [probs.get(n, 0.0) for n in SCORED]))
    return {image_id: RegionScores(boxes=torch.tensor([b for b, _ in items], dtype=torch.float),
                                   probs=torch.tensor([p for _, p in items]),
                                   vocabulary=list(SCORED))
            for image_id, items in found.items()}


def test_label_accuracy_of_a_hand_worked_case(scenes):
    """A: of two regions on it the surer one (not the closer one) names it right. D: the only
    confident region is too loose (IoU 0.4), the localised one says red mug: wrong. B right.
    C: no region overlaps it enough. E: a novel blue can named as the base blue mug. F right.
    base 1/2, novel 2/3 (B, F of B, E, F), all 3/5, localised 5 of 6 objects."""
    scored = regions([
        (1, (10, 10, 50, 46), {"blue mug": 0.5, "red mug": 0.2}),    # A, IoU 0.9
        (1, (10, 10, 50, 34), {"red mug": 0.8, "blue mug": 0.1}),    # A, IoU 0.6
        (1, (110, 10, 150, 26), {"blue mug": 0.99}),                 # D, IoU 0.4
        (1, (110, 10, 150, 38), {"red mug": 0.6, "blue mug": 0.3}),  # D, IoU 0.7
        (1, (10, 60, 40, 84), {"blue can": 0.7, "red can": 0.2}),    # B, IoU 0.8
        (1, (150, 60, 190, 95), {"red mug": 0.9}),                   # the yellow ball
        (2, (10, 10, 50, 22), {"green box": 0.9}),                   # C, IoU 0.3
        (2, (110, 10, 150, 50), {"blue mug": 0.7, "blue can": 0.2}),  # E, IoU 1
        (2, (60, 50, 100, 90), {"green box": 0.6, "red mug": 0.3}),  # F, IoU 1
    ])
    assert label_accuracy(scenes, scored, SPLIT) == pytest.approx(
        {"base": 1 / 2, "novel": 2 / 3, "all": 3 / 5, "localised": 5 / 6})
    # IoU >= 0.85: A is left with its closer region (says blue mug); D and B are not localised
    assert label_accuracy(scenes, scored, SPLIT, iou=0.85) == pytest.approx(
        {"base": 0.0, "novel": 1 / 2, "all": 1 / 3, "localised": 3 / 6})
    assert label_accuracy(scenes, {}, SPLIT) == {"base": None, "novel": None, "all": None,
                                                 "localised": 0.0}


def test_proposal_recall_of_a_hand_worked_case(scenes):
    """Recalled: A (IoU 0.9), B (1), E (1), F (0.51); not: D (0.4), C (0.49). The yellow ball,
    in no group, has an exact proposal and counts nowhere."""
    proposals = {1: torch.tensor([[10, 10, 50, 46], [110, 10, 150, 26], [10, 60, 40, 90],
                                  [150, 60, 190, 95]], dtype=torch.float),
                 2: torch.tensor([[110, 10, 150, 50], [60, 50, 100, 70.4],
                                  [10, 10, 50, 29.6]], dtype=torch.float)}
    assert proposal_recall(scenes, proposals, SPLIT) == pytest.approx(
        {"base": 1 / 2, "novel": 3 / 4, "all": 4 / 6})
    assert proposal_recall(scenes, proposals, SPLIT, iou=0.3) == pytest.approx(
        {"base": 1.0, "novel": 1.0, "all": 1.0})
    assert proposal_recall(scenes, {1: torch.zeros(0, 4)}, SPLIT) == {
        "base": 0.0, "novel": 0.0, "all": 0.0}


# --- plot and table ----------------------------------------------------------------------------


def test_precision_recall_plot_is_a_png(scenes, tmp_path):
    found = detections([(i, n, b, 0.9) for i, n, b in OBJECTS if n != "green box"])
    out = precision_recall_plot(scenes, found, SPLIT, tmp_path / "plots" / "pr.png",
                                title="held-out scenes")
    assert out == tmp_path / "plots" / "pr.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        assert min(image.size) > 100
    assert [p.name for p in out.parent.iterdir()] == ["pr.png"]  # no temp file left


def test_category_table_lists_base_then_novel_with_figures(scenes):
    found = detections([(i, n, b, 0.9) for i, n, b in OBJECTS if n != "green box"])
    table = category_table(coco_metrics(scenes, found, SPLIT), SPLIT)
    assert table.splitlines() == [
        "| category | split | AP50 (%) | AP (%) | instances |",
        "|---|---|---:|---:|---:|",
        "| red mug | base | 100.0 | 100.0 | 1 |",
        "| blue mug | base | 100.0 | 100.0 | 1 |",
        "| red can | base | – | – | 0 |",
        "| green box | novel | 0.0 | 0.0 | 2 |",
        "| blue can | novel | 100.0 | 100.0 | 2 |",
    ]


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "words"), [
    (lambda d: coco_metrics(d, detections([(1, "purple mug", (0, 0, 9, 9), 0.5)]), SPLIT),
     "'purple mug', which is no category"),
    (lambda d: coco_metrics(d, detections([(7, "red mug", (0, 0, 9, 9), 0.5)]), SPLIT),
     "detections for image id 7, which is not an image"),
    (lambda d: proposal_recall(d, {9: torch.zeros(0, 4)}, SPLIT), "proposals for image id 9"),
    (lambda d: label_accuracy(d, {1: RegionScores(torch.zeros(1, 4), torch.ones(1, 1),
                                                  ["red mug"])}, SPLIT),
     "not scored for 'blue mug'"),
    (lambda d: proposal_recall(d, {}, SPLIT, iou=0), "iou is 0"),
])
def test_bad_input_is_one_clear_error(scenes, call, words):
    with pytest.raises(DetectionInputError, match=words):
        call(scenes)


# --- the tabletop world, as the demo evaluates it ----------------------------------------------


def test_the_worlds_own_boxes_score_perfectly_on_its_split(tmp_path):
    from domainvlm.detection.coco import read_split
    from domainvlm.nano.tabletop_world import write_tabletop

    folder = write_tabletop(tmp_path / "test", split="easy", images=3, labels="all", seed=7)
    dataset = read_coco(folder / "instances.json")
    split = read_split(folder / "split.json", dataset)
    truth = {image.id: Detections(boxes=dataset.boxes[image.id],
                                  scores=torch.full((len(dataset.labels[image.id]),), 0.9),
                                  labels=[dataset.categories[c] for c in dataset.labels[image.id]])
             for image in dataset.images}
    metrics = coco_metrics(dataset, truth, split)
    assert metrics["all"] == {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0)}
    assert sum(row["instances"] for row in metrics["per_category"].values()) == sum(
        len(labels) for labels in dataset.labels.values())
    assert proposal_recall(dataset, dataset.boxes, split)["all"] == 1.0
