"""Issue 15 target 4: a model loaded once per slot (`gpubatch run`, worker.mode: Warm) against
what the users' scripts do, side by side on the same 200 tasks on 4 slots.

Every method runs the same program (`MODEL`, written next to the tasks): it "loads" for
`load_seconds` (a sleep), then "processes" each task by sleeping its seeded log-normal duration
(the `local` scenario's skewed list: the makespan draws scaled to sum 332 s at full size) and
writing its output.

- `gpubatch_warm`: `gpubatch run --slots 4` with worker.mode: Warm: one program per slot, fed
  tasks one at a time from the shared queue (`gpubatch.worker.tasks()`), so each slot loads once
  and a free slot always takes the next task;
- `static_split` (seed-003): the list cut into 4 contiguous shares, one process per share that
  loads once and runs its share: one load per slot, but no balancing at the tail;
- `seed_queue` (seed-000): a Manager queue, a worker process per slot, a program per task: the
  balance of a queue, but every task pays the load.

The lower bound is one load plus max(sum / slots, longest task). No GPU and no test bed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import yaml

from bench.local import GPUBATCH, SEED_QUEUE, STATIC_SPLIT, _timed, skewed_durations
from bench.simulate import lower_bound_seconds

SLOTS = 4

MODEL = textwrap.dedent(
    """
    import json, sys, time

    def work(seconds, out):
        time.sleep(seconds)
        with open(out, "w") as f:
            f.write("done\\n")

    time.sleep(float(sys.argv[2]))  # --load SECONDS: the model load
    mode = sys.argv[3:4]
    if mode == ["--one"]:  # one task per program (seed-000)
        work(float(sys.argv[4]), sys.argv[5])
    elif mode == ["--share"]:  # a fixed share, loaded once (seed-003)
        for seconds, out in json.load(open(sys.argv[4])):
            work(seconds, out)
    else:  # warm: tasks from gpubatch, one at a time
        import gpubatch.worker
        for task in gpubatch.worker.tasks():
            with task:
                work(float(task.params["seconds"]), task.write_to[0])
    """
)


def warm_local(scale: Any, workdir: Path) -> dict[str, Any]:
    tasks, load = scale.warm_local_tasks, scale.warm_local_load_seconds
    folder = Path(tempfile.mkdtemp(prefix="warm-local-", dir=workdir))
    model = folder / "model.py"
    model.write_text(MODEL)
    durations = skewed_durations(tasks, scale.warm_local_sum_seconds)
    program = [sys.executable, str(model), "--load", str(load)]
    result: dict[str, Any] = {
        # Without cached bytecode every Python start compiles pydantic and gpubatch again
        # (about 1.5 s here), which the programs that import gpubatch pay and the scripts not.
        "bytecode_cache": not os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "tasks": tasks,
        "slots": SLOTS,
        "load_seconds": load,
        "sum_seconds": round(sum(durations), 3),
        "lower_bound_seconds": round(load + lower_bound_seconds(durations, SLOTS), 3),
        "gpubatch_warm": _gpubatch_warm(folder, program, durations),
        "static_split": _static_split(folder, program, durations),
        "seed_queue": _seed_queue(folder, program, durations),
    }
    for method in ("gpubatch_warm", "static_split", "seed_queue"):
        result[f"{method}_succeeded"] = len(list((folder / method).glob("*.txt")))
    return result


def _gpubatch_warm(folder: Path, program: list[str], durations: list[float]) -> float:
    spec = {
        "tasks": {"items": [{"n": i, "seconds": f"{d:.3f}"} for i, d in enumerate(durations)]},
        "outputRoot": str(folder / "gpubatch_warm"),
        "outputs": ["{n}.txt"],
        "retry": {"limit": 0, "backoffSeconds": 0},
        "worker": {"mode": "Warm", "requireGPU": False},
        "template": {
            "spec": {"containers": [{"name": "m", "image": "unused", "command": program}]}
        },
    }
    path = folder / "warm.yaml"
    head = {"apiVersion": "gpubatch.io/v1alpha1", "kind": "GPUBatch"}
    path.write_text(yaml.safe_dump({**head, "metadata": {"name": "warm-local"}, "spec": spec}))
    command = [*GPUBATCH, "run", str(path), "--slots", str(SLOTS), "--no-progress"]
    return _timed([*command, "--state-dir", str(folder / "state")])


def _static_split(folder: Path, program: list[str], durations: list[float]) -> float:
    out = folder / "static_split"
    out.mkdir()
    size = -(-len(durations) // SLOTS)
    argvs = []
    for number, start in enumerate(range(0, len(durations), size)):
        share = folder / f"share-{number}.json"
        pairs = [(d, str(out / f"{start + i}.txt")) for i, d in enumerate(durations[start:][:size])]
        share.write_text(json.dumps(pairs))
        argvs.append([*program, "--share", str(share)])
    return _script(folder, STATIC_SPLIT, argvs)


def _seed_queue(folder: Path, program: list[str], durations: list[float]) -> float:
    out = folder / "seed_queue"
    out.mkdir()
    argvs = [
        [*program, "--one", f"{d:.3f}", str(out / f"{i}.txt")] for i, d in enumerate(durations)
    ]
    return _script(folder, SEED_QUEUE, argvs)


def _script(folder: Path, script: str, argvs: list[list[str]]) -> float:
    name = "static_split" if script is STATIC_SPLIT else "seed_queue"
    tasks, code = folder / f"{name}-tasks.json", folder / f"{name}.py"
    tasks.write_text(json.dumps(argvs))
    code.write_text(script)
    return _timed([sys.executable, str(code), str(tasks), str(SLOTS)])
