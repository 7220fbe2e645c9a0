"""The generic synthetic world: deterministic, and every answer is a fact of its scene."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from domainvlm.nano.shapes_world import (
    ABSENT,
    COLOURS,
    SHAPES,
    WORLDS,
    Shape,
    balanced_questions,
    caption,
    draw_scene,
    random_scene,
    scene_questions,
    write_shapes_dataset,
)


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = write_shapes_dataset(tmp_path / "a", 6, seed=4)
    b = write_shapes_dataset(tmp_path / "b", 6, seed=4)
    c = write_shapes_dataset(tmp_path / "c", 6, seed=5)
    assert a["train"].read_text() == b["train"].read_text()
    for image in (tmp_path / "a" / "images").iterdir():
        assert image.read_bytes() == (tmp_path / "b" / "images" / image.name).read_bytes()
    assert a["train"].read_text() != c["train"].read_text()


def assert_answers_follow(shapes: list[Shape], rows: list[dict]) -> None:
    """Every answer is what the scene says, whichever question set asked."""
    present = {s.shape: s for s in shapes}
    for row in rows:
        q, a = row["question"], row["answer"]
        kind = next((k for k in SHAPES if k in q), None)
        colour = next((c for c in COLOURS if f" {c} " in q), None)
        if q.startswith("Is there a") and kind:
            real = kind in present and (colour is None or present[kind].colour == colour)
            assert a == ("yes" if real else "no")
        elif q.startswith("Is there a"):  # "Is there a <colour> shape?"
            assert a == ("yes" if colour in {s.colour for s in shapes} else "no")
        elif kind and kind not in present:
            assert (a, row["answerable"], row["question_type"]) == (ABSENT, False, "open")
        elif q.startswith("What colour"):
            assert a == present[kind].colour
        elif q.startswith("Which side"):
            assert a == present[kind].side
        elif q.startswith("How large"):
            assert a == present[kind].size
        elif q.startswith("How many"):
            assert a == ["zero", "one", "two"][len(shapes)]
        else:
            assert a == caption(shapes)


@pytest.mark.parametrize("seed", range(20))
def test_answers_follow_from_the_scene(seed):
    rng = random.Random(seed)
    shapes = random_scene(rng)
    assert 1 <= len(shapes) <= 2 and len({s.shape for s in shapes}) == len(shapes)
    assert_answers_follow(shapes, scene_questions(shapes, rng))


def test_false_premise_rows_exist_whenever_a_shape_is_missing():
    rows = scene_questions([Shape("red", "circle", "left")], random.Random(0))
    false = [r for r in rows if not r["answerable"]]
    assert len(false) == 2 and all(r["answer"] == ABSENT for r in false)


def test_shapes_are_drawn_where_and_as_large_as_said():
    for side, size in (("left", "large"), ("right", "small")):
        image = np.asarray(draw_scene([Shape("blue", "square", side, size)], 128,
                                      random.Random(1), (20, 20, 20)))
        blue = np.argwhere((image == COLOURS["blue"]).all(-1))
        assert (blue[:, 1].mean() < 64) == (side == "left")
        width = blue[:, 1].max() - blue[:, 1].min()
        assert (width > 30) == (size == "large")


def test_rows_carry_types_and_images_exist(tmp_path):
    paths = write_shapes_dataset(tmp_path, 4, seed=0, image_size=96)
    rows = [json.loads(x) for x in paths["train"].read_text().splitlines()]
    assert {r["question_type"] for r in rows} == {"closed", "open"}
    assert Image.open(tmp_path / rows[0]["image"]).size == (96, 96)


CLUTTERED = WORLDS["cluttered"]
PLAIN_FINGERPRINT = "9da1ee589f4c436f"


@pytest.mark.parametrize("seed", range(30))
def test_balanced_answers_follow_from_the_scene(seed):
    rng = random.Random(seed)
    shapes = random_scene(rng, CLUTTERED)
    assert_answers_follow(shapes, balanced_questions(shapes, rng))


def test_balanced_questions_cannot_be_answered_from_their_words():
    """Per template, the commonest answer class stays under 75 %: a model must look."""
    rng = random.Random(0)
    answers: dict[str, Counter] = {}
    for _ in range(600):
        shapes = random_scene(rng, CLUTTERED)
        for row in balanced_questions(shapes, rng):
            words = row["question"].split()
            template = " ".join(words[:2]) + (" shape" if row["question"].endswith("shape?")
                                              else "")
            kind = row["answer"] if row["answer"] in ("yes", "no", ABSENT) else "value"
            answers.setdefault(template, Counter())[kind] += 1
    for template in ("Is there", "Is there shape", "What colour", "Which side", "How large"):
        counts = answers[template]
        assert max(counts.values()) / sum(counts.values()) < 0.75, (template, counts)


def test_cluttered_world_has_empty_scenes_tiny_shapes_regions_and_noise(tmp_path):
    rng = random.Random(3)
    scenes = [random_scene(rng, CLUTTERED) for _ in range(200)]
    assert any(not s for s in scenes)
    assert {shape.size for s in scenes for shape in s} == {"tiny", "small", "large"}
    image = np.asarray(draw_scene([Shape("red", "circle", "left", "tiny")], 192,
                                  random.Random(5), (20, 20, 20), CLUTTERED), np.float32)
    flat = image[:8, :8].reshape(-1, 3)  # a corner: background plus noise only
    assert 3 < flat.std(axis=0).mean() < 20
    red = np.argwhere((np.abs(image - COLOURS["red"]) < 40).all(-1))
    assert 20 < len(red) < 200 and red[:, 1].mean() < 96  # a tiny circle, on the left
    with pytest.raises(ValueError, match="valid worlds: plain, cluttered"):
        write_shapes_dataset(tmp_path / "x", 2, world="busy")


def test_plain_world_is_the_one_the_shipped_nano_learned_from(tmp_path):
    """The shipped nano's recipe says "plain": its data must not drift (questions and pixels
    fingerprinted as written before the cluttered world existed)."""
    import hashlib

    write_shapes_dataset(tmp_path, 6, seed=4)
    digest = hashlib.sha256()
    for path in sorted(tmp_path.rglob("*")):
        if path.suffix == ".jsonl":
            digest.update(path.read_bytes())
        elif path.suffix == ".png":
            digest.update(np.asarray(Image.open(path)).tobytes())
    assert digest.hexdigest()[:16] == PLAIN_FINGERPRINT
