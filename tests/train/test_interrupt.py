"""Ctrl-C during fine-tuning: exit 130, run.json says interrupted, and the printed command
continues the run from its last checkpoint."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 30


@pytest.mark.slow
def test_ctrl_c_says_where_to_resume_and_the_printed_command_finishes_the_run(
        tiny_models, shapes_data, tmp_path):
    output = tmp_path / "run"
    command = [str(Path(sys.executable).with_name("domainvlm")), "finetune",
               "--model", str(tiny_models("llava")), "--data", str(shapes_data["train"]),
               "--output", str(output), "--max-steps", str(STEPS), "--batch-size", "8",
               "--save-every", "1", "--learning-rate", "5e-3",
               "--cache-dir", str(tmp_path / "cache")]
    # A terminal's Ctrl-C: SIGINT handled as usual, even when the suite itself was started in
    # the background, where the shell hands children SIGINT ignored.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 180
    while not (output / "checkpoints" / "step-0000002").is_dir():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr

    # What is on disk after it stopped, read independently of what it printed.
    done = sorted(p for p in (output / "checkpoints").glob("step-*")
                  if (p / "trainer_state.pt").is_file())
    last = done[-1]
    resumed_from = int(last.name.removeprefix("step-"))
    assert 2 <= resumed_from < STEPS
    run = json.loads((output / "run.json").read_text())
    assert run["status"] == "interrupted" and run["last_checkpoint"] == str(last)
    assert run["interrupted_after_step"] >= resumed_from
    assert not (output / "adapter").exists()
    assert f"last checkpoint: {last}" in stderr
    printed = re.search(r"^resume with: (.+)$", stderr, re.MULTILINE)
    assert printed, stderr
    resume = shlex.split(printed.group(1))
    assert resume[1:] == command[1:] + ["--resume"]
    assert Path(shutil.which(resume[0])).resolve() == Path(command[0]).resolve()

    finished = subprocess.run(resume, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert f"resuming from {last.name} (step {resumed_from} of {STEPS})" in finished.stderr
    assert json.loads((output / "run.json").read_text())["status"] == "finished"
    history = json.loads((output / "history.json").read_text())
    assert [r["step"] for r in history] == list(range(1, STEPS + 1))
    assert (output / "adapter" / "adapter_model.safetensors").is_file()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
