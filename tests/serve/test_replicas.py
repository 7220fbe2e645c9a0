"""Two replicas of `domainvlm serve` on one real PostgreSQL (and one shared data folder, as
behind a load balancer): a key, a study and its answers made through one are seen, and
answered the same, through the other."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import requests
from postgres import fresh_database, running_postgres
from server import running_server

from domainvlm.client import Client, ServiceError


@pytest.fixture(scope="module")
def replicas(tiny_models, tmp_path_factory):
    from domainvlm.adapters.service import db, keys
    from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series
    from domainvlm.medical.keys import write_key_file

    root = tmp_path_factory.mktemp("replicas")
    spec = SeriesSpec(pydicom.uid.generate_uid(entropy_srcs=["replicas", "study"]),
                      pydicom.uid.generate_uid(entropy_srcs=["replicas", "series"]))
    hu = np.random.default_rng(5).integers(-1000, 1500, size=(4, 32, 32)).astype(np.float32)
    series = write_ct_series(hu, root / "series", spec)
    key_file = write_key_file(root / "project.key")
    with running_postgres() as server_url:
        url = fresh_database(server_url)
        db.upgrade(url)
        engine = db.engine_for(url)
        with db.session_factory(engine)() as session:
            tokens = {name: keys.add_key(session, name) for name in ("alice", "bob")}
        args = ["--model", str(tiny_models("llava")), "--database", url,
                "--project-key-file", str(key_file)]
        with running_server(args, root / "shared") as one, \
                running_server(args, root / "shared") as two:
            yield {"one": one, "two": two, "tokens": tokens, "series": series, "url": url,
                   "engine": engine}
        engine.dispose()


def test_a_study_made_on_one_replica_is_listed_and_answered_alike_on_the_other(replicas
                                                                               ) -> None:
    alice = replicas["tokens"]["alice"]
    one = Client(replicas["one"].url, alice)
    two = Client(replicas["two"].url, alice)
    study = one.upload_study(replicas["series"])
    assert [s["id"] for s in two.studies()] == [study["id"]]
    assert two.study(study["id"])["study_uid"] == study["study_uid"]
    question = ["Is there a nodule?"]
    here = one.ask(study["id"], question, max_new_tokens=6)
    there = two.ask(study["id"], question, max_new_tokens=6)
    assert here["answers"][0]["answer"] == there["answers"][0]["answer"]
    assert here["series_uid"] == there["series_uid"]
    with pytest.raises(ServiceError) as hidden:  # ownership holds across replicas too
        Client(replicas["two"].url, replicas["tokens"]["bob"]).study(study["id"])
    assert hidden.value.status == 404


def test_a_key_revoked_through_one_database_is_refused_by_both_replicas(replicas) -> None:
    from domainvlm.adapters.service import db, keys

    for name in ("one", "two"):
        Client(replicas[name].url, replicas["tokens"]["bob"]).adapters()
    with db.session_factory(replicas["engine"])() as session:
        keys.revoke_key(session, "bob")
    for name in ("one", "two"):
        with pytest.raises(ServiceError) as refused:
            Client(replicas[name].url, replicas["tokens"]["bob"]).adapters()
        assert refused.value.status == 401


def test_both_replicas_write_one_audit_trail(replicas) -> None:
    from sqlalchemy import text

    ids = []
    for name in ("one", "two"):
        reply = requests.get(replicas[name].url + "/v1/adapters", timeout=30,
                             headers={"X-API-Key": replicas["tokens"]["alice"]})
        ids.append(reply.headers["x-request-id"])
    with replicas["engine"].connect() as connection:
        rows = connection.execute(text("select request_id, key, path from audit_events "
                                       "where request_id in (:a, :b)"),
                                  {"a": ids[0], "b": ids[1]}).all()
    assert sorted(rows) == sorted([(rid, "alice", "/v1/adapters") for rid in ids])
