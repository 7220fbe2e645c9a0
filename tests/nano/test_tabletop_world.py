"""The tabletop world: deterministic scenes, resolution-free layout, the two category splits."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from testkit import run_cli

from domainvlm.detection.coco import read_coco
from domainvlm.errors import ConfigError, OutputExistsError
from domainvlm.nano.tabletop_world import (
    ATTRIBUTES,
    KINDS,
    SPLITS,
    VOCABULARY,
    render_scene,
    scene_seed,
    write_tabletop,
)


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


def test_objects_sizes_occlusion_and_colours_as_drawn():
    """Over many scenes: 3-7 objects inside the frame, heights 1/12-1/4 of the image, each box
    at most ~30 % covered by the objects drawn after it (counted on a pixel grid), and the
    pixels at the centre of every object nothing covers show its attribute's colour."""
    colour_checks = {
        "red": lambda r, g, b: r > 1.5 * g and r > 1.5 * b,
        "green": lambda r, g, b: g > 1.3 * r and g > 1.2 * b,
        "blue": lambda r, g, b: b > 1.5 * r and b > 1.2 * g,
        "yellow": lambda r, g, b: r > 1.5 * b and g > 1.5 * b,
        "metal": lambda r, g, b: max(r, g, b) - min(r, g, b) < 0.12 * max(r, g, b),
        "wooden": lambda r, g, b: r > g > b and r > 1.4 * b,
    }
    checked = dict.fromkeys(colour_checks, 0)
    for seed in range(40):
        image, objects = render_scene(1000 + seed)
        pixels = np.asarray(image, np.float32)
        assert 3 <= len(objects) <= 7
        for index, item in enumerate(objects):
            x0, y0, x1, y1 = item.box
            assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
            assert 240 / 12 - 1e-6 <= y1 - y0 <= 240 / 4 + 1e-6
            grid = np.zeros((240, 320), bool)
            for later in objects[index + 1:]:
                a0, b0, a1, b1 = (round(v) for v in later.box)
                grid[b0:b1, a0:a1] = True
            own = grid[round(y0):round(y1), round(x0):round(x1)]
            assert own.mean() <= 0.3 + 0.05, (seed, item)
            if own.any():
                continue
            attribute = item.category.split(" ")[0]
            cx = round((x0 + x1) / 2 - (0.13 * (x1 - x0) if "mug" in item.category else 0))
            cy = round((y0 + y1) / 2)
            r, g, b = np.median(pixels[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3), axis=0)
            assert colour_checks[attribute](r, g, b), (seed, item.category, (r, g, b))
            checked[attribute] += 1
    assert min(checked.values()) >= 5, checked


SEED, IMAGES = 5, 6


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The same scenes written twice: training labels (base) and evaluation labels (all)."""
    root = tmp_path_factory.mktemp("tabletop")
    return {labels: write_tabletop(root / labels, images=IMAGES, seed=SEED, labels=labels)
            for labels in ("base", "all")}


def scenes():
    return [render_scene(scene_seed(SEED, index)) for index in range(IMAGES)]


def test_base_labels_leave_novel_objects_in_the_images_unlabelled(written):
    split = SPLITS["easy"]
    coco = json.loads((written["base"] / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    labelled = [names[a["category_id"]] for a in coco["annotations"]]
    drawn = [o.category for _, objects in scenes() for o in objects]
    assert sum(c in split.novel for c in drawn) >= 3  # novel objects are in the images...
    assert not set(labelled) & set(split.novel)  # ...and never labelled
    assert sorted(labelled) == sorted(c for c in drawn if c in split.base)
    for index, (image, _) in enumerate(scenes()):
        on_disk = Image.open(written["base"] / "images" / f"{index:06d}.png")
        assert np.array_equal(np.asarray(on_disk), np.asarray(image))
    assert json.loads((written["base"] / "split.json").read_text()) == {
        "name": "easy", "base": list(split.base), "novel": list(split.novel)}


def test_all_labels_load_in_pycocotools_and_round_trip_through_read_coco(written):
    instances = written["all"] / "instances.json"
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCO(str(instances))
    assert [reference.cats[i]["name"] for i in sorted(reference.cats)] == list(VOCABULARY)
    assert sorted(reference.cats) == list(range(1, 31))
    dataset = read_coco(instances)
    assert dataset.names() == list(VOCABULARY)
    for (image, objects), entry in zip(scenes(), dataset.images, strict=True):
        assert entry.path.is_file() and (entry.width, entry.height) == image.size
        annotations = reference.loadAnns(reference.getAnnIds(imgIds=[entry.id]))
        x, y, w, h = np.array([a["bbox"] for a in annotations]).T
        from_pycocotools = np.stack([x, y, x + w, y + h], axis=1)
        assert np.allclose(from_pycocotools, [o.box for o in objects], atol=1e-4)
        assert np.allclose(dataset.boxes[entry.id].numpy(), from_pycocotools, atol=1e-3)
        assert [dataset.categories[c] for c in dataset.labels[entry.id]] == \
            [o.category for o in objects]


def test_sets_written_with_different_seeds_share_no_scene():
    first = {scene_seed(0, index) for index in range(200)}
    second = {scene_seed(1, index) for index in range(200)}
    assert len(first) == 200 and not first & second


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    saved = []
    original = Image.Image.save

    def save_twice(self, *args, **kwargs):  # a disk that fills up at the third image
        if len(saved) == 2:
            raise OSError(28, "No space left on device")
        saved.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_twice)
    with pytest.raises(OSError, match="No space left"):
        write_tabletop(tmp_path / "out", images=4, labels="all")
    assert len(saved) == 2 and list(tmp_path.iterdir()) == []


def test_refuses_an_occupied_folder_and_bad_settings(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="already exists"):
        write_tabletop(tmp_path / "taken", images=1, labels="all")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="unknown tabletop split 'medium'"):
        write_tabletop(tmp_path / "a", images=1, labels="all", split="medium")
    with pytest.raises(ConfigError, match="labels must be 'base' or 'all'"):
        write_tabletop(tmp_path / "b", images=1, labels="novel")
    with pytest.raises(ConfigError, match="at least 32 pixels a side, not 16x16"):
        write_tabletop(tmp_path / "c", images=1, labels="all", size=(16, 16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_synth_data_command_writes_the_tabletop_coco_set(tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(capsys, monkeypatch, "synth-data", "--world", "tabletop",
                           "--output", tmp_path / "train", "--images", "2", "--labels", "base",
                           "--split", "hard", "--seed", "3")
    assert code == 0 and f"wrote {tmp_path / 'train'}" in out
    dataset = read_coco(tmp_path / "train" / "instances.json")
    drawn = [render_scene(scene_seed(3, index), split="hard")[1] for index in range(2)]
    assert [[dataset.categories[c] for c in dataset.labels[image.id]] for image in
            dataset.images] == [[o.category for o in objects if o.category in
                                 SPLITS["hard"].base] for objects in drawn]
    code, _, err = run_cli(capsys, monkeypatch, "synth-data", "--world", "tabletop",
                           "--output", tmp_path / "bad", "--split", "medium")
    assert code == 2 and "unknown tabletop split 'medium'" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
