"""`domainvlm serve keys add|list|revoke`: the service's API keys, in its database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.orm import Session

from domainvlm.adapters.service import db, keys

keys_app = typer.Typer(help="API keys of `domainvlm serve`: add, list, revoke.",
                       no_args_is_help=True, rich_markup_mode=None)

Database = Annotated[str | None, typer.Option(
    "--database", metavar="URL",
    help="sqlite:///PATH or postgresql://USER@HOST/DB [default: serve.db in --data-dir]")]
DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", metavar="DIR", file_okay=False,
    help=f"The service's data folder [default: ${db.DATA_ENV}, else "
         "~/.local/share/domainvlm/serve]")]


@contextmanager
def _session(database: str | None, data_dir: Path | None) -> Iterator[Session]:
    url = database or db.default_url(data_dir or db.default_data_dir())
    db.upgrade(url)
    engine = db.engine_for(url)
    try:
        with db.session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else "-"


@keys_app.command("add")
def add(name: Annotated[str, typer.Argument(metavar="NAME", help="Who the key is for (unique).")],
        rate: Annotated[int | None, typer.Option(
            "--rate", metavar="N", help="Requests per minute this key may make [default: the "
                                        "server's limit]")] = None,
        database: Database = None, data_dir: DataDir = None) -> None:
    """Make a key for NAME and print it (on stdout, alone, for scripts)."""
    with _session(database, data_dir) as session:
        key = keys.add_key(session, name, rate)
    typer.echo(key)
    typer.echo(f"API key {name!r} made: copy it now, it cannot be shown again "
               "(only its digest is stored).", err=True)


@keys_app.command("list")
def list_(database: Database = None, data_dir: DataDir = None) -> None:
    """List the keys: name, prefix, created, revoked, rate (never the keys themselves)."""
    with _session(database, data_dir) as session:
        rows = keys.list_keys(session)
    typer.echo(f"{'NAME':<24} {'PREFIX':<14} {'CREATED':<21} {'REVOKED':<21} RATE/MIN")
    for row in rows:
        rate = str(row.rate_per_minute) if row.rate_per_minute else "-"
        typer.echo(f"{row.name:<24} {row.prefix + '…':<14} {_when(row.created):<21} "
                   f"{_when(row.revoked):<21} {rate}")


@keys_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(metavar="NAME", help="The key's name.")],
           database: Database = None, data_dir: DataDir = None) -> None:
    """Revoke NAME's key: requests with it are refused from now on."""
    with _session(database, data_dir) as session:
        row = keys.revoke_key(session, name)
    typer.echo(f"API key {row.name!r} revoked at {_when(row.revoked)}")
