"""How well a detector finds and names objects of a COCO dataset, base and novel categories apart.

AP and AP50 come from pycocotools' COCOeval, the implementation OV-COCO and LVIS figures are
quoted with, on ground truth read from the dataset's own instances file, so crowd regions and
areas count as the file's author wrote them. AP alone hides a novel object named as the base
category of the same colour, so `label_accuracy` scores the top-1 label of well-placed boxes over
the whole vocabulary, and `proposal_recall` says how many objects the proposals reach at all.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from domainvlm.atomic import write_bytes
from domainvlm.detection.types import DetectionInputError, Detections, RegionScores

if TYPE_CHECKING:
    from pycocotools.cocoeval import COCOeval

    from domainvlm.detection.coco import CategorySplit, CocoDataset

GROUPS = ("base", "novel", "all")


def coco_metrics(dataset: CocoDataset, detections: Mapping[int, Detections],
                 split: CategorySplit) -> dict[str, Any]:
    """COCO AP (IoU 0.50:0.95) and AP50, at 100 detections per image, for the split's base and
    novel categories and both together, and per category with its instance count. A category
    with no ground truth in the dataset's images has AP None and stays out of the means, as in
    COCOeval's summary; a group with none at all is None. `detections` maps image ids to the
    detector's answer, labelled with category names."""
    evaluation, groups = _evaluate(dataset, detections, split)
    metrics: dict[str, Any] = {
        group: {"AP": _average_precision(evaluation, ids),
                "AP50": _average_precision(evaluation, ids, iou=0.5)}
        for group, ids in groups.items()}
    ground_truth = evaluation.cocoGt
    metrics["per_category"] = {
        dataset.categories[category]: {
            "AP": _average_precision(evaluation, [category]),
            "AP50": _average_precision(evaluation, [category], iou=0.5),
            "instances": len(ground_truth.getAnnIds(imgIds=evaluation.params.imgIds,
                                                    catIds=[category], iscrowd=False))}
        for category in groups["all"]}
    return metrics


def label_accuracy(dataset: CocoDataset, regions: Mapping[int, RegionScores],
                   split: CategorySplit, *, iou: float = 0.5) -> dict[str, float | None]:
    """Top-1 accuracy of the labels of correctly localised boxes, over the whole vocabulary.

    For each ground-truth object, of the regions overlapping it by IoU >= `iou` the one the
    model is surest of (highest probability in any class) names it; right when its argmax is the
    object's category. Accuracy per group is over the objects so localised (None if none);
    "localised" is the fraction of all the split's objects that have such a region."""
    _check_threshold(iou)
    _check_keys(dataset, regions, "regions")
    counts = {group: [0, 0, 0] for group in GROUPS}  # objects, localised, correctly named
    for image_id, truth, names in _objects(dataset, split):
        scores = regions.get(image_id)
        if scores is not None:
            _check_vocabulary(scores, split, image_id)
        overlaps = _overlaps(truth, None if scores is None else scores.boxes)  # (N, K)
        if overlaps.shape[1]:
            confidence, predicted = scores.probs.float().max(dim=1)  # (K,), (K,)
        for row, name in enumerate(names):
            group = "base" if name in split.base else "novel"
            hits = overlaps[row] >= iou
            found = bool(hits.any())
            right = False
            if found:
                best = int(torch.where(hits, confidence, -torch.inf).argmax())
                right = scores.vocabulary[int(predicted[best])] == name
            for key in (group, "all"):
                counts[key][0] += 1
                counts[key][1] += found
                counts[key][2] += right
    result = {group: _ratio(counts[group][2], counts[group][1]) for group in GROUPS}
    result["localised"] = _ratio(counts["all"][1], counts["all"][0])
    return result


def proposal_recall(dataset: CocoDataset, proposals: Mapping[int, torch.Tensor],
                    split: CategorySplit, *, iou: float = 0.5) -> dict[str, float | None]:
    """Class-agnostic recall: the fraction of the split's objects (per group) that some
    proposal (K, 4) xyxy overlaps by IoU >= `iou`; None for a group with no objects."""
    _check_threshold(iou)
    _check_keys(dataset, proposals, "proposals")
    counts = {group: [0, 0] for group in GROUPS}  # objects, recalled
    for image_id, truth, names in _objects(dataset, split):
        recalled = (_overlaps(truth, proposals.get(image_id)) >= iou).any(dim=1)  # (N,)
        for name, hit in zip(names, recalled.tolist(), strict=True):
            for key in ("base" if name in split.base else "novel", "all"):
                counts[key][0] += 1
                counts[key][1] += hit
    return {group: _ratio(counts[group][1], counts[group][0]) for group in GROUPS}


def precision_recall_plot(dataset: CocoDataset, detections: Mapping[int, Detections],
                          split: CategorySplit, out: Path,
                          title: str = "Precision-recall at IoU 0.5") -> Path:
    """Write a PNG with one precision-recall curve per group (base, novel) at IoU 0.5: COCOeval's
    interpolated precision at each of its 101 recall points, averaged over the group's
    categories that have ground truth, so the area under a curve is the group's AP50."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, no display needed

    evaluation, groups = _evaluate(dataset, detections, split)
    figure = Figure(figsize=(5.5, 4.2))
    axis = figure.add_subplot()
    for group in ("base", "novel"):
        curve = _precision(evaluation, groups[group], iou=0.5)  # (R, K')
        if curve.shape[1] == 0:
            continue
        ap50 = _average_precision(evaluation, groups[group], iou=0.5)
        axis.plot(evaluation.params.recThrs, curve.mean(axis=1),
                  label=f"{group} ({curve.shape[1]} categories, AP50 {100 * ap50:.1f})")
    axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend(loc="lower left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes(out, buffer.getvalue())
    return Path(out)


def category_table(metrics: Mapping[str, Any], split: CategorySplit) -> str:
    """A markdown table of `coco_metrics`' per-category figures: base categories, then novel,
    each in the split's order; AP in percent, "–" where a category has no ground truth."""
    lines = ["| category | split | AP50 (%) | AP (%) | instances |",
             "|---|---|---:|---:|---:|"]
    for group, names in (("base", split.base), ("novel", split.novel)):
        for name in names:
            row = metrics["per_category"][name]
            lines.append(f"| {name.replace('|', chr(92) + '|')} | {group} | "
                         f"{_percent(row['AP50'])} | {_percent(row['AP'])} | "
                         f"{row['instances']} |")
    return "\n".join(lines) + "\n"


def _evaluate(dataset: CocoDataset, detections: Mapping[int, Detections],
              split: CategorySplit) -> tuple[COCOeval, dict[str, list[int]]]:
    """COCOeval, evaluated and accumulated over the dataset's images and the split's
    categories, and the category ids of each group."""
    from pycocotools.cocoeval import COCOeval

    groups = {"base": [dataset.category_id(name) for name in split.base],
              "novel": [dataset.category_id(name) for name in split.novel]}
    groups["all"] = groups["base"] + groups["novel"]
    ground_truth = _ground_truth(dataset)
    results = _results(dataset, detections)
    with _silent():  # pycocotools prints its progress to stdout
        found = ground_truth.loadRes(results) if results else _no_results(ground_truth)
        evaluation = COCOeval(ground_truth, found, iouType="bbox")
        evaluation.params.imgIds = [image.id for image in dataset.images]
        evaluation.params.catIds = groups["all"]
        evaluation.evaluate()  # sorts params.catIds: read indices from there
        evaluation.accumulate()
    return evaluation, groups


def _ground_truth(dataset: CocoDataset) -> Any:
    """The instances file as pycocotools reads it; an annotation without `iscrowd` is not crowd
    and one without `area` gets its box's, as COCOeval needs both."""
    from pycocotools.coco import COCO

    data = json.loads(Path(dataset.source).read_text())
    for annotation in data["annotations"]:
        annotation.setdefault("iscrowd", 0)
        if "area" not in annotation:
            annotation["area"] = float(annotation["bbox"][2] * annotation["bbox"][3])
    ground_truth = COCO()
    ground_truth.dataset = data
    with _silent():
        ground_truth.createIndex()
    return ground_truth


def _results(dataset: CocoDataset, detections: Mapping[int, Detections]) -> list[dict]:
    """The detections in COCO's result format (xywh boxes, category ids)."""
    _check_keys(dataset, detections, "detections")
    ids = {name: category for category, name in dataset.categories.items()}
    results = []
    for image_id, found in detections.items():
        for box, score, label in zip(found.boxes.tolist(), found.scores.tolist(), found.labels,
                                     strict=True):
            if label not in ids:
                raise DetectionInputError(
                    f"a detection of image {image_id} is labelled {label!r}, which is no "
                    f"category of {dataset.source}: detect with the dataset's category names")
            x1, y1, x2, y2 = box
            results.append({"image_id": image_id, "category_id": ids[label],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


def _no_results(ground_truth: Any) -> Any:
    """An empty result set (`loadRes` cannot take an empty list): every AP is then 0."""
    from pycocotools.coco import COCO

    empty = COCO()
    empty.dataset = {"images": list(ground_truth.dataset["images"]),
                     "categories": list(ground_truth.dataset["categories"]), "annotations": []}
    empty.createIndex()
    return empty


def _precision(evaluation: COCOeval, categories: list[int], *,
               iou: float | None = None) -> np.ndarray:
    """COCOeval's interpolated precision, (T, R, K') or at one IoU (R, K'), area "all", the
    most detections per image, for those of `categories` that have ground truth (COCOeval
    marks the others -1)."""
    params = evaluation.params
    precision = evaluation.eval["precision"]  # (T IoUs, R recall points, K, A areas, M maxDets)
    precision = precision[..., params.areaRngLbl.index("all"), len(params.maxDets) - 1]
    precision = precision[:, :, [params.catIds.index(c) for c in categories]]  # (T, R, K')
    if iou is not None:
        precision = precision[int(np.flatnonzero(np.isclose(params.iouThrs, iou))[0])]
    return precision[..., (precision > -1).all(axis=tuple(range(precision.ndim - 1)))]


def _average_precision(evaluation: COCOeval, categories: list[int], *,
                       iou: float | None = None) -> float | None:
    """COCOeval's summary AP (over IoUs 0.50:0.95, or at `iou`), restricted to `categories`:
    the mean of their precision over recall points and IoUs, None if none has ground truth."""
    precision = _precision(evaluation, categories, iou=iou)
    return float(precision.mean()) if precision.size else None


def _objects(dataset: CocoDataset,
             split: CategorySplit) -> Iterator[tuple[int, torch.Tensor, list[str]]]:
    """Per image: its id, the (N, 4) xyxy boxes and names of its objects of split categories."""
    wanted = set(split.base) | set(split.novel)
    for image in dataset.images:
        names = [dataset.categories[c] for c in dataset.labels.get(image.id, [])]
        keep = [n for n, name in enumerate(names) if name in wanted]
        if keep:
            boxes = dataset.boxes[image.id].reshape(-1, 4)[keep].float()
            yield image.id, boxes, [names[n] for n in keep]


def _overlaps(truth: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor:
    """IoU (N, K) of ground-truth boxes with predicted ones (K = 0 when there are none)."""
    from torchvision.ops import box_iou

    if boxes is None or boxes.numel() == 0:
        return torch.zeros(len(truth), 0)
    return box_iou(truth, boxes.reshape(-1, 4).float())


def _check_keys(dataset: CocoDataset, keyed: Mapping[int, Any], what: str) -> None:
    known = {image.id for image in dataset.images}
    unknown = sorted(set(keyed) - known)
    if unknown:
        raise DetectionInputError(
            f"{what} for image id {unknown[0]}, which is not an image of {dataset.source}: key "
            f"{what} by the dataset's image ids")


def _check_vocabulary(scores: RegionScores, split: CategorySplit, image_id: int) -> None:
    missing = [name for name in (*split.base, *split.novel) if name not in scores.vocabulary]
    if missing:
        raise DetectionInputError(
            f"the regions of image {image_id} are not scored for {missing[0]!r}: label accuracy "
            "is over the whole vocabulary, so score them against every base and novel category")


def _check_threshold(iou: float) -> None:
    if not 0 < iou <= 1:
        raise DetectionInputError(f"iou is {iou}: give an overlap threshold in (0, 1]")


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


@contextlib.contextmanager
def _silent() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()):
        yield
