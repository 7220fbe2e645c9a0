"""The synthetic cohort: real CT series that read back to the phantom, with truth and fake PHI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from domainvlm.medical.cohort import (
    COHORT_INFO,
    GROUND_TRUTH,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    read_ground_truth,
    write_cohort,
)
from domainvlm.medical.io import iter_dicom, read_frames
from domainvlm.medical.phantom import make_patient

SEED, N = 11, 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    calls = []
    folder = tmp_path_factory.mktemp("cohort") / "ct"
    manifest = write_cohort(folder, N, seed=SEED, progress=calls.append)
    assert calls == [1] * N
    return manifest


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_series(folder: Path) -> list:
    datasets = [source.dataset for source in iter_dicom(folder)]
    return sorted(datasets, key=lambda ds: int(ds.InstanceNumber))


def test_layout_and_ground_truth_round_trip(cohort):
    folder = cohort.folder
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([COHORT_INFO, GROUND_TRUTH] + [f"patient-{i:04d}" for i in range(N)])
    assert not list(folder.parent.glob(".*partial*"))
    again = read_ground_truth(folder)
    assert again.patients == cohort.patients
    assert (again.seed, again.shape, again.spacing) == (SEED, (32, 64, 64), (6.0, 5.0, 5.0))
    assert [p.pseudo_id for p in again.patients] == [f"synth-{i:04d}" for i in range(N)]
    assert len({p.study_uid for p in again.patients}) == N


@pytest.mark.parametrize("index", range(N))
def test_series_reads_back_as_the_phantom_with_its_geometry(cohort, index):
    patient = cohort.patients[index]
    hu, truth = make_patient(np.random.default_rng([SEED, index, 0]))
    assert truth == patient.truth
    slices = read_series(cohort.folder / patient.series_folder)
    assert len(slices) == truth.shape[0]
    volume = np.concatenate([read_frames(ds) for ds in slices])
    assert np.array_equal(volume, hu)
    dz, dy, dx = truth.spacing
    for k, ds in enumerate(slices):
        assert ds.Modality == "CT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.StudyInstanceUID == patient.study_uid
        assert ds.SeriesInstanceUID == patient.series_uid
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(
            [truth.origin[0], truth.origin[1], truth.origin[2] + k * dz])
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [dy, dx]
        assert float(ds.SliceThickness) == dz
        assert (float(ds.RescaleIntercept), float(ds.RescaleSlope)) == (-1024.0, 1.0)
        assert [float(v) for v in ds.WindowCenter] == [40.0, -600.0]
        assert [float(v) for v in ds.WindowWidth] == [400.0, 1500.0]
        assert ds.BurnedInAnnotation == "NO"
    assert len({ds.SOPInstanceUID for ds in slices}) == len(slices)
    assert len({ds.FrameOfReferenceUID for ds in slices}) == 1


def test_lesions_show_at_their_truth_voxels_in_the_files(cohort):
    for patient in cohort.patients:
        volume = np.concatenate([read_frames(ds) for ds in read_series(
            cohort.folder / patient.series_folder)])
        for lesion in patient.truth.lesions:
            background = -850.0 if lesion.organ == "lung" else 60.0
            assert abs(volume[lesion.centre_voxel] - background) > 0.4 * abs(lesion.hu
                                                                             - background)


PHI_KEYWORDS = ["PatientName", "PatientID", "OtherPatientIDsSequence", "PatientBirthDate",
                "PatientSex", "PatientAge", "PatientAddress", "PatientTelephoneNumbers",
                "PatientComments", "AccessionNumber", "StudyID", "InstitutionName",
                "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
                "OperatorsName", "DeviceSerialNumber", "StationName", "StudyDate", "StudyTime",
                "RequestAttributesSequence"]


def test_every_slice_carries_fake_phi_for_deidentification_to_remove(cohort):
    names = set()
    for patient in cohort.patients:
        for ds in read_series(cohort.folder / patient.series_folder):
            for keyword in PHI_KEYWORDS:
                assert ds.get(keyword), keyword
            nested = ds.RequestAttributesSequence[0].ScheduledPerformingPhysicianName
            assert "^" in str(nested)
            block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
            assert block[0x01].value == str(ds.PatientName).replace("^", " ")
            assert block[0x02].value == ds.PatientID
            names.add(str(ds.PatientName))
    assert len(names) == N  # one made-up person per patient
    assert not any(p.pseudo_id in name for p in cohort.patients for name in names)


def test_same_seed_gives_identical_bytes_and_a_patient_does_not_depend_on_cohort_size(
        cohort, tmp_path):
    smaller = write_cohort(tmp_path / "again", N - 1, seed=SEED)
    full, part = file_hashes(cohort.folder), file_hashes(smaller.folder)
    for name, digest in part.items():
        if name.startswith("patient-"):
            assert full[name] == digest, name
    assert sum(name.startswith("patient-") for name in part) == (N - 1) * 32
    other = write_cohort(tmp_path / "other", 1, seed=SEED + 1)
    assert file_hashes(other.folder)["patient-0000/0000.dcm"] != full["patient-0000/0000.dcm"]
    first = pydicom.dcmread(other.folder / "patient-0000" / "0000.dcm")
    assert first.StudyInstanceUID != cohort.patients[0].study_uid


def test_workers_write_the_same_bytes_in_the_same_order(cohort, tmp_path):
    calls = []
    parallel = write_cohort(tmp_path / "parallel", N, seed=SEED, workers=2,
                            progress=calls.append)
    assert calls == [1] * N
    assert file_hashes(parallel.folder) == file_hashes(cohort.folder)
    assert [p.series_uid for p in parallel.patients] == [p.series_uid for p in cohort.patients]


def test_refuses_a_non_empty_folder_and_accepts_an_empty_one(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        write_cohort(busy, 1)
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = write_cohort(empty, 1, shape=(8, 32, 32))
    assert len(list((empty / "patient-0000").iterdir())) == 8
    assert manifest.patients[0].truth.shape == (8, 32, 32)


def test_a_failure_leaves_neither_the_folder_nor_a_partial_one(tmp_path):
    # seed 3's second patient needs lesions that cannot fit in 4 thin slices
    with pytest.raises(ValueError, match="cannot fit"):
        write_cohort(tmp_path / "broken", 8, seed=3, shape=(4, 64, 64), spacing=(1.0, 5.0, 5.0))
    assert list(tmp_path.iterdir()) == []


def test_read_ground_truth_of_a_non_cohort_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="write_cohort"):
        read_ground_truth(tmp_path)
