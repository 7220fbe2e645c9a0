"""`domainvlm demo` shrunk (few patients, few steps) end to end: report, plots, and the adapted
model beats its base on held-out patients."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from PIL import Image
from transformers import AutoImageProcessor

from domainvlm.medical.demo_recipe import load_recipe


@pytest.mark.slow
def test_shrunken_demo_end_to_end(warm_domainvlm, tmp_path):
    recipe = load_recipe()  # the shipped one, which the command reads
    out = tmp_path / "demo"
    result = subprocess.run(  # the default base model: the shipped nano
        [warm_domainvlm, "demo", "--output", str(out),
         "--patients", "24", "--epochs", "6"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("report.md", "loss.png", "accuracy.png", "gallery.png", "timings.json"):
        assert (out / name).stat().st_size > 0, name
    base = json.loads((out / "eval-base" / "metrics.json").read_text())
    adapted = json.loads((out / "eval-adapted" / "metrics.json").read_text())
    assert adapted["vqa"]["accuracy"] > base["vqa"]["accuracy"]
    report = (out / "report.md").read_text()
    assert f"{100 * adapted['vqa']['closed_accuracy']:.1f}%" in report
    assert "false premise answered as absent" in report
    assert "held-out patients: base vs adapted" in result.stdout
    assert result.stdout.splitlines()[-1] == f"wrote {out}"
    for name in ("base", "adapted"):  # every presence question on a test scan is probed
        probe = json.loads((out / f"probe-{name}.json").read_text())["by_category"]
        assert probe["presence"]["n"] == base["by_category"]["presence"]["n"]
    assert "Can the model see the findings? (linear probe)" in report
    assert "closed, linear probe on image features" in result.stdout
    train = {json.loads(x)["patient"] for x in (out / "vqa" / "train.jsonl").read_text()
             .splitlines()}
    test = {json.loads(x)["patient"] for x in (out / "vqa" / "test.jsonl").read_text()
            .splitlines()}
    assert test and not train & test
    # Recipe choices are made on validation; seed 0 chose the recipe, and the report says so.
    build = json.loads((out / "vqa" / "build.json").read_text())
    assert build["fractions"] == recipe.split.model_dump() and recipe.split.val >= 0.1
    assert "Seed 0 is one of them: its test figures informed the recipe" in report
    # The repeated question reaches training: one epoch trains that many more rows, packed
    # with the other questions about their scan (one sequence per scan, batches of scans).
    rows = [json.loads(x) for x in (out / "vqa" / "train.jsonl").read_text().splitlines()]
    assert {row.get("repeat") for row in rows if row["question_id"] in recipe.repeats} == {4}
    assert not any("repeat" in row for row in rows if row["question_id"] not in recipe.repeats)
    samples = sum(row.get("repeat", 1) for row in rows)
    scans = len({tuple(row["image"]) for row in rows})
    summary = json.loads((out / "finetune" / "run.json").read_text())["summary"]
    assert summary["steps"] == 6 * math.ceil(scans / recipe.finetune.batch_size)
    assert summary["samples"] == 6 * samples > 6 * len(rows)
    # The nano is fed the recipe's nano_input_px views, rendered at that size: never
    # resampled again.
    crop = AutoImageProcessor.from_pretrained(out / "base-model").crop_size["height"]
    image = json.loads((out / "vqa" / "test.jsonl").read_text().splitlines()[0])["image"][0]
    assert crop == recipe.nano_input_px and Image.open(out / "vqa" / image).size == (crop, crop)
    assert f"`{out / 'base-model'}`" in report
