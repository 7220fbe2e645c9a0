"""DICOMweb against a real Orthanc on 127.0.0.1: STOW, QIDO, WADO, errors, start and stop."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series
from domainvlm.medical.errors import PacsError
from domainvlm.medical.io import read_frames
from domainvlm.medical.orthanc import LocalOrthanc, free_port
from domainvlm.medical.pacs import PacsClient

SLICES, SIZE = 6, 32
PATIENT_ID, PATIENT_NAME = "synth-0001", "Anon^Synth"
STUDY = generate_uid(entropy_srcs=["test-orthanc-pacs", "study"])
SERIES = [generate_uid(entropy_srcs=["test-orthanc-pacs", "series", str(n)]) for n in (1, 2)]
PHI_NAME = "Doe^Jane"  # a search filter value that must never reach a message or a log


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Two CT series of one study: {series_uid: (hu volume (z, y, x), [paths])}."""
    root = tmp_path_factory.mktemp("ct")
    rng = np.random.default_rng(7)
    out = {}
    for number, series_uid in enumerate(SERIES, start=1):
        hu = rng.integers(-1000, 1500, size=(SLICES, SIZE, SIZE)).astype(np.float32)
        spec = SeriesSpec(STUDY, series_uid, series_number=number,
                          description=f"SYNTHETIC CT {number}",
                          attributes={"PatientName": PATIENT_NAME, "PatientID": PATIENT_ID,
                                      "PatientIdentityRemoved": "YES"})
        out[series_uid] = (hu, write_ct_series(hu, root / f"series-{number}", spec))
    return out


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = LocalOrthanc(tmp_path_factory.mktemp("orthanc"))
    with server:
        process = server.process
        yield server
    assert process is not None and process.poll() is not None  # stopped and reaped
    assert not server.is_running


@pytest.fixture(scope="module")
def client(orthanc):
    return PacsClient(orthanc.dicomweb_url)


@pytest.fixture(scope="module")
def stored(client, written):
    """SOP UIDs the PACS reported stored; one series as Datasets, one as a folder path."""
    first, second = SERIES
    datasets = [pydicom.dcmread(p) for p in written[first][1]]
    return client.store(datasets) + client.store([written[second][1][0].parent])


def sop_uids(paths) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def test_stow_reports_every_instance_stored(stored, written):
    expected = [uid for series in SERIES for uid in sop_uids(written[series][1])]
    assert stored == expected


STUDY_CASES = [
    ({"PatientID": PATIENT_ID}, 1),
    ({"PatientID": "synth-*"}, 1),
    ({"PatientName": "ANON*"}, 1),  # wildcard, case-insensitive person-name matching
    ({"StudyInstanceUID": [generate_uid(entropy_srcs=["other"]), STUDY]}, 1),  # UID list
    ({"StudyDate": "20240101-20240131"}, 1),
    ({"ModalitiesInStudy": "CT"}, 1),
    ({"PatientID": "synth-9999"}, 0),
    ({"PatientName": "Nobody*"}, 0),
    ({"StudyDate": "19990101"}, 0),
    ({"ModalitiesInStudy": "MR"}, 0),
]


@pytest.mark.parametrize(("filters", "count"), STUDY_CASES)
def test_qido_studies(client, stored, filters, count):
    found = client.search_studies(**filters)
    assert len(found) == count
    if count:
        record = found[0]
        assert record.study_uid == STUDY and record.study_date == "20240101"
        assert record.modalities == ("CT",)
        assert (record.series_count, record.instance_count) == (2, 2 * SLICES)
        assert (record.patient_id, record.patient_name) == (PATIENT_ID, PATIENT_NAME)
        assert PATIENT_ID not in repr(record) and "Anon" not in repr(record)


SERIES_CASES = [
    (STUDY, {}, [0, 1]),
    (STUDY, {"Modality": "CT"}, [0, 1]),
    (STUDY, {"SeriesNumber": 2}, [1]),
    (STUDY, {"SeriesInstanceUID": SERIES[0]}, [0]),
    (None, {"StudyInstanceUID": STUDY}, [0, 1]),
    (STUDY, {"Modality": "MR"}, []),
    (generate_uid(entropy_srcs=["no such study"]), {}, []),
]


@pytest.mark.parametrize(("study_uid", "filters", "expected"), SERIES_CASES)
def test_qido_series(client, stored, study_uid, filters, expected):
    found = sorted(client.search_series(study_uid, **filters), key=lambda r: r.series_number)
    assert [r.series_uid for r in found] == [SERIES[i] for i in expected]
    for record, index in zip(found, expected, strict=True):
        assert record.study_uid == STUDY and record.modality == "CT"
        assert record.series_number == index + 1
        assert record.description == f"SYNTHETIC CT {index + 1}"
        assert record.instance_count == SLICES


@pytest.mark.parametrize(("filters", "numbers"), [
    ({}, [1, 2, 3, 4, 5, 6]),
    ({"InstanceNumber": 3}, [3]),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, [1, 2, 3, 4, 5, 6]),
    ({"InstanceNumber": 99}, []),
])
def test_qido_instances(client, stored, written, filters, numbers):
    found = client.search_instances(STUDY, SERIES[0], **filters)
    found.sort(key=lambda r: r.instance_number)
    assert [r.instance_number for r in found] == numbers
    uids = sop_uids(written[SERIES[0]][1])
    assert [r.sop_uid for r in found] == [uids[n - 1] for n in numbers]
    assert all((r.study_uid, r.series_uid) == (STUDY, SERIES[0]) for r in found)


def test_qido_instances_of_a_whole_study(client, stored):
    found = client.search_instances(STUDY)
    assert sorted({r.series_uid for r in found}) == sorted(SERIES)
    assert len(found) == 2 * SLICES


@pytest.mark.parametrize("series_index", [0, 1])
def test_wado_series_equals_what_was_stored(client, stored, written, series_index):
    series_uid = SERIES[series_index]
    hu, paths = written[series_uid]
    retrieved = client.retrieve_series(STUDY, series_uid)
    originals = [pydicom.dcmread(p) for p in paths]
    assert [str(ds.SOPInstanceUID) for ds in retrieved] == sop_uids(paths)
    for got, original in zip(retrieved, originals, strict=True):
        assert (got.StudyInstanceUID, got.SeriesInstanceUID) == (STUDY, series_uid)
        assert got.SOPClassUID == original.SOPClassUID
        assert np.array_equal(got.pixel_array, original.pixel_array)
    assert np.array_equal(np.concatenate([read_frames(ds) for ds in retrieved]), hu)


def test_retrieve_series_to_writes_whole_files_atomically(client, stored, written, tmp_path):
    hu, paths = written[SERIES[1]]
    folder = tmp_path / "download"
    written_paths = client.retrieve_series_to(folder, STUDY, SERIES[1])
    uids = sop_uids(paths)
    assert [p.name for p in written_paths] == sorted(f"{uid}.dcm" for uid in uids)
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in written_paths]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, written_paths)}
    volume = np.concatenate([read_frames(by_uid[uid]) for uid in uids])
    assert np.array_equal(volume, hu)


def unused_url() -> str:
    return f"http://127.0.0.1:{free_port()}/dicom-web"


ERROR_CASES = [
    ("unknown study", lambda c, o: c.retrieve_series(generate_uid(), SERIES[0]), "HTTP 404"),
    ("unknown series", lambda c, o: c.retrieve_series(STUDY, generate_uid()), "HTTP 404"),
    ("unknown study to folder",
     lambda c, o: c.retrieve_series_to(o.workdir / "dl", generate_uid(), SERIES[0]),
     "HTTP 404"),
    ("wrong root", lambda c, o: PacsClient(f"{o.url}/not-dicomweb").search_studies(
        PatientName=PHI_NAME), "HTTP 404"),
    ("nothing listening", lambda c, o: PacsClient(unused_url()).search_studies(
        PatientName=PHI_NAME, PatientID="MRN-12345"), "cannot connect"),
    ("not http", lambda c, o: PacsClient(f"ftp://127.0.0.1:{o.http_port}/dicom-web"),
     "is not http(s)"),
]


@pytest.mark.parametrize(("label", "call", "expected"), ERROR_CASES,
                         ids=[case[0] for case in ERROR_CASES])
def test_failures_are_pacs_errors_without_patient_data(client, orthanc, stored, caplog,
                                                       label, call, expected):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PacsError) as raised:
        call(client, orthanc)
    message = str(raised.value)
    assert expected in message
    if expected.startswith("HTTP"):
        assert "/dicom-web" in message or "/not-dicomweb" in message
        assert "check" in message  # says what to do
    for secret in ("Doe", "Jane", "MRN-12345", "PatientName", "%5E"):
        assert secret not in message
        assert secret not in caplog.text


def test_search_logs_have_the_query_redacted(client, stored, caplog):
    caplog.set_level(logging.DEBUG)
    assert client.search_studies(PatientName="ANON*", PatientID=PATIENT_ID)
    assert "<query redacted>" in caplog.text
    assert "ANON" not in caplog.text and PATIENT_ID not in caplog.text


def test_unknown_filter_keyword_is_refused_before_any_request(client):
    with pytest.raises(ValueError, match="'PatientNme' is not a DICOM keyword") as raised:
        client.search_studies(PatientNme=PHI_NAME)
    assert "Doe" not in str(raised.value)


@pytest.mark.parametrize("call", [
    lambda c: c.retrieve_series(STUDY, "1.2.abc"),
    lambda c: c.retrieve_instance(STUDY, SERIES[0], "1." + "2" * 70),
    lambda c: c.search_series("not-a-uid"),
])
def test_malformed_uids_are_refused_before_any_request(client, call):
    with pytest.raises(ValueError, match="is not a DICOM UID"):
        call(client)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def test_local_orthanc_start_config_and_stop(tmp_path):
    server = LocalOrthanc(tmp_path / "pacs")
    with server:
        process = server.process
        assert server.is_running and server.url.startswith("http://127.0.0.1:")
        assert get_json(f"{server.url}/system")["Version"]
        assert get_json(f"{server.dicomweb_url}/studies") == []
        config = json.loads(server.config_path.read_text())
        assert config["RemoteAccessAllowed"] is False
        assert config["DicomServerEnabled"] is False
        assert config["HttpPort"] == server.http_port
        assert config["StorageDirectory"].startswith(str(tmp_path))
        # A second server on a port that is taken fails clearly instead of answering for it.
        with pytest.raises(PacsError, match="already in use"):
            LocalOrthanc(tmp_path / "clash", http_port=server.http_port).start()
    assert process.poll() is not None and not server.is_running
    with pytest.raises(urllib.error.URLError):
        get_json(f"{server.url}/system")
    with pytest.raises(PacsError, match="cannot connect"):
        PacsClient(server.dicomweb_url).search_studies()


def test_missing_orthanc_says_how_to_install(tmp_path):
    server = LocalOrthanc(tmp_path / "pacs", executable=str(tmp_path / "no-such-orthanc"))
    with pytest.raises(PacsError, match="apt-get install orthanc orthanc-dicomweb"):
        server.start()
    assert not server.is_running


def test_a_relative_working_folder_works(written, tmp_path, monkeypatch):
    """The README's `LocalOrthanc("runs/pacs")`: Orthanc runs inside its folder, so a relative
    folder must not reach it (or its config) as given."""
    monkeypatch.chdir(tmp_path)
    slice_path = written[SERIES[0]][1][0]
    with LocalOrthanc("runs/pacs") as pacs:
        assert PacsClient(pacs.dicomweb_url).store([slice_path]) == sop_uids([slice_path])
    folder = tmp_path / "runs" / "pacs"
    assert (folder / "orthanc.json").is_file() and any((folder / "storage").iterdir())
    assert not (folder / "runs").exists()
