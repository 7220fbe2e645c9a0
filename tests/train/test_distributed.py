"""Two processes under `accelerate launch` (gloo on CPU) take the same steps as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def finetune_args(model, data, output, cache, training) -> list[str]:
    return ["finetune", "--model", str(model), "--data", str(data), "--output", str(output),
            "--max-steps", "6", "--batch-size", "8", "--learning-rate", "5e-3",
            "--lora-dropout", "0", "--cache-dir", str(cache), *training]


# Whatever trains the vision tower leaves some trainable parameters without a gradient (LLaVA
# skips the last CLIP layer and CLIP's pooled head), by LoRA, by `--train-fully` or in full.
TRAINING = {
    "lora language": ["--lora-targets", "language"],
    "lora everywhere": ["--lora-targets", "language,vision,projector"],
    "lora + vision in full": ["--lora-targets", "language", "--train-fully", "vision"],
    "full": ["--method", "full", "--learning-rate", "1e-3"],
}


@pytest.mark.slow
@pytest.mark.parametrize("training", list(TRAINING.values()), ids=list(TRAINING))
def test_two_processes_match_one(tiny_models, shapes_data, tmp_path, training):
    model, data, cache = tiny_models("llava"), shapes_data["train"], tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "domainvlm.cli",
                             *finetune_args(model, data, one, cache, training)],
                            env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    # The launcher by module: a virtual environment need not have the `accelerate` script.
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
         "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", "29533", "-m", "domainvlm.cli",
         *finetune_args(model, data, two, cache, training)],
        env=env, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    summary = json.loads((two / "run.json").read_text())["summary"]
    assert summary["world_size"] == 2
    losses_one = [r["loss"] for r in json.loads((one / "history.json").read_text())]
    losses_two = [r["loss"] for r in json.loads((two / "history.json").read_text())]
    # Tolerance: float32 sums reduced in a different order across processes.
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
    assert len(losses_one) == 6 and losses_one[-1] < losses_one[0]
