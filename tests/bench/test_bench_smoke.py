"""Tiny versions of every benchmark and chaos run, so the harnesses cannot rot.

These assert that each run completes and measures something sane, never a speed: speed lives
in BENCHMARKS.md, measured by `make bench` / `make chaos` at full size.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.chaos import RUNS
from bench.scenarios import SCENARIOS, SMOKE

pytestmark = pytest.mark.bench


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_benchmark_scenario_runs_at_smoke_size(name: str, tmp_path: Path):
    result = SCENARIOS[name](SMOKE, tmp_path)
    numbers = [v for v in result.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    assert numbers and all(not math.isnan(v) for v in numbers), result
    for key, value in result.items():
        if key.endswith("succeeded"):
            assert value > 0, (key, result)
        if key.endswith("_exact"):  # completeness: every task succeeded exactly once
            assert value is True, (key, result)


@pytest.mark.parametrize("name", list(RUNS))
def test_chaos_run_loses_nothing_at_smoke_size(name: str, tmp_path: Path):
    result = RUNS[name](40, tmp_path)
    assert result["succeeded"] == 40, result
    assert result["succeeded_indexes_exact"], result
    assert result["concurrent_attempt_violations"] == 0, result
    assert result["pods_left"] == 0, result
    assert result["ok"], result
