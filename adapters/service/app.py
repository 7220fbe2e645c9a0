"""The app factory of `domainvlm serve`: one FastAPI app from settings.

Its own routers (operations, adapters, plain VQA, the web page) and those registered under
the `domainvlm.routers` entry point (the study routes of `domainvlm.medical`) are mounted on
one app. The base model loads in the background after start: `/health` answers at once,
`/health/ready` once the model is in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from importlib import resources
from importlib.metadata import entry_points
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domainvlm.adapters.service import problems
from domainvlm.adapters.service.deps import Service
from domainvlm.adapters.service.observability import (
    Metrics,
    access_fields,
    new_request_id,
    request_id_var,
)
from domainvlm.adapters.service.security import BodyLimit, KeyGate
from domainvlm.adapters.service.settings import ServeSettings

ROUTER_GROUP = "domainvlm.routers"
log = logging.getLogger("domainvlm.serve")
DESCRIPTION = """Ask domain adapters about images and DICOM studies.

Every route but `/health` needs an API key: `Authorization: Bearer KEY` (or `X-API-Key`).
Errors are RFC 9457 problem details (`application/problem+json`). Studies are de-identified
before they are stored; answers can be written back to the PACS as DICOM SR.
"""


def create_app(settings: ServeSettings) -> FastAPI:
    """The service for `settings`; start it with uvicorn (`domainvlm serve` does)."""
    from domainvlm.adapters.service import db

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = db.engine_for(settings.url_of_database)
    sessions = db.session_factory(engine)
    svc = Service(settings=settings, sessions=sessions,
                  gate=KeyGate(sessions, settings.rate_per_minute), metrics=Metrics())
    if settings.store is not None:
        from domainvlm.adapters.store import AdapterStore

        svc.store = AdapterStore(settings.store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(db.upgrade, settings.url_of_database)
        loading = asyncio.create_task(_load_model(svc))
        try:
            yield
        finally:
            if svc.batcher is not None:
                await svc.batcher.stop()  # in-flight and queued questions are answered
            loading.cancel()
            engine.dispose()

    app = FastAPI(title="domainvlm", version=_version(), description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.service = svc
    problems.install(app)
    from domainvlm.adapters.service import routes_adapters, routes_ops, routes_vqa

    for router in (routes_ops.router, routes_adapters.router, routes_vqa.router,
                   *_plugin_routers()):
        app.include_router(router)
    _web(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type",
                                          "X-Request-ID"])
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.add_middleware(RequestTrail, service=svc)
    return app


async def _load_model(svc: Service) -> None:
    from domainvlm.adapters.batcher import Batcher
    from domainvlm.adapters.runtime import Runtime

    s = svc.settings
    try:
        runtime = await run_in_threadpool(
            Runtime, s.model, svc.store, max_loaded=s.max_loaded, device=s.device,
            dtype=s.dtype, batch_size=s.max_batch)
        for ref in s.preload:
            await run_in_threadpool(runtime.load, ref)
    except Exception as err:  # shown by /health/ready and the log, the process stays up
        svc.failed = f"{type(err).__name__}: {err}"
        log.error("base model not loaded: %s", svc.failed)
        return

    def on_batch(size: int, seconds: float) -> None:
        svc.metrics.batch_size.observe(size)
        svc.metrics.batch_seconds.observe(seconds)

    batcher = Batcher(runtime, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms)
    batcher.on_batch = on_batch
    await batcher.start()
    svc.runtime, svc.batcher = runtime, batcher
    svc.ready.set()
    log.info("ready", extra={"fields": {"base": s.model, "loaded": runtime.loaded()}})


class RequestTrail:
    """ASGI middleware: a request id on every response and log line; one access log line,
    one latency observation and one audit row per request (none for health probes)."""

    QUIET = ("/health", "/health/ready")

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app, self.svc = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1") or None
        rid = new_request_id(given)
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        started, status, recorded = time.perf_counter(), 500, False

        async def record() -> None:
            nonlocal recorded
            recorded = True
            fields = access_fields(Request(scope), status, started)
            if fields["path"] in self.QUIET:
                return
            self.svc.metrics.latency.labels(fields["method"], fields["path"],
                                            str(status)).observe(fields["latency_ms"] / 1e3)
            log.info("request", extra={"fields": fields})
            await run_in_threadpool(self._audit, rid, fields)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await record()  # in the trail before the caller has the answer
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not recorded:
                await record()
            request_id_var.reset(token)

    def _audit(self, rid: str, fields: dict[str, Any]) -> None:
        from datetime import UTC, datetime

        from domainvlm.adapters.service.db import AuditEvent

        try:
            with self.svc.sessions() as session, session.begin():
                session.add(AuditEvent(at=datetime.now(UTC), request_id=rid, **fields))
        except Exception as err:  # the answer has gone out; say the trail has a gap
            log.error("audit row not written: %s", type(err).__name__)


def _plugin_routers() -> list[Any]:
    return [entry.load() for entry in entry_points(group=ROUTER_GROUP)]


def _web(app: FastAPI) -> None:
    """The clinician's page: plain files shipped in the package, served at `/`."""
    web = resources.files("domainvlm.adapters.service") / "web"
    index = web / "index.html"
    if not index.is_file():
        return
    app.mount("/web", StaticFiles(directory=str(web)), name="web")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(index), media_type="text/html")



def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("domainvlm")
    except PackageNotFoundError:
        return "0"
