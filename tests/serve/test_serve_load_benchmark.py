"""The serving benchmark runs end to end and reports every figure (not its goals: timings on
a shared CPU vary); its ratios must be the ones its figures give, and `met` must read them
against the targets."""

from __future__ import annotations

import pytest

PHASES = {"batching_on", "batching_off", "concurrency_1", "mixed"}


@pytest.mark.slow
def test_serve_load_quick(run_benchmark) -> None:
    result = run_benchmark("serve_load.py", "--quick", "--requests", "8", timeout=900)
    inner, server = result["in_process"], result["server"]
    assert [row["batch"] for row in inner["sweep"]] == [1, 2, 4, 8, 16]
    assert inner["best"] == max(inner["sweep"], key=lambda row: row["rps"])
    assert set(server) == PHASES | {"memory"}
    for phase in PHASES:
        figures = server[phase]
        assert figures["rps"] > 0 and 0 < figures["p50_ms"] <= figures["p95_ms"]
    assert server["batching_off"]["clients"] == server["batching_on"]["clients"] == 16
    memory = server["memory"]
    assert memory["adapters"] == 8 and memory["base_alone_mb"] > 0
    assert memory["budget_mb"] == pytest.approx(
        memory["base_alone_mb"] + 8 * memory["adapter_mb"], abs=0.2)
    ratios = result["ratios"]
    assert ratios["server_vs_inprocess"] == pytest.approx(
        server["batching_on"]["rps"] / inner["best"]["rps"], abs=1e-3)
    assert ratios["mixed_vs_single"] == pytest.approx(
        server["mixed"]["rps"] / server["batching_on"]["rps"], abs=1e-3)
    for name, target in result["targets"].items():
        op, bound = target.split()
        value, bound = ratios[name], float(bound)
        assert result["met"][name] == {">=": value >= bound, ">": value > bound,
                                       "<=": value <= bound}[op]
