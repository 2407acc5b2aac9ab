"""`python -m bench.warm_local`: one slot, N tasks, a model load: warm worker vs a process per task.

Both sides run the same program (`examples/warm/simulated_model.py`, sleep-based: a load, then a
per-task cost) over the same tasks, one at a time on one slot:

- warm: `WarmWorker` starts the program once and feeds it every task;
- per task: `gpubatch-worker -- <program>` once per task, as `gpubatch run` and a task pod do
  today, so each task pays the worker's and the program's start and the load again.

No GPU and no test bed: this measures what the feeder saves on a workstation. The result goes to
tests/bench/results/warm-local.json. The lower bound is one load plus the sum of task costs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpubatch.api.result import Outcome
from gpubatch.api.taskenv import TaskEnvironment
from gpubatch.worker.warm import WarmWorker, run_set

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "examples" / "warm" / "simulated_model.py"
RESULTS = Path(__file__).resolve().parent / "results"
WORKER = Path(sys.executable).with_name("gpubatch-worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warm_local", description=__doc__)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--load-seconds", type=float, default=2.0)
    parser.add_argument("--seconds-per-task", type=float, default=0.05)
    parser.add_argument("--spread", type=float, default=0.5, help="log-normal sigma of task cost")
    parser.add_argument("--out", type=Path, default=RESULTS / "warm-local.json")
    args = parser.parse_args(argv)
    program = [
        sys.executable,
        str(PROGRAM),
        f"--load-seconds={args.load_seconds}",
        f"--seconds-per-task={args.seconds_per_task}",
        f"--spread={args.spread}",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        warm_s, warm_ok = run_warm(program, tasks(Path(tmp) / "warm", args.tasks))
        per_task_s, per_task_ok = run_per_task(program, tasks(Path(tmp) / "cold", args.tasks))
    work = sum(task_cost(i, args) for i in range(args.tasks))
    result = {
        "tasks": args.tasks,
        "load_s": args.load_seconds,
        "mean_task_s": args.seconds_per_task,
        "spread": args.spread,
        "lower_bound_s": round(args.load_seconds + work, 3),
        "warm_s": round(warm_s, 3),
        "warm_succeeded": warm_ok,
        "per_task_s": round(per_task_s, 3),
        "per_task_succeeded": per_task_ok,
        "per_task_over_warm": round(per_task_s / warm_s, 2),
        "command": " ".join(
            ["cd tests && ../.venv/bin/python -m bench.warm_local", *(argv or sys.argv[1:])]
        ),
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if warm_ok == per_task_ok == args.tasks else 1


def tasks(out: Path, count: int) -> list[TaskEnvironment]:
    return [
        TaskEnvironment(
            batch="warm-local",
            task_index=i,
            params={"image": f"img-{i:04d}.png"},
            outputs=(str(out / f"{i:04d}.txt"),),
            require_gpu=False,
        )
        for i in range(count)
    ]


def task_cost(index: int, args: argparse.Namespace) -> float:
    """The program's own draw for a task (same seed), to compute the lower bound."""
    spec = importlib.util.spec_from_file_location("simulated_model", PROGRAM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return float(module.task_cost(index, args))


def run_warm(program: list[str], todo: list[TaskEnvironment]) -> tuple[float, int]:
    began = time.monotonic()
    with open(os.devnull, "wb") as quiet:
        report = run_set(WarmWorker(program, stdout=quiet, stderr=quiet), todo)
    ok = sum(r.outcome is Outcome.SUCCEEDED for _, r in report.results)
    return time.monotonic() - began, ok


def run_per_task(program: list[str], todo: list[TaskEnvironment]) -> tuple[float, int]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GPUBATCH_")}
    ok = 0
    began = time.monotonic()
    for task in todo:
        environ = base | task.to_environ() | {"GPUBATCH_RESULT_PATH": os.devnull}
        done = subprocess.run(
            [str(WORKER), "--", *program], env=environ, capture_output=True, check=False
        )
        ok += done.returncode == 0
    return time.monotonic() - began, ok


if __name__ == "__main__":
    sys.exit(main())
