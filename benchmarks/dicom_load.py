#!/usr/bin/env python
"""DICOM series to a windowed float volume: domainvlm against MONAI's LoadImage and the floor.

One synthetic CT series (the phantom of `domainvlm.medical.phantom`, 200 slices of 512x512 by
default) is written once with InstanceNumbers shuffled against slice position and file names
shuffled against both, as PACS exports and anonymisers leave them. Then, in one process and
alternating which goes first, each framework turns the folder into a float32 volume in [0, 1]
through the soft-tissue window:

- domainvlm: `domainvlm.medical.series.load_volume(folder)` + `views.windowed_volume`;
- MONAI: `LoadImage(reader="PydicomReader", image_only=True)(folder)` +
  `ScaleIntensityRange(a_min, a_max, 0, 1, clip=True)`;
- floor: a bare pydicom loop that reads every file, sorts by ImagePositionPatient along the
  slice normal, rescales and windows (the DICOM linear VOI, as domainvlm), with no checks:
  the least work that gives the same volume, which it must equal exactly.

Each output's slice order is checked against the geometry that was written. One JSON object
goes to stdout; see benchmarks/README.md for what each figure means.

    .venv/bin/python benchmarks/dicom_load.py                         # 200 x 512 x 512: ~1 min
    .venv/bin/python benchmarks/dicom_load.py --slices 16 --size 64   # smoke test: seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FRAMEWORKS = ("domainvlm", "monai", "floor")
WINDOW = (40.0, 400.0)  # soft tissue (center, width) in HU, also written into the tags
GOAL_SPEEDUP = 1.5
SIGNATURE_PIXELS = 4096  # pixels per slice that identify it when matching slices to the truth
TIMING = ("seconds: median over the repeats of the wall time from the folder path to the "
          "windowed float32 volume in memory (file reads, decoding, rescale to HU, slice "
          "ordering, windowing). One untimed warm-up run per framework first (imports, page "
          "cache); repeats alternate which framework goes first.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200, help="slices in the series")
    parser.add_argument("--size", type=int, default=512, help="rows and columns per slice")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed loads per framework; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the written series here")
    parser.add_argument("--output", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.slices < 4 or args.size < 16:
        parser.error("need --slices >= 4 and --size >= 16 (the phantom's smallest patient)")
    return args


def write_series(folder: Path, slices: int, size: int, seed: int) -> Any:
    """The phantom as a CT series with lying InstanceNumbers and shuffled file names.

    Returns the HU volume (z, y, x) in true slice order: the truth both loaders are held to.
    """
    import numpy as np

    from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series
    from domainvlm.medical.phantom import make_patient

    hu, truth = make_patient(seed, shape=(slices, size, size), n_lesions=0)
    rng = np.random.default_rng(seed)
    numbers = [int(n) for n in rng.permutation(slices) + 1]  # InstanceNumber says nothing
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    spec = SeriesSpec(study_uid=f"2.25.{seed + 1}", series_uid=f"2.25.{seed + 1}.1",
                      spacing=truth.spacing, origin=truth.origin, window=WINDOW,
                      instance_numbers=numbers)
    paths = write_ct_series(hu, staging / "written", spec)
    names = rng.permutation(slices)  # folder listing order says nothing either
    for path, name in zip(paths, names, strict=True):
        path.rename(staging / f"IM{name * 7919 % 100003:06d}.dcm")
    (staging / "written").rmdir()
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return hu


def load_domainvlm(folder: Path) -> Any:
    """(z, y, x) float32 in [0, 1]."""
    from domainvlm.medical.series import load_volume
    from domainvlm.medical.views import windowed_volume

    return windowed_volume(load_volume(folder), WINDOW)


def load_monai(folder: Path) -> Any:
    """MONAI's (x, y, z) output, transposed (a view, no copy) to (z, y, x) to compare."""
    import numpy as np
    from monai.transforms import LoadImage, ScaleIntensityRange

    center, width = WINDOW
    image = LoadImage(reader="PydicomReader", image_only=True)(str(folder))
    scaled = ScaleIntensityRange(a_min=center - width / 2, a_max=center + width / 2,
                                 b_min=0.0, b_max=1.0, clip=True)(image)
    return np.asarray(scaled).transpose(2, 1, 0)


def load_floor(folder: Path) -> Any:
    """(z, y, x) float32 in [0, 1]: read, sort by position, rescale, window; nothing else."""
    import numpy as np
    import pydicom

    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    cosines = np.array(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(cosines[:3], cosines[3:])
    datasets.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), normal)))
    center, width = WINDOW
    out = np.empty((len(datasets), datasets[0].Rows, datasets[0].Columns), np.float32)
    for k, ds in enumerate(datasets):
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        out[k] = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return out


LOADERS = {"domainvlm": load_domainvlm, "monai": load_monai, "floor": load_floor}


def signatures(volume: Any, pixels: Any) -> Any:
    """(slices, n) z-scored values at fixed pixels: matching them matches slices."""
    import numpy as np

    z, rows, cols = volume.shape
    flat = volume.reshape(z, rows * cols)[:, pixels].astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(flat.std(axis=1, keepdims=True), 1e-9)


def check_order(output: Any, truth_signatures: Any, pixels: Any) -> dict[str, Any]:
    """Which written slice each output slice is (best correlation); in order if k -> k."""
    import numpy as np

    if output.shape[0] != truth_signatures.shape[0]:
        return {"order_correct": False, "slices_in_place": 0,
                "shape_zyx": list(output.shape)}
    matched = np.argmax(signatures(output, pixels) @ truth_signatures.T, axis=1)
    in_place = int(np.sum(matched == np.arange(len(matched))))
    return {"order_correct": in_place == len(matched), "slices_in_place": in_place,
            "shape_zyx": list(output.shape)}


def window_error(output: Any, hu: Any, framework: str) -> float:
    """Largest difference from the truth windowed by the framework's own formula, same index.

    The window formulas differ slightly (DICOM's linear VOI for domainvlm and the floor, a
    plain linear ramp for MONAI), so each is held to its own; a misordered slice shows up as a
    large error.
    """
    import numpy as np

    from domainvlm.medical.render import apply_window

    center, width = WINDOW
    worst = 0.0
    for k in range(min(len(output), len(hu))):
        if framework in ("domainvlm", "floor"):
            expected = apply_window(hu[k], center, width)
        else:
            expected = np.clip((hu[k] - (center - width / 2)) / width, 0.0, 1.0)
        worst = max(worst, float(np.max(np.abs(output[k] - expected))))
    return round(worst, 6)


def same_volume(floor: Any, ours: Any) -> dict[str, Any]:
    """Whether the floor produced exactly domainvlm's volume: the comparison is fair only then."""
    import numpy as np

    if floor.shape != ours.shape:
        return {"equals_domainvlm": False, "max_abs_difference_from_domainvlm": None}
    return {"equals_domainvlm": bool(np.array_equal(floor, ours)),
            "max_abs_difference_from_domainvlm": float(np.max(np.abs(floor - ours)))}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("pydicom", "monai", "numpy", "torch")}


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    args = parse_args(argv)
    started = time.perf_counter()
    keep = args.workdir is not None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="dvlm-dicom-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    folder = workdir / "series"
    try:
        hu = write_series(folder, args.slices, args.size, args.seed)
        rng = np.random.default_rng(args.seed)
        pixels = rng.choice(args.size * args.size,
                            size=min(SIGNATURE_PIXELS, args.size * args.size), replace=False)
        truth = signatures(hu, pixels)
        times: dict[str, list[float]] = {name: [] for name in FRAMEWORKS}
        checks: dict[str, dict[str, Any]] = {}
        ours = None
        for name in FRAMEWORKS:  # warm-up: imports, page cache; its output is what is checked
            output = LOADERS[name](folder)
            checks[name] = {**check_order(output, truth, pixels),
                            "max_abs_error": window_error(output, hu, name)}
            if name == "domainvlm":
                ours = output
            elif name == "floor":
                checks[name].update(same_volume(output, ours))
            del output
        del ours
        for repeat in range(args.repeats):  # A B, B A, ...
            for name in FRAMEWORKS[:: 1 if repeat % 2 == 0 else -1]:
                gc.collect()
                start = time.perf_counter()
                output = LOADERS[name](folder)
                times[name].append(time.perf_counter() - start)
                del output
        result = summarise(args, times, checks, time.perf_counter() - started)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


def summarise(args: argparse.Namespace, times: dict[str, list[float]],
              checks: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "dicom_load",
        "config": {
            "series": f"synthetic CT phantom, {args.slices} slices of {args.size}x{args.size}, "
                      "uint16 with RescaleIntercept -1024, Explicit VR Little Endian",
            "slices": args.slices,
            "size": args.size,
            "instance_numbers": "shuffled against slice position",
            "file_names": "shuffled against slice position",
            "window": {"center": WINDOW[0], "width": WINDOW[1]},
            "repeats": args.repeats,
            "seed": args.seed,
            "versions": versions(),
            "timing": TIMING,
        },
    }
    for name in FRAMEWORKS:
        out[name] = {"seconds": round(statistics.median(times[name]), 4),
                     "seconds_each": [round(t, 4) for t in times[name]], **checks[name]}
    out["speedup"] = round(out["monai"]["seconds"] / out["domainvlm"]["seconds"], 3)
    out["ratio_to_floor"] = {name: round(out[name]["seconds"] / out["floor"]["seconds"], 3)
                             for name in ("domainvlm", "monai")}
    goals = {f"speedup_ge_{GOAL_SPEEDUP}": out["speedup"] >= GOAL_SPEEDUP,
             "order_correct": out["domainvlm"]["order_correct"],
             "floor_equals_domainvlm": out["floor"]["equals_domainvlm"]}
    out["goal_met"] = {**goals, "all": all(goals.values())}
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["wall_s"] = round(wall, 1)
    return out


if __name__ == "__main__":
    sys.exit(main())
