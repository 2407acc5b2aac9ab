"""What makespan the makespan scenario's durations allow, given a per-pod cost and a pod rate.

`python -m bench.simulate` (PYTHONPATH=tests). The makespan benchmark measures gpubatch on a
2-core test bed whose pod pipeline is itself the bottleneck; this list-scheduling simulation of
the same 10,000 durations separates what the dispatch order costs from what the test bed's pod
throughput costs. Each GPU takes the next task in order as soon as it is free; a task starts
`overhead_s` after its GPU frees (create, schedule, start) and no sooner than `1 / rate` after
the previous start (the pipeline's pod rate). No measurement here: a model to read the
measured numbers against.
"""

from __future__ import annotations

import argparse
import heapq
from collections.abc import Sequence

from testbed import sim

# The makespan scenario's log-normal durations: these and the mean fix every task's duration.
LOGNORMAL_SIGMA = 0.8
LOGNORMAL_SEED = 42


def makespan_seconds(
    durations_s: Sequence[float], order: Sequence[int], gpus: int, overhead_s: float, rate: float
) -> float:
    """Greedy list scheduling of `durations_s` in `order` on `gpus` identical GPUs."""
    free_at = [0.0] * gpus
    last_start = float("-inf")
    end = 0.0
    for index in order:
        gpu_free = heapq.heappop(free_at)
        start = max(gpu_free + overhead_s, last_start + 1 / rate)
        last_start = start
        finish = start + durations_s[index]
        end = max(end, finish)
        heapq.heappush(free_at, finish)
    return end


def lower_bound_seconds(durations_s: Sequence[float], gpus: int) -> float:
    """The benchmark's lower bound: max(total work / GPUs, longest task)."""
    return max(sum(durations_s) / gpus, max(durations_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--mean-seconds", type=float, default=4.0)
    args = parser.parse_args()
    mean_ms = args.mean_seconds * 1000
    durations = [
        sim.lognormal_ms(i, mean_ms, LOGNORMAL_SIGMA, LOGNORMAL_SEED) / 1000
        for i in range(args.tasks)
    ]
    bound = lower_bound_seconds(durations, args.gpus)
    index_order = list(range(args.tasks))
    longest_first = sorted(index_order, key=lambda i: -durations[i])
    print("| per-pod overhead s | pod rate cap / s | index order | longest first |")
    print("| --- | --- | --- | --- |")
    for overhead, rate in (
        (0, float("inf")),
        (0.05, float("inf")),
        (0.2, float("inf")),
        (0.05, 90),
        (0.05, 45),
        (0.05, 30),
    ):
        ratios = [
            makespan_seconds(durations, order, args.gpus, overhead, rate) / bound
            for order in (index_order, longest_first)
        ]
        print(f"| {overhead} | {rate:g} | {ratios[0]:.3f} | {ratios[1]:.3f} |")


if __name__ == "__main__":
    main()
