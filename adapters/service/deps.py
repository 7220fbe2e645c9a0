"""What a route needs from the running service, as FastAPI dependencies.

Routers of other packages (`domainvlm.medical.service`) use these, so they share the key
check, the rate limit, the database and the model queue with the service's own routes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from domainvlm.adapters.service.observability import Metrics
from domainvlm.adapters.service.problems import Problem
from domainvlm.adapters.service.security import Caller, KeyGate
from domainvlm.adapters.service.settings import ServeSettings


@dataclass
class Service:
    """The state of one running service (on `app.state.service`)."""

    settings: ServeSettings
    sessions: Any  # sqlalchemy sessionmaker
    gate: KeyGate
    metrics: Metrics
    store: Any = None  # AdapterStore, or None: the base alone
    runtime: Any = None  # Runtime, once the base is loaded
    batcher: Any = None  # Batcher, once the base is loaded
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: str | None = None  # why the base could not be loaded

    def base(self) -> dict[str, Any]:
        """The served base as responses name it: source, model type, weights fingerprint."""
        identity = self.runtime.base_identity
        return {"source": identity.source, "model_type": identity.model_type,
                "weights": identity.weights}


def service(request: Request) -> Service:
    return request.app.state.service


async def caller(request: Request) -> Caller:
    """The key of the request (401 without one, 429 over its rate); remembered for the
    audit trail under its name."""
    gate = service(request).gate
    found = await run_in_threadpool(gate.caller, request)
    request.state.key_name = found.name
    gate.charge(found)
    return found


def owner_filter(request: Request, who: Caller) -> str | None:
    """The owner whose rows `who` may see: their own, or None (all) when results are shared."""
    return None if service(request).settings.share_results else who.name


async def ready_service(request: Request) -> Service:
    """The service once its base model is loaded; 503 (with Retry-After) until then."""
    svc = service(request)
    if svc.failed:
        raise Problem(503, f"the base model could not be loaded: {svc.failed}", "not-ready")
    if not svc.ready.is_set():
        raise Problem(503, "the base model is still loading; retry shortly", "not-ready",
                      {"Retry-After": "5"})
    return svc
