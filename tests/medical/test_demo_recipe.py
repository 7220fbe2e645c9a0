"""The demo's recipe as a YAML file: the shipped one reproduces the constants it replaced, bad
files are one clear error, and a recipe runs end to end through `domainvlm demo --config`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from domainvlm import cli
from domainvlm.medical.demo import DEMO_KEY, finetune_config, make_data
from domainvlm.medical.demo_recipe import DEFAULT_RECIPE, load_recipe
from domainvlm.progress import Reporter
from domainvlm.train.config import FinetuneConfig

# The oracle: the recipe as constants and defaults in medical/demo.py before it became YAML.
OLD_VIEW = {"strategy": "slabs", "count": 4, "window": "lung-only+liver+mediastinum"}
OLD_NANO_INPUT_PX = 320
OLD_CT_MATRIX = (128, 128)
OLD_REPEATS = {"Which side is the lung nodule on?": 4}
OLD_SPLIT = {"train": 0.7, "val": 0.1, "test": 0.2}
OLD_SELECTION_SEEDS = (0, 1, 2)
OLD_DEFAULTS = {"model": None, "patients": 360, "slices": 32, "seed": 0, "epochs": 8.0,
                "learning_rate": 1e-3, "lora_r": 16, "lora_targets": ("language",),
                "train_fully": ("projector",), "batch_size": 4}
OLD_EVALUATION = {"batch_size": 32, "max_new_tokens": 12}
# Each cohort question and the id the generator now gives it, written out by hand.
QUESTION_IDS = {"Is there a lung nodule?": "lung-presence",
                "Which side is the lung nodule on?": "lung-side",
                "How large is the lung nodule?": "lung-size",
                "Is there a liver lesion?": "liver-presence",
                "Which side is the liver lesion on?": "liver-side",
                "How large is the liver lesion?": "liver-size",
                "How many lesions are there?": "lesion-count",
                "Which organ has a lesion?": "lesion-organ"}
SMALL = {"patients": 10, "slices": 8}  # both sides built at this size


def old_make_data(out: Path, patients: int, slices: int, seed: int) -> Path:
    """`_make_data` as it was, with the old constants (the generator's new `question_id`
    taken off its rows: the old generator wrote none)."""
    from domainvlm.medical.cohort import write_cohort
    from domainvlm.medical.cohort_questions import cohort_questions
    from domainvlm.medical.deid import DeidConfig
    from domainvlm.medical.sources import folder_fetcher
    from domainvlm.medical.vqa import ViewSpec, build_vqa

    manifest = write_cohort(out / "cohort", patients, seed=seed,
                            shape=(slices, *OLD_CT_MATRIX), workers=1)
    labels = out / "cohort" / "labels.jsonl"
    generated = [{k: v for k, v in row.items() if k != "question_id"}
                 for row in cohort_questions(manifest.patients)]
    rows = [{**row, "repeat": OLD_REPEATS[row["question"]]} if row["question"] in OLD_REPEATS
            else row for row in generated]
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_vqa(folder_fetcher(out / "cohort"), labels, out / "vqa",
              deid=DeidConfig(project_key=DEMO_KEY, synthetic_only=True),
              views=ViewSpec(**OLD_VIEW, image_size=OLD_NANO_INPUT_PX),
              fractions=OLD_SPLIT, seed=seed, workers=1)
    return out / "vqa"


def old_finetune_config(model: str, vqa: Path, out: Path) -> FinetuneConfig:
    d = OLD_DEFAULTS
    rows = [json.loads(line) for line in (vqa / "train.jsonl").read_text().splitlines()]
    scans = len({tuple(row["image"]) for row in rows})
    steps = math.ceil(d["epochs"] * math.ceil(scans / d["batch_size"]))
    return FinetuneConfig(
        model=model, data=str(vqa / "train.jsonl"), eval_data=str(vqa / "val.jsonl"),
        output=out / "finetune", epochs=d["epochs"], learning_rate=d["learning_rate"],
        lora_r=d["lora_r"], lora_dropout=0.0, lora_targets=list(d["lora_targets"]),
        train_fully=list(d["train_fully"]), pack_questions=True,
        batch_size=d["batch_size"], warmup_ratio=0.05, seed=d["seed"],
        eval_every=max(1, steps // 6), cache_dir=out / "cache")


def records(vqa: Path) -> dict[str, list[dict]]:
    return {split: [json.loads(x) for x in (vqa / f"{split}.jsonl").read_text().splitlines()]
            for split in OLD_SPLIT}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_the_shipped_recipe_is_the_old_constants(tmp_path):
    """Built from the shipped YAML and from the old constants, at a small size: the same
    records (repeats and split included), images, build and fine-tuning config."""
    recipe = load_recipe()
    # What the small build below does not reach: the full size and the scoring settings.
    assert (recipe.model, recipe.cohort.patients, recipe.cohort.slices, recipe.seed) == (
        OLD_DEFAULTS["model"], OLD_DEFAULTS["patients"], OLD_DEFAULTS["slices"],
        OLD_DEFAULTS["seed"])
    assert recipe.nano_input_px == OLD_NANO_INPUT_PX
    assert recipe.evaluation.model_dump() == OLD_EVALUATION
    assert tuple(recipe.selection_seeds) == OLD_SELECTION_SEEDS

    small = recipe.model_copy(update={"cohort": recipe.cohort.model_copy(update=SMALL)})
    new = make_data(small, tmp_path / "new", recipe.nano_input_px, 1, Reporter(enabled=False))
    old = old_make_data(tmp_path / "old", SMALL["patients"], SMALL["slices"],
                        OLD_DEFAULTS["seed"])

    new_records, old_records = records(new), records(old)
    for row in (r for rows in new_records.values() for r in rows):
        assert row.pop("question_id") == QUESTION_IDS[row["question"]]
    assert new_records == old_records
    assert any(row.get("repeat") == 4 for row in old_records["train"])
    assert files(new) == files(old) and files(old)
    new_build, old_build = (json.loads((v / "build.json").read_text()) for v in (new, old))
    assert new_build.pop("kept_columns") == ["question_id"]
    old_build.pop("kept_columns")
    new_build.pop("output"), old_build.pop("output")
    assert new_build == old_build

    model = "runs/demo/base-model"
    assert (finetune_config(small, model, new, tmp_path).model_dump()
            == old_finetune_config(model, new, tmp_path).model_dump())


def run_cli(capsys, monkeypatch, *args) -> tuple[int, str]:
    """(exit code, stderr) of `domainvlm ARGS`, in this process."""
    monkeypatch.setattr(sys, "argv", ["domainvlm", *map(str, args)])
    monkeypatch.setattr(cli, "_DEBUG", False)
    with pytest.raises(SystemExit) as done:
        cli.main()
    return done.value.code, capsys.readouterr().err


def shipped() -> dict:
    return yaml.safe_load(DEFAULT_RECIPE.read_text())


def edited(change) -> dict:
    values = shipped()
    change(values)
    return values


# (how the shipped recipe is spoilt, flags, what the one error line must say)
BAD = [
    (lambda v: v["cohort"].update(patientz=10), [], r"`cohort\.patientz`: unknown key"),
    (lambda v: v["cohort"].update(slices="32"), [], r"`cohort\.slices`: .*integer.*'32'"),
    (lambda v: v["finetune"].update(learning_rate=math.inf), [],
     r"`finetune\.learning_rate`: .*finite"),
    (lambda v: v["split"].update(val=math.nan), [], r"`split\.val`: .*finite"),
    (lambda v: v["finetune"].update(learning_rate="1e-3"), [],
     r"`finetune\.learning_rate`: .*number.*'1e-3'"),
    (lambda v: v.pop("view"), [], r"`view`: Field required"),
    (lambda v: v.update(repeats={"Which side is the lung nodule on?": 4}), [],
     r"repeats: no question Which side.*lung-side"),
    (lambda v: v["split"].update(test=0.3), [], r"`split`: fractions must sum to 1"),
    (lambda v: v["finetune"].update(output="elsewhere"), [], r"`finetune\.output`: unknown"),
    (lambda v: v["finetune"].update(micro_batch_size=8), [],
     r"finetune: .*micro_batch_size.*cannot exceed"),
    (lambda v: v["view"].update(window="lung+nope"), [], r"`view`: .*nope"),
    (lambda v: None, ["--epochs", "inf"], r"`--epochs` must be a finite number above 0"),
]


@pytest.mark.parametrize(("spoil", "flags", "message"), BAD,
                         ids=[message for _, _, message in BAD])
def test_a_bad_recipe_is_one_error_naming_file_and_key(spoil, flags, message, tmp_path,
                                                       capsys, monkeypatch):
    import re

    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump(edited(spoil)))
    # A base model that is not there: were the recipe let through, the run would stop at
    # once, not build a cohort of 360 patients.
    code, err = run_cli(capsys, monkeypatch, "demo", "--config", config, "--output",
                        tmp_path / "out", "--model", tmp_path / "no-model", *flags)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    assert flags or str(config) in lines[0]
    assert not (tmp_path / "out").exists()


def test_flags_override_single_values_and_are_named_when_refused():
    from domainvlm.errors import ConfigError

    config = DEFAULT_RECIPE
    recipe = load_recipe(config, {"--patients": 12, "--seed": 3, "--epochs": 2.0,
                                  "--model": None})
    assert (recipe.cohort.patients, recipe.seed, recipe.finetune.epochs) == (12, 3, 2.0)
    assert recipe.model is None and recipe.finetune.learning_rate == 1e-3  # the file's
    with pytest.raises(ConfigError, match=r"`--patients`: .*greater than or equal to 10"):
        load_recipe(config, {"--patients": 3})


@pytest.mark.slow
def test_a_recipe_runs_end_to_end_through_the_cli(warm_domainvlm, tmp_path):
    """The shipped recipe shrunk (few slices, small views, one step) through `domainvlm demo
    --config`, with --patients over the file's value."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(edited(lambda v: (
        v.update(nano_input_px=128), v["cohort"].update(slices=8),
        v["finetune"].update(max_steps=1)))))
    out = tmp_path / "demo"
    done = subprocess.run(
        [warm_domainvlm, "demo", "--config", str(config),
         "--patients", "10", "--output", str(out), "--workers", "1"],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "finetune" / "run.json").read_text())["summary"]
    assert summary["steps"] == 1
    build = json.loads((out / "vqa" / "build.json").read_text())
    assert sum(build["patients"].values()) == 10
    train = [json.loads(x) for x in (out / "vqa" / "train.jsonl").read_text().splitlines()]
    assert {r.get("repeat", 1) for r in train if r["question_id"] == "lung-side"} == {4}
    assert {r.get("repeat", 1) for r in train if r["question_id"] != "lung-side"} == {1}
    report = (out / "report.md").read_text()
    assert "lung-side x4" in report and '"max_steps": 1' in report
    assert "held-out patients: base vs adapted" in done.stdout
    image = Image.open(out / "vqa" / train[0]["image"][0])
    assert image.size == (128, 128)

