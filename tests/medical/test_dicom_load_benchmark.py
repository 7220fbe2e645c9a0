"""The DICOM loading benchmark runs end to end and reports every figure (not the speed goal:
timings on a shared CPU vary); our slice order must match the written geometry."""

from __future__ import annotations

from pathlib import Path

import pydicom

FRAMEWORK_FIGURES = {"seconds", "seconds_each", "order_correct", "slices_in_place",
                     "shape_zyx", "max_abs_error"}


def test_dicom_load_small(tmp_path: Path, run_benchmark) -> None:
    result = run_benchmark("dicom_load.py", "--slices", "12", "--size", "32", "--repeats", "2")

    for name in ("domainvlm", "monai"):
        figures = result[name]
        assert set(figures) == FRAMEWORK_FIGURES
        assert figures["seconds"] > 0 and len(figures["seconds_each"]) == 2
        assert figures["shape_zyx"] == [12, 32, 32]
        assert isinstance(figures["order_correct"], bool)
    ours = result["domainvlm"]
    assert ours["order_correct"] and ours["slices_in_place"] == 12
    assert ours["max_abs_error"] == 0.0  # the DICOM window of the exact HU, slice for slice
    monai = result["monai"]
    assert monai["order_correct"] == (monai["slices_in_place"] == 12)
    assert result["speedup"] == round(result["monai"]["seconds"] / ours["seconds"], 3)
    assert set(result["goal_met"]) == {"speedup_ge_1.5", "order_correct", "all"}
    assert result["goal_met"]["order_correct"] is True
    config = result["config"]
    assert (config["slices"], config["size"], config["repeats"]) == (12, 32, 2)
    assert config["instance_numbers"] == "shuffled against slice position"
    # The series was written once with InstanceNumbers and file names both out of order, so
    # neither sorting by number nor listing the folder gives the slice order.
    headers = [pydicom.dcmread(p, stop_before_pixels=True)
               for p in sorted((tmp_path / "series").glob("*.dcm"))]
    heights = [float(ds.ImagePositionPatient[2]) for ds in headers]
    by_number = [h for _, h in sorted(zip((int(ds.InstanceNumber) for ds in headers), heights,
                                          strict=True))]
    assert len(heights) == 12
    assert heights != sorted(heights) and by_number != sorted(heights)
