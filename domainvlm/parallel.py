"""Run independent per-item work (one patient, one series) on several processes, in order.

Results come back in the order of the inputs whatever the process that made them, so the
output of a run does not depend on how many workers it had. Processes are spawned, not
forked: the parent may hold PyTorch's thread pools, which a forked child must not touch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def default_workers() -> int:
    """One worker per CPU this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_in_order(function: Callable[..., T], calls: Iterable[tuple[Any, ...]], workers: int,
                 progress: Callable[[int], None] | None = None) -> Iterator[T]:
    """`function(*args)` for each args tuple of `calls`, yielded in input order.

    `workers` 1 runs them here, one after another. More spawn that many processes and keep at
    most two calls per worker in flight, so a lazy `calls` (e.g. series read from a PACS) is
    not read into memory all at once. `function` must be importable by name (top level of a
    module). `progress(1)` follows each result. The first exception stops the run and is
    raised here as it was raised in the worker.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    if workers == 1:
        for args in calls:
            yield function(*args)
            if progress is not None:
                progress(1)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from domainvlm.quiet import quiet_worker

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=quiet_worker) as pool:
        pending: deque = deque()
        try:
            for args in calls:
                pending.append(pool.submit(function, *args))
                if len(pending) >= 2 * workers:
                    yield _next(pending, progress)
            while pending:
                yield _next(pending, progress)
        finally:
            for future in pending:
                future.cancel()


def _next(pending: deque, progress: Callable[[int], None] | None) -> Any:
    result = pending.popleft().result()
    if progress is not None:
        progress(1)
    return result
