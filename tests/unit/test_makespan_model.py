"""The list-scheduling model that BENCHMARKS.md reads the makespan numbers against."""

from __future__ import annotations

import pytest

from bench.simulate import lower_bound_seconds, makespan_seconds

pytestmark = pytest.mark.unit


def test_one_gpu_runs_everything_back_to_back() -> None:
    assert makespan_seconds([1.0, 2.0, 3.0], [0, 1, 2], 1, 0.0, float("inf")) == 6.0


def test_longest_first_beats_a_long_task_at_the_end() -> None:
    durations = [1.0, 1.0, 1.0, 1.0, 4.0]
    assert makespan_seconds(durations, [0, 1, 2, 3, 4], 2, 0.0, float("inf")) == 6.0
    assert makespan_seconds(durations, [4, 0, 1, 2, 3], 2, 0.0, float("inf")) == 4.0
    assert lower_bound_seconds(durations, 2) == 4.0


def test_overhead_and_rate_cap_delay_starts() -> None:
    # Two GPUs, four 1 s tasks: 0.5 s per pod; at most one start per second.
    assert makespan_seconds([1.0] * 4, range(4), 2, 0.5, float("inf")) == 3.0
    assert makespan_seconds([1.0] * 4, range(4), 2, 0.0, 1.0) == 4.0
