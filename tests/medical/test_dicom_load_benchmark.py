"""The DICOM loading benchmark runs end to end and reports every figure (not the speed goal:
timings on a shared CPU vary); our slice order must match the written geometry, and the floor
(a bare pydicom loop) must produce exactly our volume, or its time is no floor for ours."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pydicom

from domainvlm.medical.series import load_volume
from domainvlm.medical.views import windowed_volume

FRAMEWORK_FIGURES = {"seconds", "seconds_each", "order_correct", "slices_in_place",
                     "shape_zyx", "max_abs_error"}
FLOOR_FIGURES = {"equals_domainvlm", "max_abs_difference_from_domainvlm"}
BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "dicom_load.py"


def test_dicom_load_small(tmp_path: Path, run_benchmark) -> None:
    result = run_benchmark("dicom_load.py", "--slices", "12", "--size", "32", "--repeats", "2")

    for name in ("domainvlm", "monai", "floor"):
        figures = result[name]
        assert set(figures) == FRAMEWORK_FIGURES | (FLOOR_FIGURES if name == "floor" else set())
        assert figures["seconds"] > 0 and len(figures["seconds_each"]) == 2
        assert figures["shape_zyx"] == [12, 32, 32]
        assert isinstance(figures["order_correct"], bool)
    ours = result["domainvlm"]
    assert ours["order_correct"] and ours["slices_in_place"] == 12
    assert ours["max_abs_error"] == 0.0  # the DICOM window of the exact HU, slice for slice
    monai = result["monai"]
    assert monai["order_correct"] == (monai["slices_in_place"] == 12)
    assert result["speedup"] == round(result["monai"]["seconds"] / ours["seconds"], 3)
    floor = result["floor"]
    assert floor["order_correct"] and floor["max_abs_error"] == 0.0
    assert floor["equals_domainvlm"] is True and floor["max_abs_difference_from_domainvlm"] == 0
    assert result["ratio_to_floor"] == {
        name: round(result[name]["seconds"] / floor["seconds"], 3) for name in ("domainvlm",
                                                                               "monai")}
    assert set(result["goal_met"]) == {"speedup_ge_1.5", "order_correct",
                                       "floor_equals_domainvlm", "all"}
    assert result["goal_met"]["order_correct"] is True
    assert result["goal_met"]["floor_equals_domainvlm"] is True
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


def test_floor_equals_our_volume_on_any_series(tmp_path: Path) -> None:
    """The floor, called on its own, against load_volume + windowed_volume: a series with
    negative HU, a slope of 2 and the slice normal pointing to the feet, files shuffled."""
    spec = importlib.util.spec_from_file_location("dicom_load", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series

    hu = np.random.default_rng(0).integers(-1000, 1500, (7, 12, 10)).astype(np.float32)
    paths = write_ct_series(hu, tmp_path / "written", SeriesSpec(
        study_uid="2.25.5", series_uid="2.25.5.1", orientation=(1, 0, 0, 0, -1, 0),
        instance_numbers=[3, 7, 1, 5, 2, 6, 4]))
    folder = tmp_path / "series"
    folder.mkdir()
    for path, name in zip(paths, [5, 0, 6, 2, 4, 1, 3], strict=True):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1024 - 1000  # HU = 2 * stored - 2024
        ds.save_as(folder / f"{name}.dcm")

    floor = bench.load_floor(folder)
    ours = windowed_volume(load_volume(folder), bench.WINDOW)
    assert floor.dtype == ours.dtype == np.float32
    assert np.array_equal(floor, ours)
