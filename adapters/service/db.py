"""The service's database: SQLAlchemy models, engines and schema upgrades.

SQLite (one file in the data folder) by default; PostgreSQL by URL when several replicas share
one database. The schema is Alembic's (`migrations/`): `upgrade(url)` brings any database to
head and is what every start runs; a test holds the migrations equal to these models.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    exc,
    make_url,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from domainvlm.errors import ConfigError

DATA_ENV = "DOMAINVLM_SERVE_DATA"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any fixed 64-bit number: the PostgreSQL advisory lock that serialises upgrades of replicas.
UPGRADE_LOCK = 0x646F6D61696E766C
# Alembic keeps its running migration context in module globals: one upgrade per process at once.
_upgrading = threading.Lock()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime on every backend. SQLite keeps no zone, so values are stored as UTC
    and read back with the zone; a naive value is refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: give it a timezone")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    # Named constraints, so a migration names them the same way on every backend.
    metadata = MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class ApiKey(Base):
    """A client's API key: only a sha256 digest of it is kept (see `keys`)."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    prefix: Mapped[str] = mapped_column(String(12), index=True)
    digest: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rate_per_minute: Mapped[int | None] = mapped_column(Integer)


class Study(Base):
    """A de-identified study held in the data folder; `owner` is the name of the key that sent
    it."""

    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_owner_created", "owner", "created"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(100))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    source: Mapped[str] = mapped_column(String(16))  # "upload" | "pacs"
    study_uid: Mapped[str] = mapped_column(String(64))  # de-identified StudyInstanceUID
    modality: Mapped[str] = mapped_column(String(16))
    series: Mapped[list] = mapped_column(JSON)  # [{"uid", "description", "modality", "instances"}]
    instances: Mapped[int] = mapped_column(Integer)
    folder: Mapped[str] = mapped_column(String(1024))  # relative to the data folder


class Answer(Base):
    """One answered question. Deleting its study deletes it (it is derived from the study);
    plain image VQA answers have no study."""

    __tablename__ = "answers"
    __table_args__ = (Index("ix_answers_owner_created", "owner", "created"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(100))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    study_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    adapter: Mapped[str] = mapped_column(String(200))
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    series_uid: Mapped[str | None] = mapped_column(String(64))
    view: Mapped[dict | None] = mapped_column(JSON)
    seconds: Mapped[float] = mapped_column(Float)
    sr_uid: Mapped[str | None] = mapped_column(String(64))


class AuditEvent(Base):
    """Who did what, when, with which outcome: no PHI, and no foreign key, so the trail
    outlives the studies it names."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    request_id: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(100))  # key name, or "-"
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(300))  # the route template, never the raw URL
    study_id: Mapped[str | None] = mapped_column(String(32))
    adapter: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)


def default_data_dir() -> Path:
    """The serve data folder: $DOMAINVLM_SERVE_DATA, else ~/.local/share/domainvlm/serve."""
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else Path.home() / ".local" / "share" / "domainvlm" / "serve"


def default_url(data_dir: Path) -> str:
    """The SQLite database `serve.db` in the data folder."""
    return f"sqlite:///{Path(data_dir).resolve() / 'serve.db'}"


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return "<unparsable database URL>"


def engine_for(url: str) -> Engine:
    """An engine for "sqlite:///path" or "postgresql[+psycopg]://...". SQLite gets WAL (readers
    never wait for the writer), foreign keys on and a 30 s busy timeout, and may be shared by
    threads; a missing folder of its file is created."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise ConfigError(f"--database: {safe_url(url)} is not a database URL "
                          "(sqlite:///PATH or postgresql://USER@HOST/DB)") from error
    if parsed.drivername == "postgresql":  # psycopg 3 (SQLAlchemy 2.0 would pick psycopg2)
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"--database: {safe_url(url)}: only sqlite and postgresql are supported")
    try:
        return create_engine(parsed, pool_pre_ping=True)
    except ModuleNotFoundError as error:
        raise ConfigError("PostgreSQL needs psycopg: pip install 'domainvlm[postgres]'") from error


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL's usual setting: a commit survives a crash of the service, not a power cut of the
    # machine; FULL would fsync twice per request (answer and audit row) on the hot path.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker:
    """Sessions whose rows stay readable after commit (routes return them after the thread
    that committed is done)."""
    return sessionmaker(engine, expire_on_commit=False)


def upgrade(url: str) -> None:
    """Migrate the database to the newest schema; a no-op when it is there. Replicas starting
    together on one PostgreSQL take turns under an advisory lock, threads of one process under
    a lock of their own."""
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    engine = engine_for(url)
    try:
        with _upgrading, engine.connect() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": UPGRADE_LOCK})
                connection.commit()
            try:
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()  # what Alembic left in the connection's own transaction
            finally:
                if postgres:
                    connection.rollback()
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": UPGRADE_LOCK})
                    connection.commit()
    except CommandError as error:  # e.g. a revision from a newer domainvlm
        raise ConfigError(f"the database {safe_url(url)} cannot be migrated: {error} (is it from "
                          "a newer domainvlm?)") from error
    except exc.OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise ConfigError(f"cannot open the database {safe_url(url)}: {reason}") from error
    finally:
        engine.dispose()
