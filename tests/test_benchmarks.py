"""The training benchmark runs end to end and reports every figure (not the goals: timings vary)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"
FRAMEWORK_FIGURES = ("samples_per_s", "samples_per_s_median_step", "end_to_end_s",
                     "end_to_end_samples_per_s", "peak_rss_mb", "peak_rss_mb_polled",
                     "answer_loss", "trainable_parameters")


@pytest.mark.slow
def test_train_throughput_quick(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    for name in ("domainvlm", "trl"):
        figures = result[name]
        assert set(FRAMEWORK_FIGURES) <= set(figures)
        assert all(figures[key] > 0 for key in FRAMEWORK_FIGURES), figures
    # Same LoRA on the same layers in both frameworks.
    assert result["domainvlm"]["trainable_parameters"] == result["trl"]["trainable_parameters"]
    assert result["base_answer_loss"] > 0
    for key in ("speedup", "speedup_median_step", "speedup_end_to_end", "rss_ratio"):
        assert result[key] > 0
    assert set(result["goal_met"]) == {"speedup_ge_1.5", "answer_loss_le_trl", "rss_not_higher",
                                       "all"}
    assert all(isinstance(flag, bool) for flag in result["goal_met"].values())
    config = result["config"]
    assert config["image_tokens"] == 64 and config["timed_steps"] == config["steps"] - 1
    assert len(set(config["torch_threads"].values())) == 1
    for name in ("domainvlm", "trl"):
        assert (tmp_path / f"{name}-0-run" / "adapter" / "adapter_model.safetensors").is_file()
