"""A stand-in for users C and D's model scripts in warm mode: load once, then one image per task.

It sleeps instead of computing, so it runs anywhere (no GPU, no model files), but it has the
shape of the real thing: an expensive load before the first task, a per-image cost, outputs
written where gpubatch says, and a bad input that fails its own task without stopping the rest.

    python simulated_model.py [--load-seconds S] [--seconds-per-task S] [--spread SIGMA]

Each option also reads an environment variable (SIM_LOAD_SECONDS, SIM_TASK_SECONDS,
SIM_TASK_SPREAD). With --spread, a task's cost is log-normal around --seconds-per-task, seeded
by the task's index, so two runs of the same batch cost the same. An input whose name contains
"corrupt" raises, like an unreadable image. At the end it prints the user C statistics (tasks,
total and mean time) to stderr.

Under `gpubatch-worker` (one task per process) the same script runs its one task.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

import gpubatch.worker


def main() -> None:
    options = parse_args()
    started = time.monotonic()
    time.sleep(options.load_seconds)  # "the model": loaded once per process
    print(f"model loaded in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)

    done, busy = 0, 0.0
    for task in gpubatch.worker.tasks():
        with task:
            began = time.monotonic()
            source = str(next(iter(task.params.values()), task.index))
            if "corrupt" in source:
                raise ValueError(f"cannot decode image {source}")
            time.sleep(task_cost(task.index, options))
            for path in task.write_to:
                with open(path, "w", encoding="utf-8") as output:
                    output.write(f"mask of {source}\n")
            busy += time.monotonic() - began
            done += 1
    mean = busy / done if done else 0.0
    print(f"{done} tasks, {busy:.1f}s busy, {mean:.3f}s per task", file=sys.stderr)


def task_cost(index: int, options: argparse.Namespace) -> float:
    if options.spread <= 0:
        return float(options.seconds_per_task)
    draw = random.Random(index).gauss(0.0, options.spread)  # noqa: S311 (a simulation)
    return float(options.seconds_per_task * math.exp(draw - options.spread**2 / 2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    env = os.environ.get
    parser.add_argument("--load-seconds", type=float, default=float(env("SIM_LOAD_SECONDS", "2")))
    parser.add_argument(
        "--seconds-per-task", type=float, default=float(env("SIM_TASK_SECONDS", "0.05"))
    )
    parser.add_argument("--spread", type=float, default=float(env("SIM_TASK_SPREAD", "0")))
    return parser.parse_args()


if __name__ == "__main__":
    main()
