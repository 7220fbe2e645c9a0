"""Answers as DICOM Comprehensive SR: build, read back, save, and store on a real Orthanc."""

from __future__ import annotations

import copy
import datetime as dt
import logging

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series
from domainvlm.medical.errors import DicomError
from domainvlm.medical.orthanc import LocalOrthanc
from domainvlm.medical.pacs import PacsClient
from domainvlm.medical.sr import (
    SourceReference,
    SrAnswer,
    answer_to_sr,
    read_sr_answer,
    save_sr,
)

STUDY = generate_uid(entropy_srcs=["test-sr", "study"])
SERIES = [generate_uid(entropy_srcs=["test-sr", "series", str(n)]) for n in (1, 2)]
PATIENT_ID, PATIENT_NAME = "synth-0002", "Anon^Synth"
MODEL, ADAPTER = "Qwen/Qwen2.5-VL-3B-Instruct", "liver-lesions-lora-r16"
WHEN = dt.datetime(2024, 1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A PACS holding two CT series (6 slices of 32x32) of one de-identified study."""
    root = tmp_path_factory.mktemp("sr")
    rng = np.random.default_rng(3)
    with LocalOrthanc(root / "orthanc") as server:
        process = server.process
        pacs = PacsClient(server.dicomweb_url)
        for number, series_uid in enumerate(SERIES, start=1):
            hu = rng.integers(-1000, 1500, size=(6, 32, 32))
            spec = SeriesSpec(STUDY, series_uid, series_number=number,
                              attributes={"PatientName": PATIENT_NAME,
                                          "PatientID": PATIENT_ID,
                                          "PatientIdentityRemoved": "YES"})
            paths = write_ct_series(hu, root / f"ct-{number}", spec)
            assert len(pacs.store(paths)) == len(paths)
        yield pacs
    assert process is not None and process.poll() is not None


@pytest.fixture(scope="module")
def sources(client):
    """What the model saw, as the PACS returns it: all of series 1, two slices of series 2."""
    return client.retrieve_series(STUDY, SERIES[0]) + client.retrieve_series(STUDY,
                                                                             SERIES[1])[2:4]


def references_of(datasets) -> tuple[SourceReference, ...]:
    return tuple(SourceReference(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                 str(ds.SOPInstanceUID), str(ds.SOPClassUID))
                 for ds in datasets)


def check(read: SrAnswer, question, answer, adapter, datasets) -> None:
    assert (read.question, read.answer, read.model, read.adapter) == (question, answer, MODEL,
                                                                      adapter)
    assert read.references == references_of(datasets)
    assert read.study_uids == (STUDY,)
    assert read.sr_study_uid == STUDY and read.sr_series_uid not in SERIES


TEXT_CASES = [
    ("Is there a focal liver lesion?", "Yes: one hypodense lesion, about 12 mm.", ADAPTER),
    ("Größe der Läsion? 病変の大きさは?", "≈ 12 mm → segment IVa; no other finding.", ADAPTER),
    ("Describe the lungs.", "Clear.\nNo nodules.\nNo effusion.", None),  # base model only
    ("Q" * 3, "A" * 20_000, ADAPTER),  # long answers fit (UT, not LO)
]


@pytest.mark.parametrize(("question", "answer", "adapter"), TEXT_CASES)
def test_answer_round_trips_through_the_sr(sources, question, answer, adapter):
    sr = answer_to_sr(question, answer, sources, MODEL, adapter, created=WHEN)
    check(read_sr_answer(sr), question, answer, adapter, sources)
    assert read_sr_answer(sr).series_uids == tuple(SERIES)
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert (sr.PatientID, str(sr.PatientName)) == (PATIENT_ID, PATIENT_NAME)
    assert sr.PatientIdentityRemoved == "YES"
    assert sr.ManufacturerModelName == MODEL and sr.Manufacturer == "domainvlm"
    assert (str(sr.ContentDate), str(sr.ContentTime)) == ("20240102", "030405")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence
    assert [str(item.StudyInstanceUID) for item in evidence] == [STUDY]
    cited = {str(s.SeriesInstanceUID): [str(i.ReferencedSOPInstanceUID)
                                        for i in s.ReferencedSOPSequence]
             for s in evidence[0].ReferencedSeriesSequence}
    assert cited == {SERIES[0]: [str(ds.SOPInstanceUID) for ds in sources[:6]],
                     SERIES[1]: [str(ds.SOPInstanceUID) for ds in sources[6:]]}


def test_the_device_observer_names_the_model(sources):
    sr = answer_to_sr("Q?", "A.", sources, MODEL, ADAPTER)
    observer = {str(item.ConceptNameCodeSequence[0].CodeMeaning): item
                for item in sr.ContentSequence if item.RelationshipType == "HAS OBS CONTEXT"}
    assert observer["Observer Type"].ConceptCodeSequence[0].CodeMeaning == "Device"
    assert observer["Device Observer Model Name"].TextValue == MODEL


def test_saved_file_reads_back_the_same(sources, tmp_path):
    question, answer, adapter = TEXT_CASES[1]
    sr = answer_to_sr(question, answer, sources, MODEL, adapter, created=WHEN)
    path = save_sr(sr, tmp_path / "answers" / "answer.dcm")
    assert [p.name for p in path.parent.iterdir()] == ["answer.dcm"]  # no temp file left
    again = pydicom.dcmread(path)
    assert again.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    check(read_sr_answer(again, str(path)), question, answer, adapter, sources)
    assert read_sr_answer(again) == read_sr_answer(sr)


def test_uids_are_derived_from_the_content(sources):
    one = answer_to_sr("Q?", "A.", sources, MODEL, ADAPTER)
    same = answer_to_sr("Q?", "A.", sources, MODEL, ADAPTER)
    other = answer_to_sr("Q?", "B.", sources, MODEL, ADAPTER)
    assert (one.SeriesInstanceUID, one.SOPInstanceUID) == (same.SeriesInstanceUID,
                                                           same.SOPInstanceUID)
    assert one.SOPInstanceUID != other.SOPInstanceUID
    assert one.SeriesInstanceUID != other.SeriesInstanceUID


def test_sources_are_left_untouched(sources):
    before = [(len(ds), "PatientBirthDate" in ds) for ds in sources]
    sr = answer_to_sr("Q?", "A.", sources, MODEL, ADAPTER)
    sr.PatientID = "changed in the report only"
    assert [(len(ds), "PatientBirthDate" in ds) for ds in sources] == before
    assert before[0][1] is False  # the writer left it out: the SR filled it only in its copy
    assert {ds.PatientID for ds in sources} == {PATIENT_ID}


def test_stored_sr_is_found_and_retrieved_from_the_pacs(client, sources, caplog):
    caplog.set_level(logging.DEBUG)
    question, answer, adapter = TEXT_CASES[1]
    sr = answer_to_sr(question, answer, sources, MODEL, adapter, created=WHEN)
    assert client.store([sr]) == [sr.SOPInstanceUID]
    found = client.search_series(STUDY, Modality="SR")
    assert [(s.series_uid, s.modality, s.instance_count) for s in found] == [
        (sr.SeriesInstanceUID, "SR", 1)]
    assert sorted(client.search_studies(StudyInstanceUID=STUDY)[0].modalities) == ["CT", "SR"]
    instances = client.search_instances(STUDY, sr.SeriesInstanceUID)
    assert [i.sop_uid for i in instances] == [sr.SOPInstanceUID]
    back = client.retrieve_instance(STUDY, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    check(read_sr_answer(back), question, answer, adapter, sources)
    assert read_sr_answer(back) == read_sr_answer(sr)
    assert PATIENT_ID not in caplog.text


def test_sources_from_two_patients_are_refused(sources):
    other = copy.deepcopy(sources[0])
    other.PatientID, other.SOPInstanceUID = "synth-9999", generate_uid()
    with pytest.raises(DicomError, match="2 different patients") as raised:
        answer_to_sr("Q?", "A.", [sources[0], other], MODEL, ADAPTER)
    assert "synth" not in str(raised.value)


@pytest.mark.parametrize(("question", "answer", "model", "given", "error"), [
    ("Q?", "A.", MODEL, "none", "at least one source"),
    ("  ", "A.", MODEL, "all", "non-empty"),
    ("Q?", "", MODEL, "all", "non-empty"),
    ("Q?", "A.", " ", "all", "model_name is empty"),
])
def test_bad_arguments_are_refused(sources, question, answer, model, given, error):
    chosen = [] if given == "none" else sources
    with pytest.raises(ValueError, match=error):
        answer_to_sr(question, answer, chosen, model, ADAPTER)


def drop_question(ds):
    ds.ContentSequence = [item for item in ds.ContentSequence
                          if item.get("TextValue") != "Q?"]


def drop_evidence(ds):
    del ds.CurrentRequestedProcedureEvidenceSequence


@pytest.mark.parametrize(("spoil", "error"), [
    (drop_question, "0 Question items"),
    (drop_evidence, "missing from the evidence"),
])
def test_reports_that_are_not_ours_are_refused(sources, spoil, error):
    sr = answer_to_sr("Q?", "A.", sources, MODEL, ADAPTER)
    spoil(sr)
    with pytest.raises(DicomError, match=error):
        read_sr_answer(sr, "report.dcm")


def test_an_image_is_not_a_report(sources):
    with pytest.raises(DicomError, match="ct.dcm: not a structured report"):
        read_sr_answer(sources[0], "ct.dcm")
