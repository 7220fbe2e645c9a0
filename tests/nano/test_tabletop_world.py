"""The tabletop world: deterministic scenes, resolution-free layout, the two category splits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from domainvlm.nano.tabletop_world import ATTRIBUTES, KINDS, SPLITS, VOCABULARY, render_scene


def test_same_seed_same_scene_other_seed_other_scene():
    image, objects = render_scene(3)
    again, objects_again = render_scene(3)
    other, objects_other = render_scene(4)
    assert np.array_equal(np.asarray(image), np.asarray(again)) and objects == objects_again
    assert objects != objects_other
    assert image.size == (320, 240) and image.mode == "RGB"
    assert 3 <= len(objects) <= 7
    assert {o.category for o in objects} <= set(VOCABULARY)


def test_640x480_is_the_320x240_scene_scaled_twice():
    small, small_objects = render_scene(11)
    large, large_objects = render_scene(11, size=(640, 480))
    assert [o.category for o in small_objects] == [o.category for o in large_objects]
    for a, b in zip(small_objects, large_objects, strict=True):
        assert np.allclose(np.array(b.box), 2 * np.array(a.box), atol=1e-6)
    shrunk = np.asarray(large.resize(small.size, Image.BOX), np.float32)
    difference = np.abs(shrunk - np.asarray(small, np.float32)).mean()
    unrelated = np.abs(np.asarray(render_scene(12)[0], np.float32)
                       - np.asarray(small, np.float32)).mean()
    assert difference < 8 and unrelated > 4 * difference  # same picture, up to noise and edges


def partners(split, word: str) -> int:
    """How many base categories share `word` (an attribute or a kind)."""
    return sum(word in name.split(" ") for name in split.base)


@pytest.mark.parametrize("name", list(SPLITS))
def test_split_novel_words_all_seen_in_base_never_combined(name):
    split = SPLITS[name]
    assert len(VOCABULARY) == len(ATTRIBUTES) * len(KINDS) == 30
    assert set(split.base) | set(split.novel) == set(VOCABULARY)
    assert not set(split.base) & set(split.novel)
    for category in split.novel:
        attribute, kind = category.split(" ")
        assert partners(split, attribute) > 0 and partners(split, kind) > 0, category


def test_easy_split_keeps_more_partners_than_hard():
    easy, hard = SPLITS["easy"], SPLITS["hard"]
    assert len(easy.novel) == 5 and len(hard.novel) == 12
    assert sorted(c.split(" ")[1] for c in easy.novel) == sorted(KINDS)  # a diagonal
    assert len({c.split(" ")[0] for c in easy.novel}) == 5

    def counts(split, position):
        return [partners(split, c.split(" ")[position]) for c in split.novel]

    for position in (0, 1):  # attributes, kinds
        assert min(counts(easy, position)) > max(counts(hard, position))
    # "most partners": each novel word of the easy split keeps most of its possible partners
    assert min(counts(easy, 0)) > len(KINDS) / 2 and min(counts(easy, 1)) > len(ATTRIBUTES) / 2
