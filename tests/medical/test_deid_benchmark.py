"""The de-identification benchmark runs end to end and reports every figure (not the speed
goal: timings on a shared CPU vary); our output must keep none of the identifying values the
cohort wrote, which the benchmark must find in the input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "deid_speed.py"
FRAMEWORK_FIGURES = {"seconds", "seconds_each", "ms_per_file", "identifying_values_left",
                     "files_with_identifying_values"}


def test_deid_benchmark_small(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--patients", "2", "--slices", "4", "--repeats", "2",
         "--workdir", str(tmp_path), "--output", str(tmp_path / "result.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert json.loads((tmp_path / "result.json").read_text()) == result

    assert result["files"] == 8 and result["patients"] == 2
    # 21 identifying values per slice (names, IDs, dates, addresses, nested and private ones)
    assert result["identifying_values_written"] == 8 * 21
    for name in ("domainvlm", "dicom_anonymizer"):
        figures = result[name]
        assert set(figures) == FRAMEWORK_FIGURES
        assert figures["seconds"] > 0 and len(figures["seconds_each"]) == 2
    ours = result["domainvlm"]
    assert ours["identifying_values_left"] == 0 and ours["files_with_identifying_values"] == 0
    assert result["time_ratio_domainvlm_to_dicom_anonymizer"] == round(
        ours["seconds"] / result["dicom_anonymizer"]["seconds"], 3)
    assert set(result["goal_met"]) == {"time_ratio_le_1", "domainvlm_leaves_nothing", "all"}
    assert result["goal_met"]["domainvlm_leaves_nothing"] is True
