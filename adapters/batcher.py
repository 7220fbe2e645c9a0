"""Dynamic batching: concurrent requests gathered into one `Runtime.answer` call.

Under load (the last batch held more than one query) a request waits at most `max_wait_ms`
for others to join it (less when `max_batch` arrive first); while the model runs a batch, the
next one gathers. A request to an idle model goes at once: waiting for companions that are
not coming would only add `max_wait_ms` to every answer of a lightly used server. The model
runs in one worker thread, never on the event loop, so the server keeps accepting requests
meanwhile. `Runtime.answer` itself splits a batch where PEFT cannot mix its adapters.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from domainvlm.adapters.runtime import Query, Reply
from domainvlm.errors import ConfigError

log = logging.getLogger(__name__)


class Batcher:
    """`await batcher.submit(query)` from any number of tasks; `start()` and `stop()` around
    its life (stop answers everything already submitted, then returns).

    Metrics: `queue_depth` (queries waiting), and `on_batch(size, seconds)` called after each
    call into the runtime (a batch, or a query retried alone)."""

    def __init__(self, runtime: Any, *, max_batch: int = 8, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1:
            raise ConfigError(f"`max_batch` must be at least 1 (1: batching off), not "
                              f"{max_batch}")
        if max_wait_ms < 0:
            raise ConfigError(f"`max_wait_ms` must be 0 or more, not {max_wait_ms}")
        self.runtime, self.max_batch, self.max_wait = runtime, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch
        self._pending: collections.deque[tuple[Query, asyncio.Future]] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._stopping = False
        self._under_load = False  # the last batch held more than one query

    @property
    def queue_depth(self) -> int:
        """Queries submitted and not yet taken into a batch."""
        return len(self._pending)

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        self._arrived = asyncio.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="domainvlm-model")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Refuse new queries, answer the queued and running ones, then stop the worker."""
        if self._task is None:
            return
        self._stopping = True
        self._arrived.set()
        await self._task
        self._worker.shutdown(wait=True)
        self._task = self._worker = None

    async def submit(self, query: Query) -> Reply:
        """The runtime's reply to `query`, answered in a batch with others submitted about
        the same time; raises what the runtime raised for this query alone."""
        if self._task is None or self._stopping:
            raise RuntimeError("the batcher is not running (start() it; after stop() it "
                               "takes no more queries)")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((query, future))
        self._arrived.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + (self.max_wait if self._under_load else 0.0)
            while len(self._pending) < self.max_batch and not self._stopping:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            take = min(self.max_batch, len(self._pending))
            self._under_load = take > 1
            batch = [self._pending.popleft() for _ in range(take)]
            batch = [(query, future) for query, future in batch if not future.done()]
            if batch:
                await self._answer(batch)

    async def _answer(self, batch: list[tuple[Query, asyncio.Future]]) -> None:
        try:
            outcomes = await self._outcomes([query for query, _ in batch])
            pairs = list(zip(batch, outcomes, strict=True))
        except Exception as exc:  # a fault of the batcher itself: fail this batch, go on
            log.exception("the batcher failed a batch of %d", len(batch))
            pairs = [(item, exc) for item in batch]
        for (_, future), outcome in pairs:
            if future.done():  # its caller went away
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def _outcomes(self, queries: list[Query]) -> list[Reply | Exception]:
        """The replies to `queries`; if the runtime raises, each query again alone, so an
        error lands on the query that caused it and the others are answered."""
        try:
            return await self._call(queries)
        except Exception as exc:
            if len(queries) == 1:
                return [exc]
        outcomes: list[Reply | Exception] = []
        for query in queries:
            try:
                outcomes += await self._call([query])
            except Exception as alone:
                outcomes.append(alone)
        return outcomes

    async def _call(self, queries: list[Query]) -> list[Reply]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(self._worker, self.runtime.answer, queries)
        finally:
            if self.on_batch is not None:
                try:
                    self.on_batch(len(queries), time.perf_counter() - started)
                except Exception:  # a metrics hook must not fail the queries it measured
                    log.exception("the on_batch hook raised")
