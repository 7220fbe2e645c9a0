"""COCO-format detection data in and out of the engine, and the base/novel category split.

Detection data reaches the engine as the format users already have (OV-COCO, LVIS, exports of
labelling tools): an instances JSON beside its images, plus a split file naming the base
categories (labels the student may train on) and the novel ones (named only at test time).
Boxes are xywh in the file and float xyxy everywhere inside the engine; the conversion happens
here, once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CategorySplit:
    """Which categories are labelled for training (`base`) and which are only ever named at
    test time (`novel`): the open-vocabulary question is how well the second are found."""

    name: str
    base: tuple[str, ...]
    novel: tuple[str, ...]
