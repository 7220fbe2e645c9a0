"""Ask the model through the batcher and keep the answers: shared by the image and study
routes."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from domainvlm.adapters.service.deps import Service
from domainvlm.adapters.service.problems import Problem


@dataclass
class Given:
    """The answers to a request's questions, with ids and timings."""

    ids: list[str]
    answers: list[str]
    adapter: str  # name@version, or "base"
    timings: dict[str, float]


async def ask(svc: Service, owner: str, images: list[Any], questions: list[str],
              adapter: str, max_new_tokens: int, *, study_id: str | None = None,
              series_uid: str | None = None, view: dict | None = None) -> Given:
    """Each question about all `images`, on `adapter`; every answer is stored for `owner`."""
    from domainvlm.adapters.runtime import Query

    limit = svc.settings.max_new_tokens_limit
    if not 1 <= max_new_tokens <= limit:
        raise Problem(422, f"max_new_tokens must be 1..{limit}, got {max_new_tokens}",
                      "invalid-request")
    if not questions or any(not q.strip() for q in questions):
        raise Problem(422, "give at least one question, none of them empty", "invalid-request")
    started = time.perf_counter()
    # Submitted together, so the batcher can answer them in one batch.
    replies = await asyncio.gather(*[
        svc.batcher.submit(Query(images=images, question=q.strip(), adapter=adapter,
                                 max_new_tokens=max_new_tokens)) for q in questions])
    total = time.perf_counter() - started
    model = max(reply.seconds for reply in replies)
    resolved = replies[0].adapter
    for reply in replies:
        svc.metrics.answers.labels(adapter=reply.adapter).inc()
    ids = [uuid.uuid4().hex for _ in replies]
    rows = [dict(id=i, owner=owner, created=datetime.now(UTC), study_id=study_id,
                 adapter=resolved, question=q, answer=r.answer, series_uid=series_uid,
                 view=view, seconds=round(total, 4))
            for i, q, r in zip(ids, questions, replies, strict=True)]
    await run_in_threadpool(_store_answers, svc, rows)
    return Given(ids, [r.answer for r in replies], resolved,
                 {"queue_ms": round(max(0.0, total - model) * 1000, 2),
                  "model_ms": round(model * 1000, 2), "total_ms": round(total * 1000, 2)})


def _store_answers(svc: Service, rows: list[dict]) -> None:
    from domainvlm.adapters.service.db import Answer

    with svc.sessions() as session, session.begin():
        session.add_all([Answer(**row) for row in rows])
