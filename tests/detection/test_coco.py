"""COCO instances and split files in: boxes converted once, every bad file refused clearly."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from domainvlm.detection.coco import CategorySplit, read_coco, read_split, restrict
from domainvlm.detection.types import DetectionInputError

GOOD = {
    "images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 30},
               {"id": 9, "file_name": "b.png", "width": 50, "height": 20}],
    "categories": [{"id": 1, "name": "red mug"}, {"id": 2, "name": "blue box"},
                   {"id": 5, "name": "metal can"}],
    "annotations": [
        {"id": 11, "image_id": 7, "category_id": 1, "bbox": [2, 3, 10, 5], "iscrowd": 0},
        {"id": 12, "image_id": 7, "category_id": 5, "bbox": [-0.5, 0, 40.5, 30]},  # rounding
        {"id": 13, "image_id": 9, "category_id": 2, "bbox": [10, 4, 20.5, 6.25], "iscrowd": 0},
        {"id": 14, "image_id": 9, "category_id": 1, "bbox": [0, 0, 50, 20], "iscrowd": 1},
    ],
}


def write(folder: Path, data, images_in: str = "images", files=("a.png", "b.png")) -> Path:
    """`data` as `folder/instances.json`, and small PNG `files` under `folder/images_in`."""
    for name in files:
        path = folder / images_in / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (90, 90, 90)).save(path)
    path = folder / "instances.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_reads_boxes_as_xyxy_and_leaves_crowds_to_pycocotools(tmp_path):
    dataset = read_coco(write(tmp_path, GOOD))
    assert [image.id for image in dataset.images] == [7, 9]
    assert dataset.images[1].path == tmp_path / "images" / "b.png"
    assert (dataset.images[1].width, dataset.images[1].height) == (50, 20)
    assert dataset.categories == {1: "red mug", 2: "blue box", 5: "metal can"}
    assert dataset.names() == ["red mug", "blue box", "metal can"]
    assert dataset.category_id("metal can") == 5
    # by hand: xywh [2, 3, 10, 5] -> [2, 3, 12, 8]; a box half a pixel over is clamped
    assert torch.equal(dataset.boxes[7], torch.tensor([[2.0, 3, 12, 8], [0, 0, 40, 30]]))
    assert torch.equal(dataset.boxes[9], torch.tensor([[10.0, 4, 30.5, 10.25]]))
    assert dataset.labels == {7: [1, 5], 9: [2]}  # the crowd box 14 is not a training box
    with contextlib.redirect_stdout(io.StringIO()):
        assert len(COCO(str(dataset.source)).getAnnIds(imgIds=[9])) == 2  # pycocotools has it
    with pytest.raises(DetectionInputError, match="no category named 'green ball'"):
        dataset.category_id("green ball")


def test_finds_images_beside_the_file_or_in_a_given_folder(tmp_path):
    beside = read_coco(write(tmp_path / "beside", GOOD, images_in="."))
    assert beside.images[0].path == tmp_path / "beside" / "a.png"
    nested = copy.deepcopy(GOOD)
    for row in nested["images"]:
        row["file_name"] = "val2017/" + row["file_name"]
    relative = read_coco(write(tmp_path / "coco", nested, images_in=".",
                               files=("val2017/a.png", "val2017/b.png")))
    assert relative.images[0].path == tmp_path / "coco" / "val2017" / "a.png"
    elsewhere = write(tmp_path / "given", GOOD, images_in="pictures")
    assert read_coco(elsewhere, tmp_path / "given" / "pictures").images[1].path == \
        tmp_path / "given" / "pictures" / "b.png"


def change(**edits):
    """A copy of GOOD with `edits` applied: key 'annotations.0.bbox' = value, or None to
    delete that key."""
    data = copy.deepcopy(GOOD)
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        target = data
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is None:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return data


BAD = {
    "not JSON": ("{'images': [", ["not readable as JSON"]),
    "not an object": ("[1, 2]", ["not a COCO instances file"]),
    "no annotations list": (change(annotations=None), ["no 'annotations' list"]),
    "no images": (change(images=[]), ["lists no images"]),
    "annotation without bbox": (change(**{"annotations.2.bbox": None}),
                                ["annotation 13 has no 'bbox'", "each needs"]),
    "annotation without id": (change(**{"annotations.1.id": None}),
                              ["annotation entry 1 has no integer 'id'"]),
    "image without width": (change(**{"images.1.width": None}), ["image 9 has no 'width'"]),
    "image of size 0": (change(**{"images.0.height": 0}), ["image 7 has size 40x0"]),
    "box beyond the right edge": (change(**{"annotations.0.bbox": [35, 3, 7, 5]}),
                                  ["annotation 11", "reaches outside its 40x30 image",
                                   "fix the box"]),
    "box above the top": (change(**{"annotations.2.bbox": [10, -2, 5, 5]}),
                          ["annotation 13", "reaches outside its 50x20 image"]),
    "box of width 0": (change(**{"annotations.0.bbox": [2, 3, 0, 5]}),
                       ["annotation 11", "width or height <= 0"]),
    "box of negative height": (change(**{"annotations.2.bbox": [2, 3, 4, -1]}),
                               ["annotation 13", "width or height <= 0"]),
    "box of three numbers": (change(**{"annotations.0.bbox": [2, 3, 4]}),
                             ["annotation 11", "not four numbers"]),
    "unknown category id": (change(**{"annotations.1.category_id": 3}),
                            ["annotation 12", "category id 3 is not in the file's categories",
                             "fix its category_id"]),
    "unknown image id": (change(**{"annotations.2.image_id": 8}),
                         ["annotation 13", "image id 8 is not in the file's images"]),
    "duplicate annotation id": (change(**{"annotations.3.id": 11}),
                                ["annotation 11 appears twice"]),
    "duplicate image id": (change(**{"images.1.id": 7}), ["image 7 appears twice"]),
    "duplicate category id": (change(**{"categories.2.id": 2}), ["category 2 appears twice"]),
    "duplicate category name": (change(**{"categories.2.name": "red mug"}),
                                ["category 5 has an empty or repeated name 'red mug'"]),
    "image file missing": (change(**{"images.1.file_name": "gone.png"}),
                           ["image 9: file 'gone.png' not found", "give the images folder"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_instances_file_is_one_clear_error(tmp_path, case):
    data, fragments = BAD[case]
    path = write(tmp_path, data)
    with pytest.raises(DetectionInputError) as raised:
        read_coco(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_instances_file(tmp_path):
    with pytest.raises(DetectionInputError, match="no such file: give the path of a COCO"):
        read_coco(tmp_path / "instances.json")


@pytest.fixture
def dataset(tmp_path):
    return read_coco(write(tmp_path, GOOD))


def test_split_file_read_and_checked_against_the_data(tmp_path, dataset):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"name": "mine", "base": ["red mug", "blue box"],
                                "novel": ["metal can"]}))
    assert read_split(path, dataset) == CategorySplit("mine", ("red mug", "blue box"),
                                                      ("metal can",))
    path.write_text(json.dumps({"base": ["blue box"], "novel": ["red mug"]}))
    assert read_split(path, dataset).name == "split"  # named after the file by default


BAD_SPLITS = {
    "unknown name": ({"base": ["red mug", "green ball"], "novel": ["metal can"]},
                     "base categories 'green ball' are not in"),
    "in both": ({"base": ["red mug", "blue box"], "novel": ["blue box"]},
                "'blue box' both base and novel"),
    "empty novel": ({"base": ["red mug"], "novel": []}, "'novel' must be a non-empty list"),
    "no base": ({"novel": ["red mug"]}, "'base' must be a non-empty list"),
    "repeated": ({"base": ["red mug", "red mug"], "novel": ["blue box"]},
                 "base lists 'red mug' more than once"),
    "not an object": (["red mug"], "not a split file"),
    "not JSON": ("base: red mug", "not readable as JSON"),
}


@pytest.mark.parametrize("case", list(BAD_SPLITS))
def test_bad_split_file_is_one_clear_error(tmp_path, dataset, case):
    content, fragment = BAD_SPLITS[case]
    path = tmp_path / "split.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DetectionInputError) as raised:
        read_split(path, dataset)
    assert str(raised.value).startswith(f"{path}: ") and fragment in str(raised.value)


def test_restrict_keeps_only_the_named_categories(dataset):
    base = restrict(dataset, ["red mug", "blue box"])
    assert base.labels == {7: [1], 9: [2]}
    assert torch.equal(base.boxes[7], torch.tensor([[2.0, 3, 12, 8]]))
    assert base.boxes[9].shape == (1, 4) and base.categories == dataset.categories
    assert restrict(dataset, []).boxes[7].shape == (0, 4)
    assert dataset.labels == {7: [1, 5], 9: [2]}  # the original is untouched
    with pytest.raises(DetectionInputError, match="no category named 'green ball'"):
        restrict(dataset, ["green ball"])
