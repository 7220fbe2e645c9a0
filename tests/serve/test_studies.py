"""The study routes of the real `domainvlm serve` (a subprocess on loopback), with a real Orthanc
as its PACS, a tiny base and a real LoRA adapter in a store.

Oracles: the keyed UIDs of `deid.remap_uid` (what the de-identified study must be called),
`render_views` on the original files (the pixels the model must be shown), `domainvlm.answer`
in this process (the answer the service must give), the SR read back from Orthanc with
`sr.read_sr_answer`, and a search of every byte the server wrote for planted patient data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import socket
import sqlite3
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from server import running_server

sys.path.insert(0, str(Path(__file__).parents[1] / "adapters"))
from factory import make_adapter  # noqa: E402

from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series  # noqa: E402
from domainvlm.medical.deid import patient_key, pseudonym, remap_uid  # noqa: E402
from domainvlm.medical.keys import read_key_file, write_key_file  # noqa: E402
from domainvlm.medical.orthanc import LocalOrthanc  # noqa: E402
from domainvlm.medical.pacs import PacsClient  # noqa: E402
from domainvlm.medical.series import load_volume  # noqa: E402
from domainvlm.medical.sr import read_sr_answer  # noqa: E402
from domainvlm.medical.vqa import ViewSpec, render_views  # noqa: E402

STUDY = pydicom.uid.generate_uid(entropy_srcs=["test-studies", "study"])
SERIES = [pydicom.uid.generate_uid(entropy_srcs=["test-studies", "series", n]) for n in "12"]
VIEW = {"strategy": "slabs", "count": 4, "window": "lung", "image_size": 64}  # not the default
QUESTIONS = ["Is there a nodule?", "Which side?"]
TOKENS = 4
PHI = {"PatientName": "Zebulon^Quixotic", "PatientID": "PHI-ID-73519",
       "PatientBirthDate": "19431107", "InstitutionName": "Saint Phineas Infirmary",
       "AccessionNumber": "ACC55821"}
PRIVATE = "PRIVATE-PHI-88213"
FILE_NAME = "Quibble-41177"  # in the client's file names
NEEDLES = ["zebulon", "quixotic", "phi-id-73519", "19431107", "1943-11-07", "phineas",
           "acc55821", PRIVATE.lower(), FILE_NAME.lower()]


@pytest.fixture(scope="module")
def world(tiny_models, tmp_path_factory):
    """A store holding `chest@1` (a LoRA adapter with VIEW recorded), a study of two CT series
    carrying PHI (also stored in Orthanc), keys alice and bob, and the server."""
    from domainvlm.adapters.service import db, keys
    from domainvlm.adapters.store import AdapterStore
    from domainvlm.data.views import write_views

    root = tmp_path_factory.mktemp("studies")
    base = tiny_models("llava")
    adapter = make_adapter(base, root / "adapter")
    write_views(adapter, VIEW)
    AdapterStore(root / "store").add(adapter, "chest")
    key_file = write_key_file(root / "project.key")
    rng = np.random.default_rng(3)
    series = []
    for number, uid in enumerate(SERIES, start=1):
        spec = SeriesSpec(STUDY, uid, series_number=number, attributes=PHI,
                          private={(0x0011, "PHI VENDOR"): [(0x10, "LO", PRIVATE)]})
        hu = rng.integers(-1000, 1500, size=(6, 32, 32)).astype(np.float32)
        series.append(write_ct_series(hu, root / f"series-{number}", spec))
    data_dir = root / "data"
    data_dir.mkdir()
    url = db.default_url(data_dir)
    db.upgrade(url)
    with db.session_factory(db.engine_for(url))() as session:
        tokens = {name: keys.add_key(session, name) for name in ("alice", "bob")}
    with LocalOrthanc(root / "orthanc") as orthanc:
        PacsClient(orthanc.dicomweb_url).store([path.parent for path in
                                                (series[0][0], series[1][0])])
        args = ["--model", str(base), "--store", str(root / "store"),
                "--project-key-file", str(key_file), "--pacs", f"pacs={orthanc.dicomweb_url}",
                "--max-unzipped-mb", "1", "--max-wait-ms", "1"]
        with running_server(args, data_dir) as server:
            yield {"server": server, "root": root, "base": base, "adapter": adapter,
                   "series": series, "key": read_key_file(key_file), "orthanc": orthanc,
                   "alice": {"Authorization": f"Bearer {tokens['alice']}"},
                   "bob": {"Authorization": f"Bearer {tokens['bob']}"}}


def call(world, method: str, path: str, who: str = "alice", **kwargs) -> requests.Response:
    return requests.request(method, world["server"].url + path, headers=world[who],
                            timeout=300, **kwargs)


@pytest.fixture(scope="module")
def done(world):
    """One upload with PHI in its files and file names, its views and a PNG, questions to the
    adapter; one import from the PACS, asked with SR write-back."""
    files = [("files", (f"{FILE_NAME}-{PHI['PatientName']}-{n}.dcm", path.read_bytes()))
             for n, path in enumerate(world["series"][0] + world["series"][1], start=1)]
    upload = call(world, "POST", "/v1/studies", files=files)
    assert upload.status_code == 201, upload.text
    study = upload.json()
    views = call(world, "GET", f"/v1/studies/{study['id']}/views", params={"adapter": "chest"})
    assert views.status_code == 200, views.text
    image = call(world, "GET", views.json()["images"][0]["url"])
    second = call(world, "GET", f"/v1/studies/{study['id']}/views",
                  params={"series": remap_uid(SERIES[1], world["key"])})
    asked = call(world, "POST", f"/v1/studies/{study['id']}/ask",
                 json={"questions": QUESTIONS, "adapter": "chest@1",
                       "max_new_tokens": TOKENS})
    assert asked.status_code == 200, asked.text
    imported = call(world, "POST", "/v1/studies/pacs", json={"study_instance_uid": STUDY})
    assert imported.status_code == 201, imported.text
    sr = call(world, "POST", f"/v1/studies/{imported.json()['id']}/ask",
              json={"questions": QUESTIONS[:1], "adapter": "chest@1", "write_sr": True,
                    "max_new_tokens": TOKENS})
    assert sr.status_code == 200, sr.text
    return {"study": study, "views": views.json(), "png": image, "second": second.json(),
            "asked": asked.json(), "imported": imported.json(), "sr": sr.json()}


def test_upload_is_deidentified_and_shown_as_the_adapter_was_trained(world, done):
    key, study = world["key"], done["study"]
    assert study["study_uid"] == remap_uid(STUDY, key)
    assert [s["uid"] for s in study["series"]] == [remap_uid(uid, key) for uid in SERIES]
    assert (study["instances"], study["modality"], study["source"]) == (12, "CT", "upload")
    views = done["views"]
    assert views["series_uid"] == remap_uid(SERIES[0], key)  # the first series with a volume
    assert views["view_from"] == "adapter"
    assert views["view"] == dataclasses.asdict(ViewSpec(**VIEW))
    expected = render_views(load_volume(world["series"][0][0].parent), ViewSpec(**VIEW))
    assert len(views["images"]) == len(expected) == 1
    assert views["images"][0]["description"] == expected[0].description
    assert done["png"].headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(done["png"].content)).convert("RGB"))
    assert np.array_equal(shown, np.asarray(expected[0].to_pil().convert("RGB")))
    assert done["second"]["series_uid"] == remap_uid(SERIES[1], key)
    assert done["second"]["view_from"] == "default"
    audit = rows(world, "SELECT study_id, adapter FROM audit_events WHERE path = ? AND status "
                 "= 200", "/v1/studies/{study_id}/views")
    assert (study["id"], "chest@1") in audit  # the ref the short name "chest" resolved to


def rows(world, query: str, *args) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(world["server"].data_dir / "serve.db")) as db:
        return db.execute(query, args).fetchall()


def test_answers_equal_domainvlm_answer_on_the_same_series(world, done):
    from domainvlm import answer

    asked = done["asked"]
    expected = answer(world["adapter"], world["series"][0][0].parent, QUESTIONS,
                      max_new_tokens=TOKENS)
    assert [a["answer"] for a in asked["answers"]] == expected
    assert [a["question"] for a in asked["answers"]] == QUESTIONS
    assert asked["adapter"] == "chest@1" and asked["view_from"] == "adapter"
    assert asked["series_uid"] == remap_uid(SERIES[0], world["key"])
    assert asked["view"] == dataclasses.asdict(ViewSpec(**VIEW))
    assert asked["base"]["model_type"] == "llava"
    assert {"render_ms", "queue_ms", "model_ms", "total_ms"} <= set(asked["timings"])


def test_pacs_import_and_sr_written_back(world, done):
    key, imported, reply = world["key"], done["imported"], done["sr"]
    assert imported["study_uid"] == remap_uid(STUDY, key) and imported["source"] == "pacs"
    assert imported["instances"] == 12
    sr_uid = reply["answers"][0]["sr_uid"]
    assert sr_uid
    assert rows(world, "SELECT sr_uid FROM answers WHERE id = ?",
                reply["answers"][0]["id"]) == [(sr_uid,)]
    assert call(world, "GET", "/v1/studies/pacs").json() == {"pacs": ["pacs"]}  # names only
    pacs = PacsClient(world["orthanc"].dicomweb_url)
    found = [r for r in pacs.search_instances(imported["study_uid"]) if r.sop_uid == sr_uid]
    assert len(found) == 1
    ds = pacs.retrieve_instance(found[0].study_uid, found[0].series_uid, sr_uid)
    report = read_sr_answer(ds)
    assert (report.question, report.answer) == (QUESTIONS[0], reply["answers"][0]["answer"])
    assert report.adapter == "chest@1"
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in world["series"][0]]
    assert set(report.instance_uids) == {remap_uid(ds.SOPInstanceUID, key) for ds in sources}
    assert report.series_uids == (remap_uid(SERIES[0], key),)
    for name, body in (("elsewhere", {"pacs": "elsewhere"}),
                       ("a URL", {"pacs": "http://127.0.0.1:1/dicom-web"})):
        refused = call(world, "POST", "/v1/studies/pacs",
                       json={**body, "study_instance_uid": STUDY})
        assert refused.status_code == 404, name  # only configured names are fetched


def zipped(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def bad_uploads(series: list[Path]) -> list[tuple[str, list, int, str]]:
    """(case, [(field, bytes)], status, what the problem says)."""
    one = series[0].read_bytes()
    return [
        ("not DICOM as file 2", [("files", one), ("files", b"hello, not a scan")], 400,
         "file 2"),
        ("damaged DICOM", [("files", one), ("files", one[:200])], 400, "file 2"),
        ("a zip among files", [("files", one), ("files", zipped({"a.dcm": one}))], 400,
         "file 2"),
        ("zip slip", [("files", zipped({"ok.dcm": one, f"../{FILE_NAME}.dcm": one}))], 400,
         "zip member"),
        ("zip bomb", [("files", zipped({f"{FILE_NAME}.dcm": bytes(2 * 2**20)}))], 413,
         "zip bomb"),
        ("no files", [("note", b"x")], 422, "no file"),
    ]


def test_bad_uploads_are_refused_by_position_and_leave_nothing(world):
    data_dir = world["server"].data_dir

    def studies() -> list[str]:
        return sorted(p.name for p in (data_dir / "studies").glob("*"))

    before = studies()
    for case, parts, status, says in bad_uploads(world["series"][0]):
        files = [(field, (f"{FILE_NAME}-{n}.dcm", blob)) for n, (field, blob) in
                 enumerate(parts)]
        reply = call(world, "POST", "/v1/studies", files=files)
        assert reply.status_code == status, (case, reply.text)
        assert says in reply.json()["detail"], case
        assert FILE_NAME not in reply.text, case  # a client's file name is never echoed
        assert reply.headers["content-type"] == "application/problem+json"
        assert list((data_dir / "incoming").glob("*")) == [], case
        assert studies() == before, case


def test_a_client_leaving_mid_upload_leaves_nothing(world):
    server, incoming = world["server"], world["server"].data_dir / "incoming"
    host, port = server.url.removeprefix("http://").split(":")
    part = (b"--b0und\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.dcm\""
            b"\r\n\r\n" + world["series"][0][0].read_bytes()[:4000])
    head = (f"POST /v1/studies HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: {world['alice']['Authorization']}\r\n"
            "Content-Type: multipart/form-data; boundary=b0und\r\n"
            "Content-Length: 900000\r\n\r\n").encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + part)
        assert wait_for(lambda: any(incoming.glob("*/upload/file-00001")))  # arrived
    assert wait_for(lambda: not any(incoming.iterdir()))


def wait_for(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_study_is_seen_only_by_its_owner(world, done):
    files = [("files", ("study.zip", zipped({f"{n}.dcm": p.read_bytes() for n, p in
                                             enumerate(world["series"][0])})))]
    mine = call(world, "POST", "/v1/studies", files=files).json()
    assert mine["study_uid"] == done["study"]["study_uid"]  # same key, same pseudonym
    assert mine["instances"] == 6
    path = f"/v1/studies/{mine['id']}"
    for method, suffix, body in (("GET", "", None), ("GET", "/views", None),
                                 ("GET", "/views/0.png", None),
                                 ("POST", "/ask", {"questions": ["Any?"]}),
                                 ("DELETE", "", None)):
        assert call(world, method, path + suffix, "bob", json=body).status_code == 404
    assert mine["id"] not in [s["id"] for s in call(world, "GET", "/v1/studies", "bob").json()]
    listed = [s["id"] for s in call(world, "GET", "/v1/studies").json()]
    assert listed[0] == mine["id"] and done["study"]["id"] in listed  # newest first
    folder = world["server"].data_dir / "studies" / mine["id"]
    assert folder.is_dir()
    assert call(world, "DELETE", path).status_code == 204
    assert call(world, "GET", path).status_code == 404 and not folder.exists()


def test_no_planted_patient_data_in_any_byte_the_server_wrote(world, done):
    written = [p for p in world["server"].data_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".dcm" for p in written) and any("serve.db" in p.name
                                                            for p in written)
    for path in [*written, world["server"].log]:
        text = path.read_bytes().lower()
        leaked = [needle for needle in NEEDLES if needle.encode() in text]
        assert not leaked, f"{path.relative_to(world['root'])}: {leaked}"
    # The log names no patient at all, not even by the pseudonym the stored files carry.
    first = pydicom.dcmread(world["series"][0][0], stop_before_pixels=True)
    alias = pseudonym(patient_key(first), world["key"])
    assert alias.encode() not in world["server"].log.read_bytes()


def test_without_a_project_key_or_a_pacs_no_study_is_taken(tmp_path):
    from fastapi.testclient import TestClient

    from domainvlm.adapters.service import db
    from domainvlm.adapters.service.app import create_app
    from domainvlm.adapters.service.settings import ServeSettings

    settings = ServeSettings(model="unused", data_dir=tmp_path)
    db.upgrade(settings.url_of_database)
    client = TestClient(create_app(settings))
    reply = client.post("/v1/studies", files=[("files", ("a.dcm", b"DICM"))])
    assert reply.status_code == 503
    assert "--project-key-file" in reply.json()["detail"]
    assert not (tmp_path / "incoming").exists()
    reply = client.post("/v1/studies/pacs", json={"study_instance_uid": STUDY})
    assert reply.status_code == 409 and "--pacs" in reply.json()["detail"]



def test_leftover_raw_folders_are_cleared_but_not_a_live_replicas(tmp_path):
    import os
    import subprocess

    from domainvlm.medical.study_intake import clear_incoming, incoming_dir

    host = socket.gethostname()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    incoming = incoming_dir(tmp_path)
    names = {"dead": f"raw-{host}-{finished.pid}-ab_1", "live": f"raw-{host}-{os.getpid()}-cd2",
             "other host": "raw-elsewhere-7-ef3", "old other host": "raw-elsewhere-8-gh4"}
    for name in names.values():
        (incoming / name / "upload").mkdir(parents=True)
    old = time.time() - 2 * 24 * 3600
    os.utime(incoming / names["old other host"], (old, old))
    assert sorted(clear_incoming(tmp_path)) == sorted([names["dead"], names["old other host"]])
    assert sorted(p.name for p in incoming.iterdir()) == sorted(
        [names["live"], names["other host"]])
