"""One evaluation of a distilled detector on a labelled split, with its ablations and teacher.

The student's regions are computed once per image; every scoring (the ViLD ensemble, its text
and image heads alone, the random-embedding control) re-scores the same regions, and the
teacher's crop-and-classify runs over the same proposals, so the rows differ only in what
they claim to. Metrics come from `evaluate` (pycocotools).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from PIL import Image

from domainvlm.detection.coco import CategorySplit, CocoDataset, subset
from domainvlm.detection.detector import Detector
from domainvlm.detection.evaluate import coco_metrics, label_accuracy, proposal_recall
from domainvlm.detection.types import Detections, RegionScores
from domainvlm.progress import Reporter

EVAL_SCORE_THRESHOLD = 0.001  # COCO AP ranks everything: keep low scores
MODES = {"ViLD (ensemble)": "ensemble", "ViLD-text only": "text", "ViLD-image only": "image",
         "random-embedding control": "control"}


@dataclass
class Assessment:
    """Metrics per row, and what the report draws."""

    rows: dict[str, dict] = field(default_factory=dict)
    recall: dict = field(default_factory=dict)
    detections: dict[int, Detections] = field(default_factory=dict)  # the ensemble's
    student_seconds: float = 0.0  # per image, detector pass
    teacher_seconds: float = 0.0  # per image, crop-and-classify over the same proposals
    proposals_per_image: float = 0.0
    teacher_images: int = 0


def _detections(regions: dict[int, RegionScores]) -> dict[int, Detections]:
    return {image_id: r.detections(score_threshold=EVAL_SCORE_THRESHOLD, nms_threshold=0.5)
            for image_id, r in regions.items()}


def _row(dataset: CocoDataset, split: CategorySplit,
         regions: dict[int, RegionScores]) -> tuple[dict, dict[int, Detections]]:
    found = _detections(regions)
    return {"coco": coco_metrics(dataset, found, split),
            "accuracy": label_accuracy(dataset, regions, split)}, found


def assess(detector: Detector, dataset: CocoDataset, split: CategorySplit, *, teacher=None,
           teacher_images: int = 0, reporter: Reporter | None = None) -> Assessment:
    """Score `detector` on `dataset` (every object labelled) for the whole vocabulary of
    `split`; with `teacher`, also its crop-and-classify on the first `teacher_images` images,
    where the student is scored again on exactly those images for a like-for-like row."""
    reporter = reporter or Reporter()
    vocabulary = list(split.base) + list(split.novel)
    detector.prompt_embeddings(vocabulary)
    outputs, pictures, seconds = {}, {}, 0.0
    with reporter.task("student on held-out images", len(dataset.images)) as advance:
        for entry in dataset.images:
            with Image.open(entry.path) as img:
                pictures[entry.id] = img.convert("RGB")
            start = time.perf_counter()
            outputs[entry.id] = detector.embed([pictures[entry.id]])[0]
            seconds += time.perf_counter() - start
            advance()
    result = Assessment(student_seconds=seconds / len(outputs))
    for row, mode in MODES.items():
        regions = detector.score(list(outputs.values()), vocabulary,
                                 replace(detector.scoring, mode=mode))
        result.rows[row], found = _row(dataset, split, dict(zip(outputs, regions, strict=True)))
        if mode == "ensemble":
            result.detections = found
    result.recall = proposal_recall(dataset, {i: o.proposals for i, o in outputs.items()}, split)
    result.proposals_per_image = sum(len(o.proposals) for o in outputs.values()) / len(outputs)
    if teacher is not None and teacher_images > 0:
        part = subset(dataset, [entry.id for entry in dataset.images[:teacher_images]])
        ids = [entry.id for entry in part.images]
        teacher_regions, seconds = {}, 0.0
        with reporter.task("teacher crop-and-classify (same proposals)", len(ids)) as adv:
            for image_id in ids:
                start = time.perf_counter()
                teacher_regions[image_id] = teacher.classify_regions(
                    pictures[image_id], outputs[image_id].proposals, vocabulary)
                seconds += time.perf_counter() - start
                adv()
        result.teacher_seconds = seconds / len(ids)
        result.teacher_images = len(ids)
        result.rows["teacher crop-and-classify"] = _row(part, split, teacher_regions)[0]
        ensemble = detector.score([outputs[i] for i in ids], vocabulary)
        result.rows["ViLD (ensemble), same images"] = _row(
            part, split, dict(zip(ids, ensemble, strict=True)))[0]
    return result
