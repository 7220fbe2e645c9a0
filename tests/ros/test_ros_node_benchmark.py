"""benchmarks/ros_node.py --quick: the real node process over loopback DDS, every figure
reported; the node served every frame sent below its speed and processed no stale frame."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_reports_every_figure(tmp_path):
    output = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ros_node.py"), "--quick",
                           "--output", str(output)], capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert json.loads(output.read_text()) == result
    node = result["node"]
    assert node["exit_code_after_sigint"] == 0
    assert 0 < node["detections_received"] <= node["frames_sent"]
    assert result["stale"] == 0
    assert result["in_process"]["fps"] > 0 and node["fps"] > 0 and node["model_p50_ms"] > 0
    assert result["fps_ratio"] == pytest.approx(node["fps"] / result["in_process"]["fps"],
                                                abs=1e-2)
    assert set(result["goals"]) == {"fps_ratio", "added_latency_p50_ms", "stale"}
