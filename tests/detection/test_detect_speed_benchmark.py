"""benchmarks/detect_speed.py --quick runs end to end and reports every figure for both frame
sizes (not the goal: timings vary), and the teacher it compares with is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_reports_both_sizes(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DOMAINVLM_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "detect_speed.py"),
                           "--quick"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["teacher"] == "nano-clip" and result["goal_ratio"] == 10.0
    assert set(result["sizes"]) == {"320x240", "640x480"}
    for figures in result["sizes"].values():
        assert figures["proposals_per_image"] > 0
        assert figures["teacher_crops_per_image"] == 2 * round(figures["proposals_per_image"])
        ratio = figures["teacher_ms_per_image"] / figures["student_ms_per_image"]
        assert abs(ratio - figures["ratio"]) <= 0.02 * ratio + 0.01
    assert result["prompt_change_ms"] > result["cached_prompts_ms"] >= 0
    assert isinstance(result["goal_met"], bool)
