#!/usr/bin/env python
"""De-identification of a CT cohort: domainvlm against dicom-anonymizer, same data sets.

A synthetic cohort (`domainvlm.medical.cohort`: made-up names, IDs, addresses, dates, staff,
nested sequences and a private block holding the patient's name, as a hospital export has) is
written once and read into memory. Then, in one process and alternating which goes first,
each framework de-identifies every slice:

- domainvlm: `domainvlm.medical.deid.deidentify(ds, DeidConfig(project_key=...))`: the PS3.15
  Basic Profile table of dicom-anonymizer on every nested item, keyed UIDs, shifted dates and
  a final sweep; only the table's rules for tags present run;
- dicom-anonymizer: `anonymize_dataset(copy.deepcopy(ds), None, delete_private_tags=True)`,
  its own default Basic Profile table on the top level (the copy, as ours makes one too).

Each output is then searched, every element of every nested item and private block, for the
patient's identifying values as written. One JSON object goes to stdout; see
benchmarks/README.md for what each figure means.

    .venv/bin/python benchmarks/deid_speed.py                          # 8 x 32 slices: ~15 s
    .venv/bin/python benchmarks/deid_speed.py --patients 2 --slices 4  # smoke test: seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FRAMEWORKS = ("domainvlm", "dicom_anonymizer")
PROJECT_KEY = "deid-benchmark-Rk3Wq8Zm2Lx7Nv4Tb9Hd"
GOAL_RATIO = 1.0  # ours, doing more, no slower than the library's plain top-level pass
# What the cohort writes that identifies the patient, the visit or the staff: none of it may
# survive (the kin's name is inside PatientComments, the name again in the private block).
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "PatientAddress",
               "PatientTelephoneNumbers", "PatientComments", "AccessionNumber", "StudyID",
               "StudyDate", "InstitutionName", "InstitutionAddress", "DeviceSerialNumber",
               "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName")
NESTED_IDENTIFYING = {"OtherPatientIDsSequence": ("PatientID",),
                      "RequestAttributesSequence": ("RequestedProcedureID",
                                                    "ScheduledProcedureStepID",
                                                    "ScheduledPerformingPhysicianName")}
TIMING = ("seconds: median over the repeats of the wall time to de-identify every slice of the "
          "cohort in memory (files read beforehand). One untimed warm-up pass per framework "
          "first; repeats alternate which framework goes first.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=8, help="patients in the cohort")
    parser.add_argument("--slices", type=int, default=32, help="slices per patient")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed passes per framework; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the written cohort here")
    parser.add_argument("--output", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.patients < 1:
        parser.error("--repeats and --patients must be at least 1")
    if args.slices < 4:
        parser.error("need --slices >= 4 (the phantom's smallest patient)")
    return args


def identifying_values(seed: int, index: int) -> set[str]:
    """The identifying strings the cohort wrote for patient `index` (as `write_patient` draws
    them), with the name also as the private block spells it."""
    import numpy as np

    from domainvlm.medical.cohort import fake_phi

    phi = fake_phi(np.random.default_rng([seed, index, 1]), index)
    values = {str(phi[k]) for k in IDENTIFYING}
    for sequence, keywords in NESTED_IDENTIFYING.items():
        values |= {str(getattr(item, k)) for item in phi[sequence] for k in keywords}
    values.add(str(phi["PatientName"]).replace("^", " "))
    kin = str(phi["PatientComments"]).removeprefix("Next of kin: ")
    return values | {kin}


def text_values(ds: Any) -> list[str]:
    """The string form of every element value, nested items and private tags included."""
    found = []
    for element in ds.iterall():
        if element.VR != "SQ" and not isinstance(element.value, bytes | bytearray):
            found.append(str(element.value))
    return found


def leaks(output: Any, values: set[str]) -> int:
    """How many of `values` still appear in some element of `output`."""
    texts = text_values(output)
    return sum(any(value in text for text in texts) for value in values)


def deid_domainvlm(ds: Any) -> Any:
    from domainvlm.medical.deid import DeidConfig, deidentify

    return deidentify(ds, DeidConfig(project_key=PROJECT_KEY))


def deid_dicom_anonymizer(ds: Any) -> Any:
    from dicomanonymizer.simpledicomanonymizer import anonymize_dataset

    out = copy.deepcopy(ds)
    anonymize_dataset(out, None, delete_private_tags=True)
    return out


DEIDENTIFIERS = {"domainvlm": deid_domainvlm, "dicom_anonymizer": deid_dicom_anonymizer}


def timed_pass(name: str, datasets: list[Any]) -> tuple[float, list[Any]]:
    deid = DEIDENTIFIERS[name]
    start = time.perf_counter()
    outputs = [deid(ds) for ds in datasets]
    return time.perf_counter() - start, outputs


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import pydicom

    from domainvlm.medical.cohort import write_cohort

    cohort = workdir / "cohort"
    shutil.rmtree(cohort, ignore_errors=True)
    write_cohort(cohort, args.patients, seed=args.seed, shape=(args.slices, 64, 64))
    datasets, owners = [], []
    for index in range(args.patients):
        for path in sorted((cohort / f"patient-{index:04d}").rglob("*.dcm")):
            datasets.append(pydicom.dcmread(path))
            owners.append(index)
    values = {index: identifying_values(args.seed, index) for index in range(args.patients)}
    before = sum(leaks(ds, values[i]) for ds, i in zip(datasets, owners, strict=True))

    seconds: dict[str, list[float]] = {name: [] for name in FRAMEWORKS}
    outputs: dict[str, list[Any]] = {}
    for name in FRAMEWORKS:  # warm-up: imports, the table, caches
        _, outputs[name] = timed_pass(name, datasets)
    for repeat in range(args.repeats):
        order = FRAMEWORKS if repeat % 2 == 0 else FRAMEWORKS[::-1]
        for name in order:
            elapsed, _ = timed_pass(name, datasets)
            seconds[name].append(round(elapsed, 4))

    result: dict[str, Any] = {"files": len(datasets), "patients": args.patients,
                              "identifying_values_written": before}
    for name in FRAMEWORKS:
        median = statistics.median(seconds[name])
        left = [leaks(out, values[i]) for out, i in zip(outputs[name], owners, strict=True)]
        result[name] = {"seconds": round(median, 4), "seconds_each": seconds[name],
                        "ms_per_file": round(1000 * median / len(datasets), 3),
                        "identifying_values_left": sum(left),
                        "files_with_identifying_values": sum(n > 0 for n in left)}
    ratio = result["domainvlm"]["seconds"] / result["dicom_anonymizer"]["seconds"]
    result["time_ratio_domainvlm_to_dicom_anonymizer"] = round(ratio, 3)
    result["goal_met"] = {
        f"time_ratio_le_{GOAL_RATIO:g}": ratio <= GOAL_RATIO,
        "domainvlm_leaves_nothing": result["domainvlm"]["identifying_values_left"] == 0}
    result["goal_met"]["all"] = all(result["goal_met"].values())
    result["timing"] = TIMING
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="deid-bench-") as work:
            result = run(args, Path(work))
    text = json.dumps(result, indent=2)
    if args.output:
        from domainvlm.atomic import write_bytes

        write_bytes(args.output, (text + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
