"""The service's database on SQLite and a real PostgreSQL: migrations equal to the models, rows
that survive a restart, replicas upgrading together, and API keys that are never stored."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from postgres import fresh_database
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from domainvlm.adapters.service import db, keys
from domainvlm.adapters.service.keys_cli import keys_app
from domainvlm.errors import ConfigError

# A replica's start: import everything, wait for the common start time, upgrade.
REPLICA = """
import sys, time
import alembic.command
from domainvlm.adapters.service.db import upgrade
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
upgrade(sys.argv[1])
"""


def schema_drift(url: str) -> list:
    """What Alembic's autogenerate would change to make the database match the models."""
    engine = db.engine_for(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, db.Base.metadata)
    finally:
        engine.dispose()


@pytest.fixture
def session(database_url: str):
    db.upgrade(database_url)
    engine = db.engine_for(database_url)
    with db.session_factory(engine)() as session:
        yield session
    engine.dispose()


def test_the_migrations_build_the_models_schema_and_run_twice(database_url: str) -> None:
    db.upgrade(database_url)
    db.upgrade(database_url)  # a restart: nothing to do
    assert schema_drift(database_url) == []
    engine = db.engine_for(database_url)
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT version_num FROM alembic_version")) == "0001"
    engine.dispose()


def test_rows_survive_a_restart_with_their_times_in_utc(database_url: str) -> None:
    db.upgrade(database_url)
    at = datetime(2026, 12, 5, 16, 30, 1, 250000, tzinfo=timezone(timedelta(hours=2)))
    engine = db.engine_for(database_url)
    with db.session_factory(engine)() as session:
        study = db.Study(owner="alice", created=at, source="upload", study_uid="2.25.1",
                         modality="CT", instances=3, folder="studies/x",
                         series=[{"uid": "2.25.2", "description": "axial", "modality": "CT",
                                  "instances": 3}])
        session.add(study)
        session.flush()
        session.add(db.Answer(owner="alice", study_id=study.id, adapter="chest@1", question="q",
                              answer="a", view={"window": [-1000, 400]}, seconds=0.5))
        session.add(db.AuditEvent(request_id="r1", key="alice", method="POST",
                                  path="/v1/studies", study_id=study.id, status=201,
                                  latency_ms=12.5))
        session.commit()
        study_id = study.id
    engine.dispose()

    engine = db.engine_for(database_url)  # a new process would see the same
    with db.session_factory(engine)() as session:
        study = session.get(db.Study, study_id)
        assert study.created == at and study.created.tzinfo == timezone.utc
        assert study.series[0]["description"] == "axial"
        answer = session.scalar(select(db.Answer))
        assert (answer.study_id, answer.view) == (study_id, {"window": [-1000, 400]})
        event = session.scalar(select(db.AuditEvent))
        assert event.at.tzinfo == timezone.utc and event.id == 1
        # deleting a study deletes its answers (foreign keys are on), the audit trail stays
        session.delete(study)
        session.commit()
        assert session.scalar(select(func.count()).select_from(db.Answer)) == 0
        assert session.scalar(select(func.count()).select_from(db.AuditEvent)) == 1
    engine.dispose()


def test_a_naive_time_is_refused(session) -> None:
    session.add(db.AuditEvent(at=datetime(2026, 1, 1), request_id="r", key="-", method="GET",
                              path="/health", status=200, latency_ms=1.0))
    with pytest.raises(Exception, match="naive datetime"):
        session.commit()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    db.upgrade(db.default_url(tmp_path))
    with sqlite3.connect(tmp_path / "serve.db") as plain:  # WAL is a property of the file
        assert plain.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_threads_share_one_engine(database_url: str) -> None:
    db.upgrade(database_url)
    engine = db.engine_for(database_url)
    sessions = db.session_factory(engine)

    def write(worker: int) -> None:
        for i in range(10):
            with sessions() as session:
                session.add(db.AuditEvent(request_id=f"{worker}-{i}", key="-", method="GET",
                                          path="/health", status=200, latency_ms=1.0))
                session.commit()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(db.AuditEvent)) == 60
    engine.dispose()


def test_replicas_upgrading_one_postgresql_together_all_succeed(postgres_url: str) -> None:
    url = fresh_database(postgres_url)
    start = time.time() + 2  # after every replica has imported what it needs
    replicas = [subprocess.Popen([sys.executable, "-c", REPLICA, url, str(start)],
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [replica.communicate(timeout=60)[1] for replica in replicas]
    assert [replica.returncode for replica in replicas] == [0, 0, 0], errors
    assert schema_drift(url) == []


def test_threads_upgrading_one_database_together_all_succeed(tmp_path: Path) -> None:
    url = db.default_url(tmp_path)
    start = threading.Barrier(4)
    done: list[str] = []

    def upgrade() -> None:
        start.wait()
        db.upgrade(url)
        done.append(url)

    threads = [threading.Thread(target=upgrade, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert len(done) == 4
    assert schema_drift(url) == []


def test_an_unreachable_database_is_one_error_without_its_password() -> None:
    with pytest.raises(ConfigError, match="cannot open the database") as caught:
        db.upgrade("postgresql://app:s3cret@127.0.0.1:1/serve")
    assert "s3cret" not in str(caught.value)


def test_a_database_from_a_newer_version_is_refused_clearly(tmp_path: Path) -> None:
    url = db.default_url(tmp_path)
    db.upgrade(url)
    with sqlite3.connect(tmp_path / "serve.db") as plain:
        plain.execute("UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(ConfigError, match="cannot be migrated.*'0099'.*newer domainvlm"):
        db.upgrade(url)


def test_keys_are_found_only_whole_and_live(session) -> None:
    alice = keys.add_key(session, "alice", rate_per_minute=30)
    bob = keys.add_key(session, "bob")
    assert alice.startswith("dvk_") and len(alice) == 4 + 43 and alice != bob
    # a key that shares alice's prefix (1 in 2^48 by chance): every candidate is checked
    twin = alice[:12] + keys.new_key()[12:]
    session.add(db.ApiKey(name="twin", prefix=twin[:12], digest=keys.digest(twin)))
    session.commit()

    assert keys.find_key(session, alice).name == "alice"
    assert keys.find_key(session, alice).rate_per_minute == 30
    assert keys.find_key(session, twin).name == "twin"
    assert keys.find_key(session, bob).name == "bob"
    assert keys.find_key(session, keys.new_key()) is None
    tail = "A" if alice[-1] != "A" else "B"
    assert keys.find_key(session, alice[:-1] + tail) is None  # same prefix, other key
    assert keys.find_key(session, alice[:12]) is None
    assert keys.find_key(session, "") is None

    keys.revoke_key(session, "alice")
    assert keys.find_key(session, alice) is None
    assert keys.find_key(session, bob).name == "bob"
    assert [row.name for row in keys.list_keys(session)] == ["alice", "bob", "twin"]


@pytest.mark.parametrize(("name", "rate", "error"), [
    ("alice", None, "exists"), ("", None, "key name"), ("a b", None, "key name"),
    ("x" * 101, None, "key name"), ("carol", 0, "--rate")])
def test_bad_key_requests_are_refused(tmp_path: Path, name: str, rate: int | None,
                                      error: str) -> None:
    url = db.default_url(tmp_path)
    db.upgrade(url)
    engine = db.engine_for(url)
    with db.session_factory(engine)() as session:
        keys.add_key(session, "alice")
        with pytest.raises(ConfigError, match=error):
            keys.add_key(session, name, rate)
        with pytest.raises(ConfigError, match="no API key named 'nobody'"):
            keys.revoke_key(session, "nobody")
        assert [row.name for row in keys.list_keys(session)] == ["alice"]
    engine.dispose()


def test_the_database_never_holds_a_key(tmp_path: Path) -> None:
    url = db.default_url(tmp_path)
    db.upgrade(url)
    engine = db.engine_for(url)
    with db.session_factory(engine)() as session:
        made = [keys.add_key(session, f"user{n}") for n in range(3)]
        keys.revoke_key(session, "user1")
    engine.dispose()
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("serve.db*"))
    for key in made:
        assert keys.digest(key).encode() in stored  # we are searching the right bytes
        assert key.encode() not in stored and key[12:].encode() not in stored


def test_the_keys_command_adds_lists_and_revokes(database_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    where = ["--database", database_url]
    added = runner.invoke(keys_app, ["add", "alice", "--rate", "5", *where])
    assert added.exit_code == 0, added.output
    key = added.stdout.strip()
    assert "cannot be shown again" in added.stderr and key not in added.stderr

    engine = db.engine_for(database_url)
    sessions = db.session_factory(engine)
    with sessions() as session:
        assert keys.find_key(session, key).rate_per_minute == 5

    listed = runner.invoke(keys_app, ["list", *where])
    assert listed.exit_code == 0
    row = listed.stdout.splitlines()[1].split()
    assert row[0] == "alice" and row[1] == key[:12] + "…" and row[3:] == ["-", "5"]
    assert key not in listed.output and key[12:] not in listed.output

    again = runner.invoke(keys_app, ["add", "alice", *where])
    assert again.exit_code != 0 and isinstance(again.exception, ConfigError)

    revoked = runner.invoke(keys_app, ["revoke", "alice", *where])
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    with sessions() as session:
        assert keys.find_key(session, key) is None
    assert runner.invoke(keys_app, ["list", *where]).stdout.splitlines()[1].split()[3] != "-"
    engine.dispose()


def test_the_keys_command_defaults_to_the_data_folder(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(db.DATA_ENV, str(tmp_path / "data"))
    key = CliRunner().invoke(keys_app, ["add", "alice"]).stdout.strip()
    assert (tmp_path / "data" / "serve.db").is_file()
    other = tmp_path / "elsewhere"
    assert CliRunner().invoke(keys_app, ["add", "bob", "--data-dir", str(other)]).exit_code == 0
    engine = db.engine_for(db.default_url(tmp_path / "data"))
    with db.session_factory(engine)() as session:
        assert [row.name for row in keys.list_keys(session)] == ["alice"]
        assert keys.find_key(session, key).name == "alice"
    engine.dispose()
