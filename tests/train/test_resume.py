"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

STEPS = 40


def command(model, data, output, cache, *extra):
    return [sys.executable, "-m", "domainvlm.cli", "finetune", "--model", str(model),
            "--data", str(data), "--output", str(output), "--max-steps", str(STEPS),
            "--batch-size", "8", "--save-every", "5", "--learning-rate", "5e-3",
            "--lora-dropout", "0.1", "--cache-dir", str(cache), *extra]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tiny_models, shapes_data, tmp_path):
    model, data, cache = tiny_models("llava"), shapes_data["train"], tmp_path / "cache"
    env = {**os.environ, "DOMAINVLM_CACHE": str(cache)}
    straight = tmp_path / "straight"
    subprocess.run(command(model, data, straight, cache), check=True, env=env,
                   capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(command(model, data, killed, cache), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step-0000010").is_dir():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = json.loads((killed / "run.json").read_text())
    assert run["status"] == "running"  # killed mid-run, not after the end
    assert not (killed / "adapter").exists()

    # Without --resume the folder is refused; with it the run continues.
    refused = subprocess.run(command(model, data, killed, cache), env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run(command(model, data, killed, cache, "--resume"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step-" in resumed.stderr

    a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    history = json.loads((killed / "history.json").read_text())
    assert [r["step"] for r in history] == list(range(1, STEPS + 1))
