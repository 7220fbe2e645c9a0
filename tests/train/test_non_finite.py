"""Numbers that are not finite: refused as settings, and a run whose loss stops being finite
stops there, keeps its last good checkpoint and never publishes NaN weights."""

from __future__ import annotations

import json
import math
import subprocess
import typing

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from domainvlm.errors import ConfigError
from domainvlm.train.config import FinetuneConfig, build_config

# Written out by hand: a new float setting must join this table (and so the check below).
FLOAT_SETTINGS = {"lora_dropout": "--lora-dropout", "epochs": "--epochs",
                  "learning_rate": "--learning-rate", "weight_decay": "--weight-decay",
                  "warmup_ratio": "--warmup-ratio", "max_grad_norm": "--max-grad-norm",
                  "vision_cache_max_gb": "--vision-cache-max-gb"}


def test_the_table_holds_every_float_setting():
    floats = {name for name, field in FinetuneConfig.model_fields.items()
              if float in (field.annotation, *typing.get_args(field.annotation))}
    assert floats == set(FLOAT_SETTINGS)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("key", list(FLOAT_SETTINGS))
def test_a_setting_that_is_not_finite_is_refused_naming_its_flag(key, value):
    with pytest.raises(ConfigError) as caught:
        build_config({"model": "m", "data": "d.jsonl", "output": "o", key: value})
    assert f"`{FLOAT_SETTINGS[key]}` / `{key}`: Input should be a finite number" in \
        str(caught.value)


def test_a_diverging_run_stops_at_that_step_and_keeps_its_last_good_checkpoint(
        warm_domainvlm, tiny_models, shapes_data, tmp_path):
    model, output = tiny_models("llava"), tmp_path / "run"
    # LoRA B starts at zero, so step 1 is the base model's loss; Adam then moves B by about the
    # learning rate, and with 1e30 the second forward overflows.
    result = subprocess.run(
        [warm_domainvlm, "finetune", "--model", str(model), "--data",
         str(shapes_data["train"]), "--output", str(output), "--max-steps", "6",
         "--batch-size", "8", "--learning-rate", "1e30", "--save-every", "1",
         "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    checkpoint = output / "checkpoints" / "step-0000001"
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "diverged at step 2 of 6: loss nan" in errors[0]
    assert f"the last good checkpoint is {checkpoint}" in errors[0]
    assert "--learning-rate (now 1e+30)" in errors[0]

    run = json.loads((output / "run.json").read_text())
    assert run["status"] == "failed" and run["failed_step"] == 2
    assert run["error"] == errors[0].removeprefix("error: ")
    history = json.loads((output / "history.json").read_text())
    assert [r["step"] for r in history] == [1] and math.isfinite(history[0]["loss"])
    assert not (output / "adapter").exists(), "an adapter of NaNs was published"
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == [checkpoint.name]

    # The kept checkpoint holds finite weights, and they are what made step 2 diverge: plain
    # PEFT on the base with them gives logits that are not finite.
    weights = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    adapted = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(model),
                                        str(checkpoint)).eval()
    with torch.no_grad():
        logits = adapted(input_ids=torch.tensor([[1, 5, 9, 12]])).logits
    assert not torch.isfinite(logits).all()

    # The failed run is not taken for an interrupted one.
    again = subprocess.run([warm_domainvlm, "finetune", "--model",
                            str(model), "--data", str(shapes_data["train"]), "--output",
                            str(output), "--max-steps", "6", "--batch-size", "8",
                            "--learning-rate", "1e30", "--save-every", "1"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "holds a run of this config that failed" in again.stderr
