"""A real PostgreSQL server for tests: initdb into a temp folder, pg_ctl on a loopback port.

PostgreSQL refuses to run as root, so as root the folder is given to user `postgres` and the
server runs as that user (`runuser`). Trust authentication on 127.0.0.1 and a socket in the
folder only: nothing outside this machine can reach it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "app"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(*command: str) -> None:
    """Run a server tool, as user postgres when we are root; its output goes into the error."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}")


@contextmanager
def running_postgres(parent: Path | None = None) -> Iterator[str]:
    """Start a fresh PostgreSQL 15; yields the SQLAlchemy URL of its `postgres` database (user
    `app`), stops the server and deletes its folder on exit. `parent` (default the system temp
    folder) must be reachable by user postgres: pytest's own tmp folders are not."""
    folder = Path(tempfile.mkdtemp(prefix="pg-", dir=parent))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", _free_port()
    try:
        _run(str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8",
             "--no-sync")
        # no fsync: a test server never outlives a crash, and it stops in a blink
        _run(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60",
             "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off", "start")
        try:
            yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
        finally:
            _run(str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new empty database on the server of `server_url`; returns its URL."""
    import sqlalchemy

    name = f"test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return str(sqlalchemy.make_url(server_url).set(database=name))
