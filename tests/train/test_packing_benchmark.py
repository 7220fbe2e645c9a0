"""The packing benchmark runs end to end and reports every figure (not the speed goal: timings
on a shared CPU vary); packed and unpacked runs must end with the same adapter."""

from __future__ import annotations


def test_packing_benchmark_quick(run_benchmark) -> None:
    result = run_benchmark("packing.py", "--quick")
    config = result["config"]
    assert (config["images"], config["rows"], config["steps"]) == (4, 40, 2)
    for mode in ("unpacked", "packed"):
        assert result[mode]["rows_per_s"] > 0 and len(result[mode]["seconds"]) == 1
    assert result["speedup"] == round(result["packed"]["rows_per_s"]
                                      / result["unpacked"]["rows_per_s"], 3)
    assert result["adapter_max_difference"] < 1e-4
    assert result["goal_met"] == {"speedup_ge_2": result["speedup"] >= 2, "same_adapter": True}
