"""The shipped robot detector (the default of `detect`, the ROS node and `bag-detect`): on
tabletop scenes it never saw, it names never-labelled novel objects about as well as base ones,
and far better than the same regions scored through random category embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest

from domainvlm.detection.assess import assess
from domainvlm.detection.coco import read_coco, read_split
from domainvlm.detection.detector import Detector, shipped_detector
from domainvlm.nano.tabletop_world import write_tabletop
from domainvlm.progress import Reporter


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict:
    world = write_tabletop(Path(tmp_path_factory.mktemp("held-out")) / "scenes", images=24,
                           seed=31337, labels="all")  # a world seed no training used
    detector = Detector.load(shipped_detector())
    dataset = read_coco(world / "instances.json")
    return assess(detector, dataset, read_split(world / "split.json", dataset),
                  reporter=Reporter(enabled=False)).rows


def test_novel_objects_are_named_and_found_like_base_ones(rows):
    vild = rows["ViLD (ensemble)"]
    assert vild["accuracy"]["novel"] >= 0.8 and vild["accuracy"]["base"] >= 0.8, vild
    assert vild["coco"]["novel"]["AP50"] >= 0.8 and vild["coco"]["base"]["AP50"] >= 0.8, vild


def test_random_category_embeddings_name_no_novel_object(rows):
    vild, control = rows["ViLD (ensemble)"], rows["random-embedding control"]
    assert control["accuracy"]["novel"] < 0.2 < vild["accuracy"]["novel"] - 0.5
    assert control["coco"]["novel"]["AP50"] < 0.2
