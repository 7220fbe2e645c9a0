"""Every shipped fine-tuning config loads, validates and trains a step, so configs never rot.

A config names a hub model; the step runs on a tiny local model of the same family, on tiny
shapes data, with `max_steps: 1`, everything else as the file says. (The demo's recipe,
domainvlm/medical/recipes/, is run by tests/medical/test_demo_recipe.py.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from domainvlm.train.config import build_config, load_yaml
from domainvlm.train.loop import finetune

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
# Config -> (the hub model it names, the tiny family that stands in for it).
STAND_INS = {"dora-vision.yaml": ("llava-hf/llava-1.5-7b-hf", "llava"),
             "qwen-qlora.yaml": ("Qwen/Qwen2-VL-2B-Instruct", "qwen2-vl")}


def test_every_shipped_config_has_a_stand_in():
    assert {path.name for path in CONFIGS} == set(STAND_INS)


def qlora_runs_here() -> bool:
    """4-bit base weights need bitsandbytes and a CUDA GPU (domainvlm.loading)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_trains_a_step(path, tiny_models, shapes_data, tmp_path):
    values = load_yaml(path)
    hub_model, family = STAND_INS[path.name]
    assert values["model"] == hub_model
    config = build_config(values, source=str(path))  # as shipped, hub id and all
    values.update(model=str(tiny_models(family)), data=str(shapes_data["train"]),
                  output=tmp_path / "run", cache_dir=tmp_path / "cache", max_steps=1)
    if values["method"] == "qlora" and not qlora_runs_here():
        # Without CUDA + bitsandbytes QLoRA is refused (tests/train/test_loop.py); LoRA is
        # the same adapter on unquantised weights, so the rest of the file still runs.
        values["method"] = "lora"
    result = finetune(build_config(values, source=str(path)))
    summary = json.loads((result.output / "run.json").read_text())["summary"]
    assert summary["steps"] == 1 and math.isfinite(summary["final_loss"])
    adapter = json.loads((result.adapter / "adapter_config.json").read_text())
    assert adapter["r"] == config.lora_r
    assert adapter["use_dora"] == (config.method == "dora")
