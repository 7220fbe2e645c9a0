"""Request ids, JSON logs, Prometheus metrics and the audit trail of the service.

Every request gets an id (the caller's `X-Request-ID` when it is a plain token, else a new
one), returned in `X-Request-ID` and carried by every log line written while it runs. A log
line and an audit row name the route template (`/v1/studies/{study_id}`), the key's name,
the de-identified study id and the adapter: never a query string, a file name or an answer,
which could quote a patient.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,64}")
log = logging.getLogger("domainvlm.serve")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage(), "request_id": request_id_var.get()}
        line.update(getattr(record, "fields", {}))
        return json.dumps(line, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the service and uvicorn (whose access log is off: ours
    names route templates, uvicorn's the raw URL)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("domainvlm", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def new_request_id(given: str | None) -> str:
    return given if given and _TOKEN.fullmatch(given) else secrets.token_hex(8)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("domainvlm_request_seconds", "Request latency by route",
                                 ["method", "route", "status"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("domainvlm_batch_size", "Queries per model batch",
                                    registry=self.registry,
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
        self.batch_seconds = Histogram("domainvlm_batch_seconds", "Model time per batch",
                                       registry=self.registry)
        self.queue_depth = Gauge("domainvlm_queue_depth", "Queries waiting for the model",
                                 registry=self.registry)
        self.answers = Counter("domainvlm_answers_total", "Answers given, by adapter",
                               ["adapter"], registry=self.registry)
        self.adapters_loaded = Gauge("domainvlm_adapters_loaded", "Adapters in memory",
                                     registry=self.registry)


def access_fields(request: Any, status: int, started: float) -> dict[str, Any]:
    """What one request's log line and audit row say about it (no PHI by construction)."""
    route = request.scope.get("route")
    state = request.state
    return {"method": request.method,
            "path": getattr(route, "path", None) or "(unmatched)",
            "status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "key": getattr(state, "key_name", None) or "-",
            "study_id": getattr(state, "study_id", None),
            "adapter": getattr(state, "adapter", None)}
