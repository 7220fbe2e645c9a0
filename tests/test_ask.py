"""`domainvlm ask`: one question about one or several images, answered as `eval` answers it;
bad input is one line and exit 2. (DICOM inputs: tests/medical/test_ask_dicom.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit import run_cli as run

from domainvlm.errors import ConfigError
from domainvlm.image_readers import parse_view


@pytest.fixture(scope="module")
def predicted(tiny_models, shapes_data, tmp_path_factory) -> dict:
    """`eval`'s predictions of a plain tiny model for one- and two-image records: the oracle."""
    from domainvlm.evaluation.run import evaluate

    folder = shapes_data["eval"].parent
    rows = [json.loads(line) for line in shapes_data["eval"].read_text().splitlines()]
    first, other = rows[0], next(r for r in rows if r["image"] != rows[0]["image"])
    records = [first, {**first, "image": [first["image"], other["image"]]},
               {**first, "image": [other["image"], first["image"]]}]
    data = tmp_path_factory.mktemp("ask") / "ask.jsonl"
    data.write_text("".join(json.dumps({**r, "image": [str(folder / i) for i in (
        r["image"] if isinstance(r["image"], list) else [r["image"]])]}) + "\n"
        for r in records))
    model = tiny_models("llava")
    evaluate(model, data, data.parent / "eval", max_new_tokens=5)
    rows = [json.loads(line) for line in (data.parent / "eval" / "predictions.jsonl")
            .read_text().splitlines()]
    return {"model": model, "rows": rows}


@pytest.mark.parametrize("index", [0, 1, 2], ids=["one image", "two images", "swapped"])
def test_the_answer_is_evals_prediction_for_the_same_images_and_question(
        index, predicted, capsys, monkeypatch):
    row = predicted["rows"][index]
    images = [arg for image in row["images"] for arg in ("--image", image)]
    code, out, err = run(capsys, monkeypatch, "ask", "--model", predicted["model"], *images,
                         "--max-new-tokens", "5", row["question"])
    assert code == 0, err
    assert out == row["prediction"] + "\n"
    assert err == ""  # plain images: nothing to say about views


def test_json_output_says_what_was_shown(predicted, capsys, monkeypatch):
    row = predicted["rows"][1]
    images = [arg for image in row["images"] for arg in ("--image", image)]
    code, out, err = run(capsys, monkeypatch, "ask", "--model", predicted["model"], *images,
                         "--max-new-tokens", "5", "--json", row["question"])
    assert code == 0, err
    result = json.loads(out)
    assert result["answer"] == row["prediction"]
    assert result["question"] == row["question"]
    assert result["model"] == str(predicted["model"]) and result["base"] is None
    assert [(i["input"], i["kind"], i["images"], i["view"]) for i in result["images"]] == \
        [(image, "image", 1, None) for image in row["images"]]
    assert result["images"][0]["sizes"] == [[64, 64]]
    assert 0 < result["seconds"] < 600


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing.png", r"image .*missing\.png does not exist"),
    (lambda tmp: _write(tmp / "broken.png", b"\x89PNG not really"),
     r"broken\.png: not an image Pillow can open .* nor a file any reader takes \(readers: "
     r"dicom\)"),
    (lambda tmp: _write(tmp / "notes" / "a.txt", b"no scans here").parent,
     r"notes: a folder no reader takes \(readers: dicom\)"),
], ids=["missing image", "unreadable file", "folder that is not DICOM"])
def test_bad_images_are_one_line_and_exit_2(make, message, predicted, tmp_path, capsys,
                                            monkeypatch):
    code, out, err = run(capsys, monkeypatch, "ask", "--model", predicted["model"],
                         "--image", make(tmp_path), "Is there a circle?")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert __import__("re").search(message, lines[0]), err


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("text", "fields"), [
    ("strategy=slabs,count=4", {"strategy": "slabs", "count": "4"}),
    ("window=40,400,count=2", {"window": "40,400", "count": "2"}),
    (" window = lung+mediastinum+bone ", {"window": "lung+mediastinum+bone"}),
    ('{"strategy": "mip", "plane": "coronal", "image_size": null}',
     {"strategy": "mip", "plane": "coronal", "image_size": None}),
])
def test_view_text_becomes_fields(text, fields):
    assert parse_view(text) == fields


@pytest.mark.parametrize("text", ["", "slabs", "400,count=2", "=4", "{not json", "[1, 2]"])
def test_view_text_that_is_neither_pairs_nor_an_object_is_refused(text):
    with pytest.raises(ConfigError, match="--view"):
        parse_view(text)
