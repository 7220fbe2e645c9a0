"""The adapters a service offers: their cards, and loading or unloading one at run time."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from domainvlm.adapters.refs import NAME
from domainvlm.adapters.service.deps import Service, caller, ready_service
from domainvlm.adapters.service.problems import Problem, responses
from domainvlm.adapters.service.security import Caller

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
_PART = NAME.pattern
Ref = Annotated[str, Path(description="name@version, or name for its latest version",
                          examples=["chest-ct@1"], pattern=f"^{_PART}(@{_PART})?$")]


class AdapterList(BaseModel):
    base: dict[str, Any]
    adapters: list[dict[str, Any]]
    loaded: list[str]

    model_config = {"json_schema_extra": {"examples": [{
        "base": {"source": "llava-hf/llava-1.5-7b-hf", "model_type": "llava",
                 "weights": "9f2c..."},
        "adapters": [{"ref": "chest-ct@1", "name": "chest-ct", "version": "1",
                      "intended_use": "CT chest research", "licence": "internal",
                      "metrics": {"vqa_accuracy": 0.81}, "mixable": True}],
        "loaded": ["chest-ct@1"]}]}}


class Loaded(BaseModel):
    adapter: str
    loaded: list[str]

    model_config = {"json_schema_extra": {"examples": [
        {"adapter": "chest-ct@1", "loaded": ["brain-mr@2", "chest-ct@1"]}]}}


def _store(svc: Service) -> Any:
    if svc.store is None:
        raise Problem(404, "this service has no adapter store (start it with --store DIR); "
                      "only the base model answers", "no-store")
    return svc.store


@router.get("", response_model=AdapterList, responses=responses(503),
            summary="The base model and every adapter with its card")
async def list_adapters(svc: Annotated[Service, Depends(ready_service)],
                        _: Annotated[Caller, Depends(caller)]) -> AdapterList:
    """Cards: base model and its weights fingerprint, data fingerprint, eval metrics,
    intended use, licence, whether it batches with others (`mixable`)."""
    cards = await run_in_threadpool(svc.store.list) if svc.store is not None else []
    return AdapterList(base=svc.base(), adapters=[card.to_json() for card in cards],
                       loaded=svc.runtime.loaded())


@router.get("/{ref}", responses=responses(404, 503), summary="One adapter's card")
async def show_adapter(ref: Ref, svc: Annotated[Service, Depends(ready_service)],
                       _: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
    """Example: `GET /v1/adapters/chest-ct@1`."""
    card = await run_in_threadpool(_store(svc).card, ref)
    return card.to_json()


@router.post("/{ref}/load", response_model=Loaded, responses=responses(404, 409, 503),
             summary="Load an adapter now (no restart)")
async def load_adapter(ref: Ref, request: Request,
                       svc: Annotated[Service, Depends(ready_service)],
                       _: Annotated[Caller, Depends(caller)]) -> Loaded:
    """Checks its files' sha256 and its base; the least recently used adapter makes room."""
    _store(svc)
    card = await run_in_threadpool(svc.runtime.load, ref)
    request.state.adapter = card.ref
    return Loaded(adapter=card.ref, loaded=svc.runtime.loaded())


@router.post("/{ref}/unload", response_model=Loaded, responses=responses(404, 503),
             summary="Unload an adapter (the base stays)")
async def unload_adapter(ref: Ref, request: Request,
                         svc: Annotated[Service, Depends(ready_service)],
                         _: Annotated[Caller, Depends(caller)]) -> Loaded:
    card = await run_in_threadpool(_store(svc).card, ref)
    await run_in_threadpool(svc.runtime.unload, card.ref)
    request.state.adapter = card.ref
    return Loaded(adapter=card.ref, loaded=svc.runtime.loaded())
