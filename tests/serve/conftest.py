"""Databases for the service's tests: SQLite in the test's folder, and a real PostgreSQL
server (one per test module, a fresh database per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import fresh_database, running_postgres

from domainvlm.adapters.service.db import default_url


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """The URL of a PostgreSQL server started for this module (its `postgres` database)."""
    with running_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return default_url(tmp_path)
    return fresh_database(request.getfixturevalue("postgres_url"))
