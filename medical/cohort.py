"""The synthetic CT cohort: phantom patients written as real DICOM CT series, with ground truth.

It is the offline data set of the tests and the demo. Every patient carries made-up but
realistic-looking PHI (names, IDs, dates, addresses, a nested sequence with a person name,
a private tag block) so that de-identification has real work to do. Deterministic by seed:
the same seed gives identical bytes, and patient `i` does not depend on how many are written.

Layout: `folder/cohort.json` (parameters), `folder/ground_truth.jsonl` (one patient a line),
`folder/patient-0007/0000.dcm ...` (one series per patient, slice 0 most inferior).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domainvlm.atomic import new_folder
from domainvlm.medical.keys import SYNTHETIC_MARK
from domainvlm.medical.phantom import (
    DEFAULT_SHAPE,
    LARGE_ABOVE_MM,
    LESION_HU,
    SMALL_BELOW_MM,
    PatientTruth,
    default_spacing,
    make_patient,
)
from domainvlm.parallel import map_in_order

GROUND_TRUTH = "ground_truth.jsonl"
COHORT_INFO = "cohort.json"
FORMAT_VERSION = 1
PRIVATE_GROUP, PRIVATE_CREATOR = 0x0011, "DOMAINVLM SYNTH"
_UID_NAMESPACE = "domainvlm synthetic ct"

# Made-up names and places; any resemblance to real people is chance.
_FIRST = ("Miranda", "Tobias", "Elena", "Rafael", "Ingrid", "Kwame", "Suki", "Dmitri", "Aoife",
          "Bartholomew", "Lucinda", "Oswin", "Priya", "Henrik", "Marisol", "Cyrus", "Odalys",
          "Fenwick", "Yusra", "Leopold", "Imelda", "Caspian", "Noor", "Theodora")
_LAST = ("Hartwell", "Quillfeather", "Oyelaran", "Vasquez-Brandt", "Lindqvist", "Abernathy",
         "Castellanos", "Pemberton", "Nakashima", "Okonkwo", "Thistlewood", "Ravensworth",
         "Delacroix", "Haverford", "Mbeki-Stone", "Featherstonehaugh", "Grimaldi", "Ashdown",
         "Kowalczyk", "Bellweather", "Sandoval", "Whitcombe", "Ferreira", "Tamberlane")
_HOSPITALS = (("St. Aldric General Hospital", "14 Marrow Lane, Eastbrook, EB4 7QT"),
              ("Northfield Royal Infirmary", "220 Cinder Road, Northfield, NF2 9LP"),
              ("Bayview Memorial Medical Centre", "5 Harbour Crescent, Port Elwin, PE1 3DS"))
_STREETS = ("Juniper Close", "Wexford Avenue", "Larkspur Row", "Hollin Street", "Ostler Way")


@dataclass
class CohortPatient:
    """One written patient: its pseudo-id, the UIDs as written (before any de-identification),
    the series folder relative to the cohort folder, and its ground truth."""

    pseudo_id: str
    study_uid: str
    series_uid: str
    series_folder: str
    truth: PatientTruth

    def to_json(self) -> dict:
        return {"pseudo_id": self.pseudo_id, "study_uid": self.study_uid,
                "series_uid": self.series_uid, "series_folder": self.series_folder,
                **self.truth.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> CohortPatient:
        names = ("pseudo_id", "study_uid", "series_uid", "series_folder")
        return cls(**{k: data[k] for k in names},
                   truth=PatientTruth.from_json({k: v for k, v in data.items() if k not in names}))


@dataclass
class CohortManifest:
    folder: Path
    seed: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    patients: list[CohortPatient] = field(default_factory=list)


def study_uids(seed: int, index: int) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of patient `index`, fixed by seed."""
    from pydicom.uid import generate_uid

    base = [_UID_NAMESPACE, str(seed), str(index)]
    return (generate_uid(entropy_srcs=[*base, "study"]),
            generate_uid(entropy_srcs=[*base, "series"]))


def fake_phi(rng: np.random.Generator, index: int) -> dict:
    """Made-up patient, visit and staff attributes (pydicom keyword -> value) for one patient."""
    from pydicom.dataset import Dataset

    def person() -> str:
        return f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}^{chr(65 + int(rng.integers(26)))}"

    study = dt.date(2018, 1, 1) + dt.timedelta(days=int(rng.integers(0, 7 * 365)))
    age_years = int(rng.integers(25, 86))
    birth = study - dt.timedelta(days=age_years * 365 + int(rng.integers(0, 365)))
    time = f"{int(rng.integers(7, 19)):02d}{int(rng.integers(60)):02d}{int(rng.integers(60)):02d}"
    hospital, hospital_address = _HOSPITALS[int(rng.integers(len(_HOSPITALS)))]
    patient_id = f"MRN{int(rng.integers(10**6, 10**7))}"
    name = person()
    other_id = Dataset()
    other_id.PatientID = f"OLD{int(rng.integers(10**5, 10**6))}"
    other_id.IssuerOfPatientID = "LEGACY RIS"
    other_id.TypeOfPatientID = "TEXT"
    request = Dataset()
    request.RequestedProcedureID = f"RP{int(rng.integers(10**5, 10**6))}"
    request.ScheduledProcedureStepID = f"SPS{int(rng.integers(10**5, 10**6))}"
    request.RequestedProcedureDescription = "CT CHEST ABDOMEN WITH CONTRAST"
    request.ScheduledPerformingPhysicianName = person()
    day = study.strftime("%Y%m%d")
    return {
        "PatientName": name, "PatientID": patient_id, "IssuerOfPatientID": "SYNTH HOSPITAL",
        "OtherPatientIDsSequence": [other_id],
        "PatientBirthDate": birth.strftime("%Y%m%d"), "PatientSex": str(rng.choice(["F", "M"])),
        "PatientAge": f"{age_years:03d}Y",
        "PatientAddress": f"{int(rng.integers(1, 200))} {rng.choice(_STREETS)}, Eastbrook",
        "PatientTelephoneNumbers": f"0{int(rng.integers(10**9, 10**10))}",
        "PatientComments": f"Next of kin: {person().replace('^', ' ')}",
        "StudyDate": day, "SeriesDate": day, "AcquisitionDate": day, "ContentDate": day,
        "StudyTime": time, "SeriesTime": time, "AcquisitionTime": time, "ContentTime": time,
        "AccessionNumber": f"ACC{int(rng.integers(10**7, 10**8))}",
        "StudyID": f"S{int(rng.integers(10**4, 10**5))}",
        "StudyDescription": "CT CHEST ABDOMEN", "InstitutionName": hospital,
        "InstitutionAddress": hospital_address, "StationName": f"CTSCAN{index % 3 + 1:02d}",
        "DeviceSerialNumber": f"SN-{int(rng.integers(10**5, 10**6))}",
        "ReferringPhysicianName": person(), "PerformingPhysicianName": person(),
        "OperatorsName": person(), "RequestAttributesSequence": [request],
        **SYNTHETIC_MARK,  # lets the demo's published key de-identify these, and only these
        # Two presets, as scanners write them: soft tissue first, then lung.
        "WindowCenter": [40.0, -600.0], "WindowWidth": [400.0, 1500.0],
        "WindowCenterWidthExplanation": ["SOFT TISSUE", "LUNG"],
    }


def write_patient(folder: Path, seed: int, index: int,
                  shape: tuple[int, int, int] = DEFAULT_SHAPE,
                  spacing: tuple[float, float, float] | None = None) -> CohortPatient:
    """Write patient `index` of the cohort `seed` as one CT series under `folder`."""
    from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series

    hu, truth = make_patient(np.random.default_rng([seed, index, 0]), shape, spacing)
    phi = fake_phi(np.random.default_rng([seed, index, 1]), index)
    study_uid, series_uid = study_uids(seed, index)
    pseudo_id = f"synth-{index:04d}"
    spec = SeriesSpec(study_uid=study_uid, series_uid=series_uid, spacing=truth.spacing,
                      origin=truth.origin, description="CT CHEST ABDOMEN AXIAL",
                      attributes=phi, private=_private_phi(phi["PatientName"], phi["PatientID"]))
    series_folder = f"patient-{index:04d}"
    write_ct_series(hu, Path(folder) / series_folder, spec)
    return CohortPatient(pseudo_id, study_uid, series_uid, series_folder, truth)


def _private_phi(name: str, patient_id: str) -> dict:
    """A vendor-style private block holding PHI, which de-identification must remove."""
    return {(PRIVATE_GROUP, PRIVATE_CREATOR): [(0x01, "LO", name.replace("^", " ")),
                                               (0x02, "LO", patient_id)]}


def write_cohort(folder: Path, n_patients: int, seed: int = 0,
                 shape: tuple[int, int, int] = DEFAULT_SHAPE,
                 spacing: tuple[float, float, float] | None = None,
                 progress: Callable[[int], None] | None = None,
                 workers: int = 1) -> CohortManifest:
    """Write `n_patients` patients into a new `folder` (absent or empty), atomically.

    Everything is written to a hidden sibling folder that is renamed to `folder` at the end,
    so a crash leaves no half cohort. `progress(1)` is called after each patient. `workers`
    processes write patients side by side; the bytes are the same for any number.
    """
    folder = Path(folder)
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in (spacing or default_spacing(shape)))
    with new_folder(folder) as partial:
        calls = ((partial, seed, index, shape, spacing) for index in range(n_patients))
        patients = list(map_in_order(write_patient, calls, workers, progress))
        info = {"format_version": FORMAT_VERSION, "generator": "domainvlm.medical.cohort",
                "seed": seed, "n_patients": n_patients, "shape": list(shape),
                "spacing": list(spacing), "lesion_hu": LESION_HU,
                "size_classes_mm": {"small": f"< {SMALL_BELOW_MM:g}",
                                    "medium": f"{SMALL_BELOW_MM:g} - {LARGE_ABOVE_MM:g}",
                                    "large": f"> {LARGE_ABOVE_MM:g}"},
                "coordinates": "DICOM LPS; side is the patient's; voxel = (slice, row, column)"}
        (partial / COHORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        lines = [json.dumps(p.to_json(), sort_keys=True) for p in patients]
        (partial / GROUND_TRUTH).write_text("\n".join(lines) + "\n")
    return CohortManifest(folder, seed, shape, spacing, patients)


def read_ground_truth(folder: Path) -> CohortManifest:
    """The manifest of a cohort written by write_cohort."""
    folder = Path(folder)
    info_path, truth_path = folder / COHORT_INFO, folder / GROUND_TRUTH
    if not info_path.is_file() or not truth_path.is_file():
        raise FileNotFoundError(f"{folder}: not a synthetic cohort (no {COHORT_INFO} and "
                                f"{GROUND_TRUTH}); write one with write_cohort")
    info = json.loads(info_path.read_text())
    patients = [CohortPatient.from_json(json.loads(line))
                for line in truth_path.read_text().splitlines() if line.strip()]
    return CohortManifest(folder, int(info["seed"]), tuple(info["shape"]),
                          tuple(info["spacing"]), patients)
