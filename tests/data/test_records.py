"""Reading records from JSONL, LLaVA-style JSON and datasets; every error names its record."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from domainvlm.data.encode import encode_records
from domainvlm.data.images import open_image
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record, load_records
from domainvlm.errors import DataError
from domainvlm.nano.shapes_world import Shape, draw_scene


def scene(colour="red", side="left", size=32):
    return draw_scene([Shape(colour, "square", side)], size, random.Random(0))


@pytest.fixture
def folder(tmp_path) -> Path:
    """A data folder with two real images under img/, and a cwd elsewhere."""
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    scene("red").save(data / "img" / "a.png")
    scene("blue", "right").save(data / "img" / "b.png")
    return data


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- JSONL ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("row", "images", "expected"), [
    ({"image": "img/a.png", "question": "Colour?", "answer": "red"}, ["img/a.png"],
     {"question": "Colour?", "answer": "red", "question_type": None, "answerable": None,
      "repeat": 1}),
    ({"image": "img/a.png", "question": "Side?", "answer": "left", "repeat": 4}, ["img/a.png"],
     {"repeat": 4, "extra": {}}),
    ({"image": ["img/a.png", "img/b.png"], "question": "Same?", "answer": "no"},
     ["img/a.png", "img/b.png"], {"question": "Same?", "answer": "no"}),
    ({"images": ["img/b.png"], "question": " Side? ", "answer": " right\n"}, ["img/b.png"],
     {"question": "Side?", "answer": "right"}),
    ({"image": "img/a.png", "question": "Is it red?", "answer": "yes", "question_type": "closed",
      "answerable": True}, ["img/a.png"], {"question_type": "closed", "answerable": True}),
    ({"image": "img/a.png", "question": "Is there a cat?", "answer": "no cat is shown",
      "answer_type": "open", "answerable": False}, ["img/a.png"],
     {"question_type": "open", "answerable": False}),
    ({"image": "img/a.png", "question": "q", "answer": "a", "organ": "lung", "id": 7},
     ["img/a.png"], {"extra": {"organ": "lung", "id": 7}}),
])
def test_jsonl_rows(folder, tmp_path, monkeypatch, row, images, expected):
    path = write_jsonl(folder / "train.jsonl", [row])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths follow the file, not the working directory
    [record] = load_records(str(path))
    assert record.source == "train.jsonl:1"
    assert [Path(p) for p in record.images] == [folder / name for name in images]
    assert all(Path(p).is_file() for p in record.images)
    for key, value in expected.items():
        assert getattr(record, key) == value
    assert open_image(record.images[0], record.source).mode == "RGB"


def test_jsonl_absolute_image_path_is_kept(folder, tmp_path):
    absolute = folder / "img" / "a.png"
    path = write_jsonl(tmp_path / "abs.jsonl", [{"image": str(absolute), "question": "q",
                                                 "answer": "a"}])
    assert load_records(path)[0].images == [absolute]


def test_jsonl_sources_count_blank_lines(folder):
    row = {"image": "img/a.png", "question": "q", "answer": "a"}
    path = write_jsonl(folder / "t.jsonl", [row, "", "   ", row])
    assert [r.source for r in load_records(path)] == ["t.jsonl:1", "t.jsonl:4"]


# --- LLaVA-style JSON ----------------------------------------------------------------------------
def test_llava_json_pairs_become_records(folder):
    rows = [
        {"id": "x", "image": "img/a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"},
            {"from": "gpt", "value": "red"},
            {"from": "human", "value": "Which side is it on?"},
            {"from": "gpt", "value": "left"},
            {"from": "human", "value": "Is there a <image> circle?"},
            {"from": "gpt", "value": "no"},
        ]},
        {"image": "img/b.png", "conversations": [
            {"from": "human", "value": "What colour?<image>"}, {"from": "gpt", "value": "blue"},
        ]},
    ]
    path = folder / "llava.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    records = load_records(path)
    assert [(r.question, r.answer) for r in records] == [
        ("What colour is the square?", "red"),
        ("Which side is it on?", "left"),
        ("Is there a  circle?", "no"),
        ("What colour?", "blue"),
    ]
    assert [r.source for r in records] == [
        "llava.json[0].conversations[0]", "llava.json[0].conversations[2]",
        "llava.json[0].conversations[4]", "llava.json[1].conversations[0]",
    ]
    assert [r.images for r in records] == [[folder / "img" / "a.png"]] * 3 + [
        [folder / "img" / "b.png"]]
    assert all("<image>" not in r.question for r in records)


# --- datasets ------------------------------------------------------------------------------------
def dataset_of(images):
    from datasets import Dataset

    return Dataset.from_dict({
        "image": images,
        "question": ["What colour?", "Which side?"],
        "answer": ["red", "right"],
        "question_type": ["open", "closed"],
        "organ": ["lung", "liver"],
    })


def check_dataset_records(records, name, images):
    assert [r.source for r in records] == [f"{name}[0]", f"{name}[1]"]
    assert [(r.question, r.answer, r.question_type) for r in records] == [
        ("What colour?", "red", "open"), ("Which side?", "right", "closed")]
    assert [r.extra for r in records] == [{"organ": "lung"}, {"organ": "liver"}]
    for record, image in zip(records, images, strict=True):
        [ref] = record.images
        assert isinstance(ref, Image.Image)
        assert open_image(ref, record.source).tobytes() == image.tobytes()


def test_dataset_with_pil_column():
    images = [scene("red"), scene("blue", "right")]
    check_dataset_records(load_records(dataset_of(images)), "dataset", images)


def test_dataset_saved_to_disk_loads_by_folder(tmp_path):
    images = [scene("red"), scene("blue", "right")]
    saved = tmp_path / "saved"
    dataset_of(images).save_to_disk(str(saved))
    check_dataset_records(load_records(str(saved)), str(saved), images)


def test_dataset_without_needed_columns_names_them():
    from datasets import Dataset

    dataset = Dataset.from_dict({"image": [scene()], "prompt": ["q"], "answer": ["a"]})
    with pytest.raises(DataError, match=r"dataset: .*`question` and `answer`.*'prompt'"):
        load_records(dataset)


# --- errors that name the record -----------------------------------------------------------------
GOOD = {"image": "img/a.png", "question": "q", "answer": "a"}


@pytest.mark.parametrize(("lines", "message"), [
    ([GOOD, {**GOOD, "answer": ""}], r"^bad\.jsonl:2: `answer` is empty or missing"),
    ([{**GOOD, "answer": "   "}], r"^bad\.jsonl:1: `answer` is empty"),
    ([{k: v for k, v in GOOD.items() if k != "question"}], r"^bad\.jsonl:1: `question` is empty"),
    ([{**GOOD, "question": 3}], r"^bad\.jsonl:1: `question`"),
    ([GOOD, "", '{"image": "img/a.png", "question": "q",'], r"^bad\.jsonl:3: not valid JSON"),
    ([GOOD, '["a", "b"]'], r"^bad\.jsonl:2: each line must be a JSON object"),
    ([{"question": "q", "answer": "a"}], r"^bad\.jsonl:1: no image"),
    ([{**GOOD, "image": []}], r"^bad\.jsonl:1: `image` is an empty list"),
    ([GOOD, {**GOOD, "repeat": 0}], r"^bad\.jsonl:2: `repeat` is how many times .*got 0$"),
    ([{**GOOD, "repeat": 2.5}], r"^bad\.jsonl:1: `repeat` .*whole number >= 1; got 2\.5$"),
    ([{**GOOD, "repeat": "3"}], r"^bad\.jsonl:1: `repeat` .*got '3'$"),
    ([{**GOOD, "repeat": True}], r"^bad\.jsonl:1: `repeat` .*got True$"),
])
def test_jsonl_errors_name_the_line(folder, lines, message):
    path = write_jsonl(folder / "bad.jsonl", lines)
    with pytest.raises(DataError, match=message):
        load_records(path)


# Every field, by type and domain: a bad value is named with its record and field, never
# coerced. (field, bad value, what the message must say)
BAD_FIELDS = [
    ("image", 3, r"`image` must be a file path .*got 3 \(a number\)"),
    ("image", ["img/a.png", None], r"`image` must be a file path .*got null"),
    ("image", {"path": "img/a.png"}, r"`image` must be a file path .*\(an object\)"),
    ("image", "", r"`image` must be a file path .*got \"\" \(a string\)"),
    ("images", [True], r"`image` must be a file path .*got true \(a boolean\)"),
    ("question", 3, r"`question` must be text \(a JSON string\), got 3 \(a number\)"),
    ("question", ["q"], r"`question` must be text .*\(a list\)"),
    ("answer", False, r"`answer` must be text .*got false \(a boolean\)"),
    ("answer", 2.5, r"`answer` must be text .*got 2\.5"),
    ("answerable", "no", r"`answerable` must be true or false \(JSON booleans\), got \"no\""),
    ("answerable", "false", r"`answerable` must be true or false .*got \"false\" \(a string\)"),
    ("answerable", 0, r"`answerable` must be true or false .*got 0 \(a number\)"),
    ("question_type", "yes/no", r"`question_type` must be \"closed\" or \"open\" .*\"yes/no\""),
    ("question_type", "PRES", r"`question_type` must be .*\"PRES\".*belongs in `category`"),
    ("question_type", True, r"`question_type` must be .*got true"),
    ("answer_type", "number", r"`answer_type` must be \"closed\" or \"open\" .*\"number\""),
    ("answer_type", 1, r"`answer_type` must be .*got 1 \(a number\)"),
    ("repeat", "3", r"`repeat` .*got '3'"),
    ("repeat", 0, r"`repeat` .*got 0"),
    ("category", 7, r"`category` must be a non-empty name .*got 7 \(a number\)"),
    ("category", "", r"`category` must be a non-empty name .*got \"\""),
    ("category", ["side"], r"`category` must be .*\(a list\)"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_FIELDS,
                         ids=[f"{k}={v!r}" for k, v, _ in BAD_FIELDS])
def test_a_bad_field_value_is_an_error_naming_record_field_and_value(folder, key, value,
                                                                     message):
    row = {**GOOD, key: value}
    if key == "images":
        del row["image"]
    path = write_jsonl(folder / "train.jsonl", [GOOD, GOOD, row])
    with pytest.raises(DataError, match=r"^train\.jsonl:3: " + message):
        load_records(path)


@pytest.mark.parametrize(("values", "expected"), [
    ({"question_type": "CLOSED"}, "closed"),  # VQA-RAD's spelling
    ({"answer_type": " Open "}, "open"),
    ({"question_type": "closed", "answer_type": "CLOSED"}, "closed"),
    ({}, None),
])
def test_question_types_are_read_in_any_case(folder, values, expected):
    [record] = load_records(write_jsonl(folder / "t.jsonl", [{**GOOD, **values}]))
    assert record.question_type == expected


def test_question_and_answer_types_that_disagree_are_an_error(folder):
    path = write_jsonl(folder / "t.jsonl", [{**GOOD, "question_type": "closed",
                                             "answer_type": "open"}])
    with pytest.raises(DataError, match=r"^t\.jsonl:1: `question_type` 'closed' and "
                                        r"`answer_type` 'open' disagree"):
        load_records(path)


def test_category_is_a_field_of_the_record(folder):
    [record] = load_records(write_jsonl(folder / "t.jsonl", [{**GOOD, "category": " side "}]))
    assert record.category == "side" and "category" not in record.extra


@pytest.mark.parametrize(("column", "values", "message"), [
    ("answerable", ["true", "false"], r"^dataset\[0\]: `answerable` must be true or false"),
    ("question_type", ["closed", "number"], r"^dataset\[1\]: `question_type` must be"),
    ("category", [1, 2], r"^dataset\[0\]: `category` must be a non-empty name"),
])
def test_dataset_fields_are_checked_like_files(column, values, message):
    from datasets import Dataset

    dataset = Dataset.from_dict({"image": [scene(), scene()], "question": ["q", "q"],
                                 "answer": ["a", "a"], column: values})
    with pytest.raises(DataError, match=message):
        load_records(dataset)


@pytest.mark.parametrize(("human", "gpt", "message"), [
    (3, "a", r"`question` must be text .*got 3"),
    ("q", ["a"], r"`answer` must be text .*\(a list\)"),
    (None, "a", r"`question` is empty or missing"),
])
def test_llava_json_turn_values_must_be_text(folder, human, gpt, message):
    path = folder / "bad.json"
    path.write_text(json.dumps([{"image": "img/a.png", "conversations": [
        {"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}]))
    with pytest.raises(DataError, match=r"^bad\.json\[0\]\.conversations\[0\]: " + message):
        load_records(path)


@pytest.mark.parametrize(("content", "message"), [
    ('[{"image": "img/a.png", "conversations": [', r"^bad\.json: not valid JSON .*at line 1"),
    ('{"image": "img/a.png"}', r"^bad\.json: a LLaVA-style file is a JSON list"),
    (json.dumps([{"image": "img/a.png", "conversations": [
        {"from": "human", "value": "q"}]}]), r"^bad\.json\[0\]: `conversations` must hold"),
    (json.dumps([{"image": "img/a.png"}]), r"^bad\.json\[0\]: `conversations`"),
    (json.dumps(["not an object"]), r"^bad\.json\[0\]: `conversations`"),
    (json.dumps([{"image": "img/a.png", "conversations": ["q", "a"]}]),
     r"^bad\.json\[0\]: `conversations` must hold"),
    (json.dumps([{"image": "img/a.png", "conversations": {"human": "q", "gpt": "a"}}]),
     r"^bad\.json\[0\]: `conversations` must hold"),
    (json.dumps([{"image": "img/a.png", "conversations": [
        {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
        {"from": "human", "value": "q2"}, {"from": "gpt", "value": " "}]}]),
     r"^bad\.json\[0\]\.conversations\[2\]: `answer` is empty"),
    (json.dumps([{"conversations": [
        {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]),
     r"^bad\.json\[0\]\.conversations\[0\]: no image"),
    (json.dumps([{"image": "img/a.png", "conversations": [
        {"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}]),
     r"^bad\.json\[0\]\.conversations\[0\]: turns must go human then gpt, found 'gpt'"),
])
def test_llava_json_errors_name_the_entry(folder, content, message):
    path = folder / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_records(path)


@pytest.mark.parametrize(("name", "message"), [
    ("data.csv", r"data\.csv: unknown format '\.csv'; use \.jsonl or \.json"),
    ("data.parquet", r"unknown format '\.parquet'"),
])
def test_unknown_suffix(tmp_path, name, message):
    path = tmp_path / name
    path.write_text("image,question,answer\n")
    with pytest.raises(DataError, match=message):
        load_records(path)


def test_missing_data_path(tmp_path):
    missing = tmp_path / "nowhere" / "train.jsonl"
    with pytest.raises(DataError, match=r"nowhere/train\.jsonl does not exist"):
        load_records(str(missing))


@pytest.mark.parametrize(("write", "message"), [
    (None, r"^train\.jsonl:1: image .*img/x\.png does not exist"),
    (b"\x89PNG\r\n\x1a\n this is not really a png", r"^train\.jsonl:1: image .*x\.png cannot be "
                                                    r"decoded"),
    (b"", r"^train\.jsonl:1: image .*x\.png cannot be decoded"),
    (b"GIF89a" + bytes(range(256)) * 4, r"^train\.jsonl:1: image .*x\.png cannot be decoded"),
])
def test_unusable_image_files_name_record_and_file(folder, write, message):
    if write is not None:
        (folder / "img" / "x.png").write_bytes(write)
    path = write_jsonl(folder / "train.jsonl", [{**GOOD, "image": "img/x.png"}])
    [record] = load_records(path)  # files are opened when encoding, not when listing
    with pytest.raises(DataError, match=message):
        open_image(record.images[0], record.source)


# --- encode_records: all problems at once, nothing dropped ---------------------------------------
@pytest.fixture(scope="module")
def llava_format(tiny_models) -> PromptFormat:
    from transformers import AutoProcessor

    from domainvlm.families import family_for

    return PromptFormat.from_processor(AutoProcessor.from_pretrained(tiny_models("llava")),
                                       family_for("llava"))


def test_encode_records_refuses_an_empty_data_set(llava_format, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    records = load_records(empty)
    assert records == []
    with pytest.raises(DataError, match="empty"):
        encode_records(records, llava_format, 512)


@pytest.mark.parametrize(("bad", "good"), [(1, 3), (3, 1), (5, 2)])
def test_encode_records_reports_every_bad_record(llava_format, folder, bad, good):
    (folder / "img" / "garbage.png").write_bytes(b"garbage")
    refs = ["img/missing.png", "img/garbage.png"]
    records = [Record([folder / refs[i % 2]], "q", "a", f"bad.jsonl:{i}") for i in range(bad)]
    records += [Record([folder / "img" / "a.png"], "q", "a", f"good.jsonl:{i}")
                for i in range(good)]
    with pytest.raises(DataError) as info:
        encode_records(records, llava_format, 512)
    message = str(info.value)
    assert message.startswith(f"{bad} of {bad + good} records are unusable")
    for i in range(bad):
        assert f"bad.jsonl:{i}: image" in message
    assert "good.jsonl" not in message
    assert "more" not in message


def test_encode_records_counts_those_beyond_the_first_five(llava_format, folder):
    records = [Record([folder / "img" / "missing.png"], "q", "a", f"b.jsonl:{i}")
               for i in range(8)]
    records.append(Record([folder / "img" / "a.png"], "q", "a", "ok.jsonl:1"))
    with pytest.raises(DataError, match=r"^8 of 9 records are unusable") as info:
        encode_records(records, llava_format, 512)
    message = str(info.value)
    assert all(f"b.jsonl:{i}:" in message for i in range(5))
    assert "... and 3 more" in message


def test_encode_records_keeps_every_good_record(llava_format, folder):
    records = [Record([folder / "img" / name], "q", "a", f"g:{i}")
               for i, name in enumerate(["a.png", "b.png", "a.png"])]
    calls = []
    samples = encode_records(records, llava_format, 512, progress=lambda: calls.append(1))
    assert len(samples) == 3 and len(calls) == 3
