"""`domainvlm serve`: run the REST service; `domainvlm serve keys ...`: its API keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from domainvlm.adapters.service.keys_cli import keys_app
from domainvlm.errors import ConfigError

app = typer.Typer(help="Serve a base model and its adapters over REST (FastAPI): plain image "
                  "questions, DICOM studies (de-identified on arrival), a web page at /, "
                  "OpenAPI docs at /docs.\n\nStart with `domainvlm serve --store DIR`; "
                  "manage API keys with `domainvlm serve keys`.",
                  rich_markup_mode=None)
app.add_typer(keys_app, name="keys")
NANO = "nano"


@app.callback(invoke_without_command=True)
def serve_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="The base model: a folder, a hub id, or `nano` "
                                       "(the shipped nano model).")] = NANO,
    store: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="The adapter store (`domainvlm adapters`); without it only the base answers.")]
    = None,
    data_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Where the database and de-identified studies live [default: "
        "$DOMAINVLM_SERVE_DATA or ~/.local/share/domainvlm/serve].")] = None,
    database: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db for several replicas "
        "[default: SQLite serve.db in --data-dir].")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but loopback "
                                      "needs API keys (`domainvlm serve keys add`).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    tls_cert: Annotated[Optional[Path], typer.Option(help="PEM certificate: serve HTTPS.")]  # noqa: UP045
    = None,
    tls_key: Annotated[Optional[Path], typer.Option(help="PEM private key of --tls-cert.")]  # noqa: UP045
    = None,
    project_key_file: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="De-identification key (`domainvlm dicom keygen`); needed to take studies.",
        envvar="DOMAINVLM_PROJECT_KEY_FILE")] = None,
    pacs: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        help="NAME=DICOMWEB_URL of a PACS studies may be fetched from and answers written "
        "to (repeat for several; the first is the default).")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        help="An origin allowed to call from a browser (repeatable; CORS is off without).")]
    = None,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body.")] = 512,
    max_unzipped_mb: Annotated[float, typer.Option(help="Most an uploaded zip may expand "
                                                   "to (zip bombs are refused).")] = 2048,
    rate: Annotated[int, typer.Option(help="Requests a minute per key (a key's own rate, "
                                      "set with `keys add --rate`, wins).")] = 600,
    share_results: Annotated[bool, typer.Option(help="Every key sees every study and answer "
                                                "(default: only the key that made them).")]
    = False,
    max_batch: Annotated[int, typer.Option(help="Most questions per model batch (1: "
                                           "batching off).")] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="How long a question waits for others "
                                               "to batch with.")] = 5.0,
    max_loaded: Annotated[int, typer.Option(help="Adapters kept in memory; the least "
                                            "recently used is unloaded beyond.")] = 8,
    preload: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        help="An adapter (name@version) to load at start (repeatable).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... [default: "  # noqa: UP045
                                                  "the best available].")] = None,
) -> None:
    """Run the service until Ctrl-C (or SIGTERM), finishing in-flight requests first."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from domainvlm.adapters.service.app import create_app
    from domainvlm.adapters.service.observability import configure_logging

    settings = _settings(
        model=_base(model), store=store, data_dir=data_dir, database_url=database, host=host,
        port=port, tls_cert=tls_cert, tls_key=tls_key, project_key_file=project_key_file,
        pacs=_named_urls(pacs or []), cors_origins=cors_origin or [],
        max_request_bytes=int(max_request_mb * 2**20),
        max_unzipped_bytes=int(max_unzipped_mb * 2**20), rate_per_minute=rate,
        share_results=share_results, max_batch=max_batch, max_wait_ms=max_wait_ms,
        max_loaded=max_loaded, preload=preload or [], device=device)
    _check_exposure(settings)
    configure_logging()
    scheme = "https" if settings.tls_cert else "http"
    typer.echo(f"serving {settings.model} on {scheme}://{host}:{port} (web page /, API docs "
               "/docs); Ctrl-C stops", err=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False,
                ssl_certfile=str(tls_cert) if tls_cert else None,
                ssl_keyfile=str(tls_key) if tls_key else None, timeout_graceful_shutdown=60)


def _settings(**values):
    from pydantic import ValidationError

    from domainvlm.adapters.service.settings import ServeSettings

    given = {k: v for k, v in values.items() if v is not None}
    try:
        return ServeSettings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"--{where.replace('_', '-')}: "
                          f"{first['msg'].removeprefix('Value error, ')}") from None


def _base(model: str) -> str:
    """The base's folder or hub id; a folder that does not exist fails now, not after start."""
    if model != NANO:
        from domainvlm.loading import resolve_source

        resolve_source(model)
        return model
    from domainvlm.nano import ensure_nano

    return str(ensure_nano())


def _named_urls(items: list[str]) -> dict[str, str]:
    named = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ConfigError(f"--pacs {item!r}: give NAME=URL, e.g. "
                              "--pacs main=http://127.0.0.1:8042/dicom-web")
        named[name] = url
    return named


def _check_exposure(settings) -> None:
    """Refuse to listen beyond this machine with no API key, or a TLS file that is missing."""
    from domainvlm.adapters.service import db
    from domainvlm.adapters.service.settings import is_loopback

    for path in (settings.tls_cert, settings.tls_key, settings.project_key_file):
        if path is not None and not path.is_file():
            raise ConfigError(f"{path} does not exist; check the path")
    if is_loopback(settings.host):
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db.upgrade(settings.url_of_database)
    if not _any_key(settings.url_of_database):
        raise ConfigError(f"--host {settings.host} is reachable from other machines and no API "
                          "key exists; add one first (`domainvlm serve keys add NAME`), or "
                          "listen on 127.0.0.1")
    if settings.tls_cert is None:
        import logging

        logging.getLogger("domainvlm.serve").warning(
            "serving plain HTTP beyond loopback: keys and scans cross the network unencrypted;"
            " pass --tls-cert/--tls-key or put a TLS proxy in front")


def _any_key(url: str) -> bool:
    from domainvlm.adapters.service import db, keys

    engine = db.engine_for(url)
    try:
        with db.session_factory(engine)() as session:
            return any(key.revoked is None for key in keys.list_keys(session))
    finally:
        engine.dispose()
