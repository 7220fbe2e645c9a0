"""Health, readiness and metrics: what a load balancer and Prometheus ask."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from domainvlm.adapters.service.deps import caller, service
from domainvlm.adapters.service.problems import responses
from domainvlm.adapters.service.security import Caller

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str

    model_config = {"json_schema_extra": {"examples": [{"status": "ok"}]}}


class Readiness(BaseModel):
    status: str
    base: str
    adapters_loaded: int

    model_config = {"json_schema_extra": {"examples": [
        {"status": "ready", "base": "llava-hf/llava-1.5-7b-hf", "adapters_loaded": 2}]}}


@router.get("/health", response_model=Health, summary="Liveness (no key needed)")
async def health() -> Health:
    """The process answers. Example: `{"status": "ok"}`."""
    return Health(status="ok")


@router.get("/health/ready", response_model=Readiness, summary="Readiness (no key needed)",
            responses=responses(503))
async def ready(request: Request) -> Readiness:
    """Ready once the base model is loaded and the database answers; 503 before."""
    from domainvlm.adapters.service.deps import ready_service

    svc = await ready_service(request)
    return Readiness(status="ready", base=svc.settings.model,
                     adapters_loaded=len(svc.runtime.loaded()))


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {
                "schema": {"type": "string"},
                "example": "domainvlm_queue_depth 0.0\ndomainvlm_adapters_loaded 2.0\n"}}},
                       **responses()})
async def metrics(request: Request, _: Annotated[Caller, Depends(caller)]) -> Response:
    """Latency histogram by route, batch sizes, queue depth, answers per adapter."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    svc = service(request)
    if svc.batcher is not None:
        svc.metrics.queue_depth.set(svc.batcher.queue_depth)
    if svc.runtime is not None:
        svc.metrics.adapters_loaded.set(len(svc.runtime.loaded()))
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
