"""COCO-format detection data in and out of the engine, and the base/novel category split.

Detection data reaches the engine as the format users already have (OV-COCO, LVIS, exports of
labelling tools): an instances JSON beside its images, plus a split file naming the base
categories (labels the student may train on) and the novel ones (named only at test time).
Boxes are xywh in the file and float xyxy everywhere inside the engine; the conversion happens
here, once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from domainvlm.detection.types import DetectionInputError


@dataclass(frozen=True)
class CategorySplit:
    """Which categories are labelled for training (`base`) and which are only ever named at
    test time (`novel`): the open-vocabulary question is how well the second are found."""

    name: str
    base: tuple[str, ...]
    novel: tuple[str, ...]


@dataclass(frozen=True)
class CocoImage:
    id: int
    path: Path
    width: int
    height: int


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no plain equality
class CocoDataset:
    """A detection data set as the engine uses it: crowd annotations left out (pycocotools
    still reads them from `source`), boxes float xyxy in each image's pixels."""

    images: tuple[CocoImage, ...]
    categories: dict[int, str]  # category id -> name
    boxes: dict[int, torch.Tensor]  # image id -> (N, 4) float xyxy
    labels: dict[int, list[int]]  # image id -> category id of each box
    source: Path  # the instances file

    def names(self) -> list[str]:
        """Category names in id order."""
        return [self.categories[key] for key in sorted(self.categories)]

    def category_id(self, name: str) -> int:
        for key, value in self.categories.items():
            if value == name:
                return key
        raise DetectionInputError(f"{self.source}: no category named {name!r}; its categories "
                                  f"are {_listing(self.names())}")


BOX_TOLERANCE = 1.0  # pixels a box may reach past the image (rounding in exporters)


def read_coco(instances: Path | str, images: Path | str | None = None) -> CocoDataset:
    """Read and check a COCO instances file. Image files are looked up in `images`, or else
    in the `images/` folder beside the file, or relative to the file's folder.

    Raises DetectionInputError naming the file, the entry and what to do, for a file that is
    not COCO JSON, a missing key, a duplicate id, an annotation of an unknown image or
    category, a box outside its image or without area, and a missing image file.
    """
    instances = Path(instances)
    data = _json(instances, "a COCO instances file")
    if not isinstance(data, dict):
        raise DetectionInputError(f"{instances}: not a COCO instances file (a JSON object with "
                                  "images, annotations and categories)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DetectionInputError(f"{instances}: no {key!r} list: a COCO instances file "
                                      "has images, annotations and categories")
    if not data["images"]:
        raise DetectionInputError(f"{instances}: lists no images: add the images to detect in")
    categories = _categories(instances, data["categories"])
    image_rows = _images(instances, data["images"], images)
    boxes: dict[int, list[list[float]]] = {image.id: [] for image in image_rows}
    labels: dict[int, list[int]] = {image.id: [] for image in image_rows}
    sizes = {image.id: (image.width, image.height) for image in image_rows}
    seen: set[int] = set()
    for index, row in enumerate(data["annotations"]):
        key = _entry_id(instances, row, f"annotation entry {index}", seen,
                        ("image_id", "category_id", "bbox"))
        where = f"{instances}: annotation {key}"
        image_id, category_id = row["image_id"], row["category_id"]
        if image_id not in sizes:
            raise DetectionInputError(f"{where}: image id {image_id!r} is not in the file's "
                                      "images: fix its image_id or add the image")
        if category_id not in categories:
            raise DetectionInputError(f"{where}: category id {category_id!r} is not in the "
                                      "file's categories: fix its category_id or add the "
                                      "category")
        box = _box(where, row["bbox"], sizes[image_id])
        if not row.get("iscrowd", 0):
            boxes[image_id].append(box)
            labels[image_id].append(category_id)
    return CocoDataset(
        images=tuple(image_rows), categories=categories,
        boxes={key: torch.tensor(value, dtype=torch.float32).reshape(-1, 4)
               for key, value in boxes.items()},
        labels=labels, source=instances)


def read_split(path: Path | str, dataset: CocoDataset) -> CategorySplit:
    """Read a split file (`{"name": ..., "base": [...], "novel": [...]}`) and check it
    against `dataset`: both lists non-empty, disjoint, and made of the data set's names."""
    path = Path(path)
    data = _json(path, "a split file")
    known = set(dataset.categories.values())
    if not isinstance(data, dict):
        raise DetectionInputError(f"{path}: not a split file: write a JSON object with 'base' "
                                  "and 'novel' lists of category names")
    lists = {}
    for key in ("base", "novel"):
        names = data.get(key)
        if not isinstance(names, list) or not names or \
                not all(isinstance(n, str) for n in names):
            raise DetectionInputError(f"{path}: {key!r} must be a non-empty list of category "
                                      "names")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise DetectionInputError(f"{path}: {key} categories {_listing(unknown)} are not in "
                                      f"{dataset.source}: use its names "
                                      f"({_listing(dataset.names())})")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise DetectionInputError(f"{path}: {key} lists {_listing(repeated)} more than "
                                      "once")
        lists[key] = tuple(names)
    both = [n for n in lists["novel"] if n in lists["base"]]
    if both:
        raise DetectionInputError(f"{path}: {_listing(both)} both base and novel: a category "
                                  "is one or the other")
    name = data.get("name", path.stem)
    return CategorySplit(str(name), lists["base"], lists["novel"])


def restrict(dataset: CocoDataset, names: Iterable[str]) -> CocoDataset:
    """`dataset` with only the annotations of the categories `names` (all categories stay
    listed): what the student trains on, so novel labels provably never reach it. `source`
    still names the whole file, for messages and for pycocotools' ground truth."""
    ids = {dataset.category_id(name) for name in names}
    boxes, labels = {}, {}
    for image in dataset.images:
        keep = [i for i, label in enumerate(dataset.labels[image.id]) if label in ids]
        boxes[image.id] = dataset.boxes[image.id][keep].reshape(-1, 4)
        labels[image.id] = [dataset.labels[image.id][i] for i in keep]
    return replace(dataset, boxes=boxes, labels=labels)


def subset(dataset: CocoDataset, image_ids: Iterable[int]) -> CocoDataset:
    """`dataset` with only the images `image_ids` (in the dataset's order): evaluation over
    part of a split, such as the images a slow teacher ran on, scores exactly those images."""
    keep = set(image_ids)
    images = tuple(image for image in dataset.images if image.id in keep)
    return replace(dataset, images=images,
                   boxes={i.id: dataset.boxes[i.id] for i in images},
                   labels={i.id: dataset.labels[i.id] for i in images})


def _json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DetectionInputError(f"{path}: no such file: give the path of {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DetectionInputError(f"{path}: not readable as JSON ({error}): give {what}") \
            from None


def _entry_id(source: Path, row, label: str, seen: set[int], keys: tuple[str, ...]) -> int:
    """The entry's id, after checking that it is a unique integer and that `keys` are there."""
    if not isinstance(row, dict):
        raise DetectionInputError(f"{source}: {label} is not a JSON object")
    key = row.get("id")
    if not isinstance(key, int) or isinstance(key, bool):
        raise DetectionInputError(f"{source}: {label} has no integer 'id': give each entry "
                                  "a unique integer id")
    name = f"{label.split(' ')[0]} {key}"
    missing = [k for k in keys if k not in row]
    if missing:
        raise DetectionInputError(f"{source}: {name} has no {', '.join(map(repr, missing))}: "
                                  f"each needs {', '.join(keys)}")
    if key in seen:
        raise DetectionInputError(f"{source}: {name} appears twice: give each entry its own id")
    seen.add(key)
    return key


def _categories(source: Path, rows: list) -> dict[int, str]:
    seen: set[int] = set()
    categories: dict[int, str] = {}
    for index, row in enumerate(rows):
        key = _entry_id(source, row, f"category entry {index}", seen, ("name",))
        name = row["name"]
        if not isinstance(name, str) or not name.strip() or name in categories.values():
            raise DetectionInputError(f"{source}: category {key} has an empty or repeated "
                                      f"name {row['name']!r}: give each category its own name")
        categories[key] = name
    if not categories:
        raise DetectionInputError(f"{source}: lists no categories: add the categories its "
                                  "annotations name")
    return categories


def _images(source: Path, rows: list, folder: Path | str | None) -> list[CocoImage]:
    """The image entries, each with the file it names found on disk."""
    roots = [Path(folder)] if folder is not None else [source.parent / "images", source.parent]
    seen: set[int] = set()
    found = []
    for index, row in enumerate(rows):
        key = _entry_id(source, row, f"image entry {index}", seen,
                        ("file_name", "width", "height"))
        width, height = row["width"], row["height"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                   for v in (width, height)):
            raise DetectionInputError(f"{source}: image {key} has size {width!r}x{height!r}: "
                                      "width and height must be positive whole pixels")
        path = next((root / row["file_name"] for root in roots
                     if (root / row["file_name"]).is_file()), None)
        if path is None:
            raise DetectionInputError(
                f"{source}: image {key}: file {row['file_name']!r} not found in "
                f"{' or '.join(str(r) for r in roots)}: give the images folder or fix file_name")
        found.append(CocoImage(key, path, width, height))
    return found


def _box(where: str, bbox, size: tuple[int, int]) -> list[float]:
    """A COCO xywh box as xyxy, clamped to the image after the check."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in bbox)):
        raise DetectionInputError(f"{where}: bbox {bbox!r} is not four numbers [x, y, width, "
                                  "height]")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise DetectionInputError(f"{where}: bbox {bbox} has width or height <= 0: drop the "
                                  "annotation or fix its box")
    width, height = size
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE \
            or y + h > height + BOX_TOLERANCE:
        raise DetectionInputError(f"{where}: bbox {bbox} (x, y, width, height) reaches outside "
                                  f"its {width}x{height} image: fix the box or the image size")
    return [max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))]


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
