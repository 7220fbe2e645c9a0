"""The batcher: concurrent submits gathered into runtime calls, errors kept to their query.

Answers and error isolation are checked with the real runtime (tiny LLaVA + store adapters);
pure scheduling (waits, queue depth, the worker thread) with a runtime-shaped recorder, which
answers instantly or when released, so those tests take no model time.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from stocked import images

from domainvlm.adapters.batcher import Batcher
from domainvlm.adapters.errors import AdapterNotFound
from domainvlm.adapters.runtime import Query, Reply, Runtime
from domainvlm.adapters.store import BASE


@pytest.fixture(scope="module")
def runtime(world):
    return Runtime(world.base, world.store)


def queries(world) -> list[Query]:
    pictures = images(3, seed=1)
    who = ["chest.ct", BASE, "dora", "brain", "proj", "chest.ct", BASE, "hand"]
    return [Query([pictures[n % 3]], ("What is shown?", "Which side?")[n % 2],
                  BASE if w == BASE else world.refs[w], 6) for n, w in enumerate(who)]


def run(scenario) -> object:
    """asyncio.run with a deadline: a batcher that loses a query fails, never hangs."""
    return asyncio.run(asyncio.wait_for(scenario, 120))


async def gathered(batcher: Batcher, asked: list, stagger: float = 0.0) -> list:
    """Submit every query concurrently (`stagger` seconds apart); results or exceptions."""
    await batcher.start()

    async def one(n: int, query: Query):
        await asyncio.sleep(n * stagger)
        return await batcher.submit(query)

    try:
        return await asyncio.gather(*(one(n, q) for n, q in enumerate(asked)),
                                    return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_queries_are_batched_with_unbatched_answers(world, runtime):
    asked = queries(world)
    alone = [runtime.answer([q])[0].answer for q in asked]
    sizes: list[int] = []
    batcher = Batcher(runtime, max_batch=4, max_wait_ms=200,
                      on_batch=lambda size, seconds: sizes.append(size))
    replies = run(gathered(batcher, asked))
    assert [r.answer for r in replies] == alone
    assert [r.adapter for r in replies] == [q.adapter for q in asked]
    assert sum(sizes) == len(asked) and max(sizes) == 4 and all(s <= 4 for s in sizes)


def test_max_batch_1_turns_batching_off(world, runtime):
    sizes: list[int] = []
    batcher = Batcher(runtime, max_batch=1, max_wait_ms=50,
                      on_batch=lambda size, seconds: sizes.append(size))
    replies = run(gathered(batcher, queries(world)[:4]))
    assert all(isinstance(r, Reply) for r in replies)
    assert sizes == [1, 1, 1, 1]


def test_a_failing_query_fails_only_itself(world, runtime):
    asked = queries(world)[:4]
    asked[2] = Query(asked[2].images, asked[2].question, "nope")
    alone = [runtime.answer([q])[0].answer for n, q in enumerate(asked) if n != 2]
    batcher = Batcher(runtime, max_batch=4, max_wait_ms=200)
    replies = run(gathered(batcher, asked))
    assert isinstance(replies[2], AdapterNotFound) and "nope" in str(replies[2])
    assert [r.answer for n, r in enumerate(replies) if n != 2] == alone


class Recorder:
    """Runtime-shaped: records each call (its size and thread); echoes the question back.
    With `gate`, every call waits until the gate is set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[int, str]] = []
        self.gate = gate

    def answer(self, asked: list[Query]) -> list[Reply]:
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append((len(asked), threading.current_thread().name))
        return [Reply(q.question, q.adapter, 0.0) for q in asked]


def plain(n: int) -> Query:
    return Query([], f"q{n}")


def test_an_idle_model_answers_at_once_a_loaded_one_waits_and_a_full_batch_goes():
    async def timed(batcher: Batcher, warm: int, count: int) -> float:
        """Seconds to answer `count` queries submitted together, after `warm` were."""
        await batcher.start()
        try:
            if warm:
                await asyncio.gather(*(batcher.submit(plain(n)) for n in range(warm)))
            started = time.perf_counter()
            await asyncio.gather(*(batcher.submit(plain(n)) for n in range(count)))
            return time.perf_counter() - started
        finally:
            await batcher.stop()

    # Idle: a lone query goes at once, far sooner than its 10 s wait.
    assert run(timed(Batcher(Recorder(), max_batch=4, max_wait_ms=10_000), 0, 1)) < 5
    # Under load (the last batch held two): a lone query waits its 300 ms for companions.
    assert run(timed(Batcher(Recorder(), max_batch=4, max_wait_ms=300), 2, 1)) >= 0.25
    # A full batch leaves at once, under load too.
    assert run(timed(Batcher(Recorder(), max_batch=4, max_wait_ms=10_000), 2, 4)) < 5


def test_queue_depth_the_worker_thread_and_stop_draining():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = Batcher(recorder, max_batch=2, max_wait_ms=0)

    async def scenario() -> list:
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(plain(0)))
        await asyncio.sleep(0.05)  # the worker holds it, waiting at the gate
        assert batcher.queue_depth == 0
        rest = [asyncio.ensure_future(batcher.submit(plain(n))) for n in range(1, 6)]
        await asyncio.sleep(0.05)
        depth = batcher.queue_depth
        stopping = asyncio.ensure_future(batcher.stop())  # must answer all five first
        await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(plain(9))
        gate.set()
        await stopping
        return [depth, *(await asyncio.gather(first, *rest))]

    depth, *replies = run(scenario())
    assert depth == 5
    assert [r.answer for r in replies] == [f"q{n}" for n in range(6)]
    assert [size for size, _ in recorder.calls] == [1, 2, 2, 1]
    threads = {name for _, name in recorder.calls}
    assert len(threads) == 1 and threads != {threading.main_thread().name}
