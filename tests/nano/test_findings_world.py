"""The generic findings world: spots in a windowed field, with masks and questions that
follow from each scene, the same for the same seed."""

from __future__ import annotations

import json

import numpy as np

from domainvlm.nano.findings_world import (
    findings_questions,
    findings_scene,
    write_findings_dataset,
)
from domainvlm.nano.shapes_world import ABSENT


def scenes(n: int, size: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [findings_scene(rng, size) for _ in range(n)]


def test_same_seed_same_scenes_other_seed_differs():
    a, b, c = scenes(3), scenes(3), scenes(3, seed=1)
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
               for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].image, c[0].image)


def test_mask_marks_the_spots_and_nothing_else():
    size = 96
    yy, xx = np.mgrid[0:size, 0:size]
    for scene in scenes(40, size):
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
        inside = np.zeros((size, size), bool)  # pixel centres within a radius of a centre
        deep = np.zeros((size, size), bool)  # whole pixels inside a disc
        for spot in scene.spots:
            assert scene.mask[round(spot.y), round(spot.x)]
            distance = np.hypot(xx - spot.x, yy - spot.y)
            inside |= distance < spot.radius
            deep |= distance <= spot.radius - 0.5
        assert np.array_equal(scene.mask, inside)  # "more than half inside", nothing else
        assert not (deep & ~scene.mask).any()
    counts = {len(s.spots) for s in scenes(40, size)}
    assert 0 in counts and max(counts) >= 2  # empty scenes and several spots both occur


def test_questions_follow_from_the_scene():
    size = 96
    for scene in scenes(40, size):
        rows = {r["question"]: r for r in findings_questions(scene, size)}
        assert rows["Is there a spot?"]["answer"] == ("yes" if scene.spots else "no")
        side = rows["Which side is the spot on?"]
        if not scene.spots:
            assert side["answer"] == ABSENT and side["answerable"] is False
            continue
        sides = {"left" if s.x < size / 2 else "right" for s in scene.spots}
        assert side["answer"] == (sides.pop() if len(sides) == 1 else "both")
        assert side["answerable"] is True


def test_dataset_rows_point_at_written_images(tmp_path):
    path = write_findings_dataset(tmp_path / "spots", 5, seed=3, image_size=64)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({r["image"] for r in rows}) == 5 and len(rows) == 20
    assert all((path.parent / r["image"]).is_file() for r in rows)
