"""Per-item work on several processes comes back in input order, errors and all."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from domainvlm.parallel import map_in_order


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_input_order(workers):
    calls = []
    calls_made = iter([(n,) for n in range(12, 0, -1)])  # lazy: read as workers free up
    results = list(map_in_order(math.factorial, calls_made, workers, calls.append))
    assert results == [math.factorial(n) for n in range(12, 0, -1)]
    assert calls == [1] * 12


def test_an_error_in_a_worker_is_raised_here():
    with pytest.raises(ValueError, match="math domain error"):
        list(map_in_order(math.sqrt, [(4.0,), (-1.0,), (9.0,)], 2))


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        list(map_in_order(math.sqrt, [(4.0,)], 0))


def test_default_workers_follow_the_cpus_this_process_may_use():
    """A process pinned to one CPU gets one worker, whatever the machine has."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from domainvlm.parallel import default_workers; print(default_workers())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "1"
