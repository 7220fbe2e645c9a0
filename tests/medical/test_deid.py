"""De-identification: planted PHI never survives; UIDs and dates stay consistent; pixels kept."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from domainvlm.medical.cohort import write_cohort
from domainvlm.medical.deid import (
    DeidConfig,
    date_shift_days,
    deidentify,
    deidentify_tree,
    patient_key,
    pseudonym,
    remap_uid,
)
from domainvlm.medical.errors import BurnedInAnnotationError, DicomError
from domainvlm.medical.io import iter_dicom, read_frames

KEY = "project-alpha-7Qm2vX9kLp4RzT8wNc3Hy6Bd"
OTHER_KEY = "another-project-Jf5Lq8Zr2Wv7Xk3Nm9Tb"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY, SERIES = "1.2.999.1001.1", "1.2.999.1001.2"
FRAME = "1.2.999.1001.3"

# Planted value -> where it is planted. Every one must be gone from everything we write.
PHI = {
    "Quxworth^Zebulon": "PatientName",
    "PID-77889900": "PatientID",
    "OTHERPID-4455": "OtherPatientIDs",
    "SEQPID-1122": "OtherPatientIDsSequence > PatientID",
    "19610304": "PatientBirthDate",
    "42 Wallaby Way, Sydney": "PatientAddress",
    "555-0199-321": "PatientTelephoneNumbers",
    "ACCN-99887766": "AccessionNumber",
    "Drummond^Hortensia": "ReferringPhysicianName",
    "Pellegrino^Augustin": "PerformingPhysicianName",
    "Vantongeren^Mabel": "OperatorsName",
    "Quimby Memorial Hospital": "InstitutionName",
    "77 Sunset Strip, Quimbyville": "InstitutionAddress",
    "Follow-up of Quxworth lesion": "StudyDescription",
    "IMGCOMMENT-Kappa7": "ImageComments",
    "PATCOMMENT-Lambda8": "PatientComments",
    "HISTORY-Mu9": "AdditionalPatientHistory",
    "REQPROC-3141": "RequestAttributesSequence > RequestedProcedureID",
    "Scheduler^Ophelia": "RequestAttributesSequence > ScheduledPerformingPhysicianName",
    "Evaluator^Barnaby": "SourceImageSequence > PurposeOfReferenceCodeSequence > EvaluatorName",
    "Reviewer^Cordelia": "ReferencedSeriesSequence > SecondaryReviewerName",
    "PRIVNAME-Omicron": "private tag (0009,xx01)",
    "PRIVSEQ-Sigma": "private tag inside SourceImageSequence",
    "Privperson^Tau": "person name inside a private sequence",
    "STUDYID-2718": "StudyID",
    "DEVSN-1618": "DeviceSerialNumber",
    "STATION-Phi": "StationName",
    "MRL-Chi": "MedicalRecordLocator",
    "Birthname^Psi": "PatientBirthName",
    "Mothername^Omega": "PatientMotherBirthName",
    "Othername^Alpha": "OtherPatientNames",
    "Requester^Beta": "RequestingPhysician",
    "CONTENT-Gamma": "ContentSequence > TextValue",
    "Contentperson^Delta": "ContentSequence > PersonName",
    "Record^Epsilon": "PhysiciansOfRecord",
    "Reader^Zeta": "NameOfPhysiciansReadingStudy",
    "OCCUPATION-Eta": "Occupation",
    "ISSUER-Theta": "IssuerOfPatientID",
    "PPSID-Iota": "PerformedProcedureStepID",
    "Ward 7 Quxworth bed": "CurrentPatientLocation",
    "REASON-Nu": "ReasonForTheRequestedProcedure",
    "20230415": "StudyDate, ContentDate, AcquisitionDateTime, a date in a kept sequence",
    "20230416": "InstanceCreationDate",
    "0745": "PatientBirthTime",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    FRAME: "FrameOfReferenceUID",
}
TIMES = ["101530.123", "101612"]  # kept when dates are shifted (intervals), gone when removed


def item(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def phi_dataset(instance: int, patient_id: str = "PID-77889900",
                references: str | None = None) -> Dataset:
    """A CT slice with PHI planted in every place of PHI (and instance-specific UIDs)."""
    sop = f"1.2.999.1001.4.{instance}"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CT, sop
    ds.SOPClassUID, ds.SOPInstanceUID = CT, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = STUDY, SERIES, FRAME
    ds.Modality, ds.InstanceNumber = "CT", instance
    ds.PatientName, ds.PatientID = "Quxworth^Zebulon", patient_id
    ds.OtherPatientIDs = "OTHERPID-4455"
    ds.OtherPatientIDsSequence = [item(PatientID="SEQPID-1122", TypeOfPatientID="TEXT")]
    ds.PatientBirthDate, ds.PatientBirthTime, ds.PatientSex = "19610304", "0745", "M"
    ds.PatientAddress, ds.PatientTelephoneNumbers = "42 Wallaby Way, Sydney", "555-0199-321"
    ds.AccessionNumber, ds.StudyID = "ACCN-99887766", "STUDYID-2718"
    ds.ReferringPhysicianName = "Drummond^Hortensia"
    ds.PerformingPhysicianName = "Pellegrino^Augustin"
    ds.OperatorsName = "Vantongeren^Mabel"
    ds.InstitutionName, ds.InstitutionAddress = ("Quimby Memorial Hospital",
                                                 "77 Sunset Strip, Quimbyville")
    ds.StudyDescription = "Follow-up of Quxworth lesion"
    ds.ImageComments, ds.PatientComments = "IMGCOMMENT-Kappa7", "PATCOMMENT-Lambda8"
    ds.AdditionalPatientHistory = "HISTORY-Mu9"
    ds.RequestAttributesSequence = [item(RequestedProcedureID="REQPROC-3141",
                                         ScheduledPerformingPhysicianName="Scheduler^Ophelia",
                                         ReasonForTheRequestedProcedure="REASON-Nu")]
    purpose = item(CodeValue="121320", CodingSchemeDesignator="DCM",
                   CodeMeaning="Uncompressed predecessor", EvaluatorName="Evaluator^Barnaby")
    source = item(ReferencedSOPClassUID=CT,
                  ReferencedSOPInstanceUID=references or "1.2.999.1001.9.9",
                  PurposeOfReferenceCodeSequence=[purpose])
    source.private_block(0x0029, "ACME NESTED", create=True).add_new(0x01, "LO", "PRIVSEQ-Sigma")
    ds.SourceImageSequence = [source]
    ds.ReferencedSeriesSequence = [item(SeriesInstanceUID=SERIES, SeriesDate="20230415",
                                        SecondaryReviewerName="Reviewer^Cordelia")]
    ds.ContentSequence = [item(RelationshipType="CONTAINS", ValueType="TEXT",
                               TextValue="CONTENT-Gamma", PersonName="Contentperson^Delta")]
    ds.StationName, ds.DeviceSerialNumber = "STATION-Phi", "DEVSN-1618"
    ds.MedicalRecordLocator = "MRL-Chi"
    ds.PatientBirthName, ds.PatientMotherBirthName = "Birthname^Psi", "Mothername^Omega"
    ds.OtherPatientNames, ds.RequestingPhysician = "Othername^Alpha", "Requester^Beta"
    ds.PhysiciansOfRecord, ds.NameOfPhysiciansReadingStudy = "Record^Epsilon", "Reader^Zeta"
    ds.Occupation, ds.IssuerOfPatientID = "OCCUPATION-Eta", "ISSUER-Theta"
    ds.PerformedProcedureStepID = "PPSID-Iota"
    ds.CurrentPatientLocation = "Ward 7 Quxworth bed"
    ds.StudyDate = ds.ContentDate = "20230415"
    ds.InstanceCreationDate = "20230416"
    ds.StudyTime, ds.ContentTime = "101530.123", "101612"
    ds.AcquisitionDateTime = "20230415101530.000000+0100"
    block = ds.private_block(0x0009, "ACME HOSPITAL", create=True)
    block.add_new(0x01, "LO", "PRIVNAME-Omicron")
    block.add_new(0x02, "SQ", [item(PersonName="Privperson^Tau")])
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.5 * instance], [
        1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
    ds.BurnedInAnnotation = "NO"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = (np.arange(64, dtype=np.uint16) * 7 + instance).tobytes()
    return ds


def needles(values) -> list[bytes]:
    """Each planted value, and each part of a person name, as lowercase bytes."""
    found = set()
    for value in values:
        found.add(value.lower().encode())
        if "^" in value:
            found.update(part.lower().encode() for part in value.split("^") if len(part) > 3)
    return sorted(found)


def survivors(folder: Path, values, *texts: str) -> list[str]:
    """Planted values found in any byte or path under `folder`, or in `texts`."""
    haystacks = [t.lower().encode() for t in texts]
    for path in sorted(folder.rglob("*")):
        haystacks.append(str(path.relative_to(folder)).lower().encode())
        if path.is_file():
            haystacks.append(path.read_bytes().lower())
    return [n.decode() for n in needles(values) if any(n in h for h in haystacks)]


@pytest.fixture
def source(tmp_path) -> Path:
    """Three files: two of one study (the second references the first), one other patient."""
    folder = tmp_path / "Quxworth_Zebulon"  # a folder name with PHI, as hospitals export
    folder.mkdir()
    first = phi_dataset(1)
    first.save_as(folder / "Quxworth_1.dcm", enforce_file_format=True)
    phi_dataset(2, references=first.SOPInstanceUID).save_as(folder / "Quxworth_2.dcm",
                                                             enforce_file_format=True)
    phi_dataset(3, patient_id="PID-OTHER-55").save_as(folder / "other.dcm",
                                                      enforce_file_format=True)
    return folder


@pytest.mark.parametrize("config", [
    DeidConfig(KEY),
    DeidConfig(KEY, date_shift_days=-100),
    DeidConfig(KEY, shift_dates=False),
], ids=["per-patient-shift", "fixed-shift", "dates-removed"])
def test_no_planted_value_survives_anywhere_we_write(source, tmp_path, config, caplog, capfd):
    assert len(PHI) >= 40
    caplog.set_level(logging.DEBUG)
    report = deidentify_tree(source, tmp_path / "out", config)
    printed = capfd.readouterr()
    planted = list(PHI) + ([] if config.shift_dates else TIMES)
    report_text = json.dumps(dataclasses.asdict(report))
    assert survivors(tmp_path / "out", planted, report_text, caplog.text, printed.out,
                     printed.err) == []
    assert report.files_written == 3 and report.studies == 1 and report.patients == 2
    # EvaluatorName and SecondaryReviewerName are not in the PS3.15 table: the sweep got them
    assert report.sweep == {"person_names": 2 * 3}


def test_times_are_kept_when_dates_are_shifted(source, tmp_path):
    deidentify_tree(source, tmp_path / "out", DeidConfig(KEY))
    assert all(survivors(tmp_path / "out", [t]) == [t] for t in TIMES)


def deidentified_sources(folder: Path, config: DeidConfig) -> dict[int, Dataset]:
    return {int(s.dataset.InstanceNumber): deidentify(s.dataset, config, s.name)
            for s in iter_dicom(folder)}


ABSENT, KEPT = object(), object()


@pytest.mark.parametrize(("keyword", "expected"), [
    ("PatientName", "pseudonym"), ("PatientID", "pseudonym"),
    ("OtherPatientIDs", ABSENT), ("OtherPatientIDsSequence", ABSENT),
    ("PatientBirthDate", ABSENT), ("PatientBirthTime", ABSENT), ("PatientAddress", ABSENT),
    ("PatientSex", ""), ("AccessionNumber", ""), ("StudyID", ""),
    ("ReferringPhysicianName", ""), ("OperatorsName", ""), ("PerformingPhysicianName", ABSENT),
    ("InstitutionName", "ANONYMIZED"), ("StudyDescription", ABSENT),
    ("ImageComments", ABSENT), ("PatientComments", ABSENT), ("RequestAttributesSequence", ABSENT),
    ("ContentSequence", []), ("MedicalRecordLocator", ABSENT),
    ("Modality", KEPT), ("SOPClassUID", KEPT), ("ImagePositionPatient", KEPT),
    ("ImageOrientationPatient", KEPT), ("PixelSpacing", KEPT), ("SliceThickness", KEPT),
    ("RescaleIntercept", KEPT), ("PixelData", KEPT), ("BurnedInAnnotation", KEPT),
    ("PatientIdentityRemoved", "YES"), ("LongitudinalTemporalInformationModified", "MODIFIED"),
])
def test_what_happens_to_each_attribute(source, keyword, expected):
    original = next(s.dataset for s in iter_dicom(source) if s.dataset.InstanceNumber == 1)
    out = deidentify(original, DeidConfig(KEY))
    if expected is ABSENT:
        assert keyword not in out
    elif expected is KEPT:
        assert out[keyword].value == original[keyword].value
    elif expected == "pseudonym":
        assert str(out[keyword].value) == pseudonym(patient_key(original), KEY)
        assert str(out[keyword].value).startswith("ANON-")
    else:
        assert out[keyword].value == expected
    assert not any(e.tag.is_private for e in _all_elements(out))


def _all_elements(ds):
    for element in ds:
        yield element
        if element.VR == "SQ":
            for nested in element.value:
                yield from _all_elements(nested)


def test_method_is_recorded_with_the_ps315_codes():
    shifted = deidentify(phi_dataset(1), DeidConfig(KEY))
    removed = deidentify(phi_dataset(1), DeidConfig(KEY, shift_dates=False))
    assert [c.CodeValue for c in shifted.DeidentificationMethodCodeSequence] == ["113100",
                                                                                 "113107"]
    assert [c.CodeValue for c in removed.DeidentificationMethodCodeSequence] == ["113100"]
    assert removed.LongitudinalTemporalInformationModified == "REMOVED"
    assert "Basic Profile" in shifted.DeidentificationMethod


def test_uids_are_consistent_within_a_key_and_differ_across_keys(source):
    out = deidentified_sources(source, DeidConfig(KEY))
    other = deidentified_sources(source, DeidConfig(OTHER_KEY))
    assert out[1].StudyInstanceUID == out[2].StudyInstanceUID == remap_uid(STUDY, KEY)
    assert out[1].SeriesInstanceUID == out[2].SeriesInstanceUID != SERIES
    assert out[1].FrameOfReferenceUID == out[2].FrameOfReferenceUID != FRAME
    assert out[1].SOPInstanceUID != out[2].SOPInstanceUID
    # a reference inside a nested sequence follows its target
    assert out[2].SourceImageSequence[0].ReferencedSOPInstanceUID == out[1].SOPInstanceUID
    assert out[2].ReferencedSeriesSequence[0].SeriesInstanceUID == out[2].SeriesInstanceUID
    assert out[1].file_meta.MediaStorageSOPInstanceUID == out[1].SOPInstanceUID
    assert out[1].SOPClassUID == CT and out[1].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert other[1].StudyInstanceUID != out[1].StudyInstanceUID
    for ds in out.values():
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert UID(uid).is_valid and uid.startswith("2.25.")
    again = deidentified_sources(source, DeidConfig(KEY))
    assert all(again[i] == out[i] for i in out)  # deterministic, on any machine


@pytest.mark.parametrize(("keyword", "nested", "expected"), [
    ("StudyDate", False, "20230105"),
    ("ContentDate", False, "20230105"),
    ("InstanceCreationDate", False, "20230106"),
    ("AcquisitionDateTime", False, "20230105101530.000000+0100"),
    ("SeriesDate", True, "20230105"),  # inside ReferencedSeriesSequence
    ("StudyTime", False, "101530.123"),
])
def test_a_fixed_shift_moves_every_date_by_the_same_days(keyword, nested, expected):
    out = deidentify(phi_dataset(1), DeidConfig(KEY, date_shift_days=-100))
    holder = out.ReferencedSeriesSequence[0] if nested else out
    assert holder[keyword].value == expected


def test_derived_shift_is_one_per_patient_and_different_between_patients(source):
    config = DeidConfig(KEY)
    out = deidentified_sources(source, config)
    assert out[1].StudyDate == out[2].StudyDate != "20230415"
    shift_one = date_shift_days(patient_key(phi_dataset(1)), config)
    shift_other = date_shift_days(patient_key(phi_dataset(3, patient_id="PID-OTHER-55")),
                                  config)
    assert -3650 <= shift_one <= -365 and -3650 <= shift_other <= -365
    assert shift_one != shift_other and out[3].StudyDate != out[1].StudyDate
    assert out[1].PatientID != out[3].PatientID
    assert date_shift_days(patient_key(phi_dataset(1)), DeidConfig(OTHER_KEY)) != shift_one


def test_removing_dates_empties_every_date_and_time():
    out = deidentify(phi_dataset(1), DeidConfig(KEY, shift_dates=False))
    temporal = [e for e in _all_elements(out) if e.VR in ("DA", "DT", "TM")]
    assert temporal and all(e.value in ("", None) for e in temporal)


def test_the_input_is_never_changed():
    original = phi_dataset(1)
    before = copy.deepcopy(original)
    deidentify(original, DeidConfig(KEY))
    assert original == before and original.file_meta == before.file_meta


def test_burned_in_annotation_is_refused_unless_the_user_opts_in(tmp_path):
    burned = phi_dataset(1)
    burned.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError, match="allow_burned_in") as caught:
        deidentify(burned, DeidConfig(KEY), name="scan-17.dcm")
    assert "scan-17.dcm" in str(caught.value)
    assert not [n for n in needles(PHI) if n.decode() in str(caught.value).lower()]
    allowed = deidentify(burned, DeidConfig(KEY, allow_burned_in=True))
    assert allowed.BurnedInAnnotation == "YES" and allowed.PatientIdentityRemoved == "NO"
    folder = tmp_path / "in"
    folder.mkdir()
    phi_dataset(2).save_as(folder / "a.dcm", enforce_file_format=True)
    burned.save_as(folder / "b.dcm", enforce_file_format=True)
    with pytest.raises(BurnedInAnnotationError, match="b.dcm"):
        deidentify_tree(folder, tmp_path / "out", DeidConfig(KEY))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no partial
    report = deidentify_tree(folder, tmp_path / "out", DeidConfig(KEY, allow_burned_in=True))
    assert report.files_written == 2 and report.burned_in_allowed == 1


def test_tree_reads_zips_skips_duplicates_and_refuses_a_busy_output(source, tmp_path):
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.iterdir()):
            zf.write(path, f"a/{path.name}")
        zf.write(source / "Quxworth_1.dcm", "b/copy.dcm")
        zf.writestr("README.txt", "not dicom")
    calls = []
    report = deidentify_tree(archive, tmp_path / "out", DeidConfig(KEY), progress=calls.append)
    assert (report.files_written, report.duplicates_skipped) == (3, 1) and calls == [1] * 3
    written = sorted((tmp_path / "out").rglob("*.dcm"))
    assert [p.parent.parent.name for p in written] == [remap_uid(STUDY, KEY)] * 3
    with pytest.raises(FileExistsError, match="not an empty folder"):
        deidentify_tree(source, tmp_path / "out", DeidConfig(KEY))
    with pytest.raises(ValueError, match="inside the input"):
        deidentify_tree(source, source / "deid", DeidConfig(KEY))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DicomError, match="no DICOM files"):
        deidentify_tree(empty, tmp_path / "out2", DeidConfig(KEY))
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"project_key": ""}, "project_key is empty"),
    ({"project_key": "  "}, "project_key is empty"),
    ({"project_key": KEY, "shift_dates": False, "date_shift_days": 5}, "shift_dates=False"),
    ({"project_key": KEY, "date_shift_days": 0}, "keep the real dates"),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeidConfig(**kwargs)


COHORT_PHI = ["PatientName", "PatientID", "PatientAddress", "PatientTelephoneNumbers",
              "PatientComments", "AccessionNumber", "StudyID", "InstitutionName",
              "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
              "OperatorsName", "DeviceSerialNumber", "PatientBirthDate", "StudyDate"]
GEOMETRY = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
            "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth",
            "Rows", "Columns", "InstanceNumber", "SOPClassUID", "Modality", "BitsStored",
            "PixelRepresentation", "PhotometricInterpretation", "PixelData"]


def test_the_synthetic_cohort_keeps_pixels_and_geometry_and_loses_its_phi(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", 2, seed=5, shape=(8, 32, 32))
    report = deidentify_tree(manifest.folder, tmp_path / "out", DeidConfig(KEY))
    sources = {remap_uid(s.dataset.SOPInstanceUID, KEY): s.dataset
               for s in iter_dicom(manifest.folder)}
    planted = set()
    for ds in sources.values():
        planted.update(str(ds[k].value) for k in COHORT_PHI)
        planted.add(ds.OtherPatientIDsSequence[0].PatientID)
        planted.add(str(ds.RequestAttributesSequence[0].ScheduledPerformingPhysicianName))
        planted.add(str(ds.private_block(0x0011, "DOMAINVLM SYNTH")[0x01].value))
        planted.update([ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID])
    assert survivors(tmp_path / "out", planted, json.dumps(dataclasses.asdict(report))) == []
    outputs = list(iter_dicom(tmp_path / "out"))
    assert len(outputs) == len(sources) == 16 and report.patients == 2
    for output in outputs:
        out, original = output.dataset, sources[output.dataset.SOPInstanceUID]
        for keyword in GEOMETRY:
            assert out[keyword].value == original[keyword].value, keyword
        assert np.array_equal(read_frames(out), read_frames(original))
    for patient in manifest.patients:  # ground truth still finds its de-identified series
        study = tmp_path / "out" / remap_uid(patient.study_uid, KEY)
        assert len(list((study / remap_uid(patient.series_uid, KEY)).glob("*.dcm"))) == 8
    first = pydicom.dcmread(next((tmp_path / "out").rglob("*.dcm")))
    assert first.PatientIdentityRemoved == "YES" and first.StudyDate != sources[
        first.SOPInstanceUID].StudyDate


@pytest.mark.parametrize(("keyword", "value", "expected"), [
    ("AcquisitionDateTime", "2023", "2022"),  # year precision stays year precision
    ("AcquisitionDateTime", "202304", "202212"),
    ("AcquisitionDateTime", "20230415101530-0500", "20230105101530-0500"),
    ("ContentDate", "2023.04.15", "20230105"),  # the old ACR-NEMA form
    ("ContentDate", "not a date", ""),  # unreadable: emptied, never passed through
    ("ContentDate", "", ""),
])
def test_date_forms_under_a_fixed_shift(keyword, value, expected, recwarn):
    ds = phi_dataset(1)
    ds[keyword].value = value
    out = deidentify(ds, DeidConfig(KEY, date_shift_days=-100))
    assert out[keyword].value == expected


def test_keep_private_keeps_private_tags_but_still_sweeps_names():
    out = deidentify(phi_dataset(1), DeidConfig(KEY, keep_private=True))
    assert out.private_block(0x0009, "ACME HOSPITAL")[0x01].value == "PRIVNAME-Omicron"
    names = [e for e in _all_elements(out) if e.VR == "PN" and str(e.value)]
    assert [e.keyword for e in names] == ["PatientName"]


# --- what the output claims, and images whose pixels may hold text -----------------------------
US_IMAGE, SC_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.7"
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"


def corpus(name: str, **attributes: str) -> Dataset:
    """A file of pydicom's test corpus, with `attributes` set on it (None deletes)."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(name))
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


# (file, attributes changed, refused without allow_burned_in): real US and SC files, CT and MR
# relabelled as the classes and modalities that show text, and declared ones either way.
PIXEL_TEXT_CASES = [
    ("CT_small.dcm", {}, False),
    ("MR_small.dcm", {}, False),
    ("ExplVR_BigEnd.dcm", {}, True),  # Ultrasound Image Storage, modality US
    ("examples_ybr_color.dcm", {}, True),  # Ultrasound Multi-frame Image Storage
    ("SC_rgb_rle.dcm", {}, True),  # Secondary Capture, modality OT
    ("JPEG2000.dcm", {}, True),  # Secondary Capture of an NM image: the class decides
    ("CT_small.dcm", {"BurnedInAnnotation": "YES"}, True),
    ("CT_small.dcm", {"SOPClassUID": US_IMAGE, "Modality": "US"}, True),
    ("CT_small.dcm", {"SOPClassUID": VL_PHOTO, "Modality": "XC"}, True),
    ("CT_small.dcm", {"Modality": "ES"}, True),
    ("CT_small.dcm", {"Modality": "OT"}, True),
    ("CT_small.dcm", {"Modality": "DOC"}, True),
    ("CT_small.dcm", {"Modality": "SM"}, True),
    ("CT_small.dcm", {"Modality": "XA"}, False),  # a detector image: text goes in overlays
    ("CT_small.dcm", {"SOPClassUID": US_IMAGE, "BurnedInAnnotation": "NO"}, False),
    ("SC_rgb_rle.dcm", {"BurnedInAnnotation": "NO"}, False),  # declared clean: trusted
]


@pytest.mark.parametrize(("name", "attributes", "refused"), PIXEL_TEXT_CASES)
def test_images_that_may_show_text_are_refused_unless_allowed(name, attributes, refused):
    ds = corpus(name, **attributes)
    if refused:
        with pytest.raises(BurnedInAnnotationError, match="allow_burned_in") as caught:
            deidentify(ds, DeidConfig(KEY), name=name)
        assert name in str(caught.value)
        assert str(ds.PatientName) not in str(caught.value)
    else:
        assert deidentify(ds, DeidConfig(KEY)).PatientIdentityRemoved == "YES"
    allowed = deidentify(ds, DeidConfig(KEY, allow_burned_in=True))
    assert allowed.PatientIdentityRemoved == ("NO" if refused else "YES")


def test_every_secondary_capture_and_ultrasound_class_counts_as_showing_text():
    """pydicom's UID names, not our list, say which classes these are."""
    from pydicom.uid import UID_dictionary

    from domainvlm.medical.burned_in import PIXEL_TEXT_SOP_CLASSES

    words = ("Secondary Capture", "Ultrasound", "Endoscopic", "Photograph", "Encapsulated PDF")
    named = {uid for uid, (name, kind, *_) in UID_dictionary.items()
             if kind == "SOP Class" and "Storage" in name and any(w in name for w in words)}
    assert len(named) >= 15 and named <= set(PIXEL_TEXT_SOP_CLASSES)


CODES = {"113100": "Basic Application Confidentiality Profile",
         "113107": "Retain Longitudinal Temporal Information Modified Dates Option"}


# (file, config, PatientIdentityRemoved, method codes, words in DeidentificationMethod), worked
# out from PS3.15 E.1.1 by hand: only a complete Basic Profile is claimed, options only as used.
CLAIM_CASES = [
    ("CT_small.dcm", {}, "YES", ["113100", "113107"], ["Basic Profile", "dates shifted"]),
    ("CT_small.dcm", {"shift_dates": False}, "YES", ["113100"], ["dates removed"]),
    ("CT_small.dcm", {"allow_burned_in": True}, "YES", ["113100", "113107"], ["keyed UIDs"]),
    ("CT_small.dcm", {"keep_private": True}, "NO", [], ["NOT complete", "private tags kept"]),
    ("ExplVR_BigEnd.dcm", {"allow_burned_in": True}, "NO", [],
     ["NOT complete", "burned-in text", "dates shifted"]),
    ("ExplVR_BigEnd.dcm", {"allow_burned_in": True, "keep_private": True,
                           "shift_dates": False}, "NO", [],
     ["private tags kept", "burned-in text", "dates removed"]),
]


@pytest.mark.parametrize(("name", "options", "removed", "codes", "words"), CLAIM_CASES)
def test_the_output_claims_only_what_was_done(name, options, removed, codes, words):
    ds = corpus(name)
    ds.PatientIdentityRemoved = "YES"  # an earlier, complete de-identification's claims
    ds.DeidentificationMethodCodeSequence = [Dataset()]
    ds.DeidentificationMethodCodeSequence[0].CodeValue = "113100"
    out = deidentify(ds, DeidConfig(KEY, **options))
    assert out.PatientIdentityRemoved == removed
    found = out.get("DeidentificationMethodCodeSequence") or []
    assert [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in found] == [
        (code, "DCM", CODES[code]) for code in codes]
    values = out.DeidentificationMethod
    values = [values] if isinstance(values, str) else list(values)
    assert all(word in "; ".join(values) for word in words), values
    assert all(len(value) <= 64 for value in values)  # LO
    shifted = options.get("shift_dates", True)
    assert out.LongitudinalTemporalInformationModified == ("MODIFIED" if shifted else "REMOVED")


def test_the_tree_report_counts_what_was_let_through(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    corpus("CT_small.dcm").save_as(folder / "ct.dcm")
    corpus("CT_small.dcm", BurnedInAnnotation="YES", SOPInstanceUID="1.2.3.4.5").save_as(
        folder / "burned.dcm")
    corpus("ExplVR_BigEnd.dcm").save_as(folder / "us.dcm")
    corpus("SC_rgb_rle.dcm").save_as(folder / "sc.dcm")
    with pytest.raises(BurnedInAnnotationError):
        deidentify_tree(folder, tmp_path / "out", DeidConfig(KEY))
    report = deidentify_tree(folder, tmp_path / "out", DeidConfig(KEY, allow_burned_in=True))
    assert (report.files_written, report.burned_in_allowed, report.possibly_burned_in_allowed,
            report.identity_not_removed) == (4, 1, 2, 3)
    flags = sorted(str(s.dataset.PatientIdentityRemoved) for s in iter_dicom(tmp_path / "out"))
    assert flags == ["NO", "NO", "NO", "YES"]
