"""`gpubatch run` against what the users run today, side by side on the same task lists.

Issue 19's three workloads, each run by every method in one go on this machine:

- N tasks of `true` at 2 and 4 slots: the per-task overhead of each method;
- 200 log-normal `sleep` tasks on 4 slots (seeded; their sum is 332 s at full size): whether the
  dispatch order and the time between tasks let the makespan reach the lower bound
  max(sum / slots, longest task);
- a 100,000-task range: how soon the first task starts and the runner's peak memory.

Methods: `gpubatch run` in index order and longest first; the seed-000 script (a Manager queue,
a process per slot, a subprocess per task); GNU parallel `-j N` (from Debian's `parallel`, which
`make bench` installs when missing; skipped, and said so, without it); the seed-003 static split
(the list cut into one contiguous share per slot). Every method runs the same commands, as argv
lists (GNU parallel gets one command line per task, as its users write them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.simulate import LOGNORMAL_SEED, LOGNORMAL_SIGMA, lower_bound_seconds
from testbed import sim

GPUBATCH = [sys.executable, "-m", "gpubatch.cli"]

SEED_QUEUE = textwrap.dedent(
    """
    import json, multiprocessing, subprocess, sys

    def worker(queue):
        while True:
            argv = queue.get()
            if argv is None:
                return
            subprocess.run(argv)

    if __name__ == "__main__":
        tasks, slots = json.load(open(sys.argv[1])), int(sys.argv[2])
        with multiprocessing.Manager() as manager:
            queue = manager.Queue()
            for argv in tasks:
                queue.put(argv)
            for _ in range(slots):
                queue.put(None)
            procs = [multiprocessing.Process(target=worker, args=(queue,)) for _ in range(slots)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
    """
)

STATIC_SPLIT = textwrap.dedent(
    """
    import json, multiprocessing, subprocess, sys

    def worker(share):
        for argv in share:
            subprocess.run(argv)

    if __name__ == "__main__":
        tasks, slots = json.load(open(sys.argv[1])), int(sys.argv[2])
        size = -(-len(tasks) // slots)
        shares = [tasks[i : i + size] for i in range(0, len(tasks), size)]
        procs = [multiprocessing.Process(target=worker, args=(s,)) for s in shares]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    """
)


def skewed_durations(tasks: int, total_seconds: float) -> list[float]:
    """The makespan scenario's seeded log-normal durations, scaled to sum to `total_seconds`."""
    raw = [sim.lognormal_ms(i, 1000.0, LOGNORMAL_SIGMA, LOGNORMAL_SEED) for i in range(tasks)]
    factor = total_seconds * 1000 / sum(raw)
    return [round(ms * factor / 1000, 3) for ms in raw]


def _timed(command: Sequence[str], **kwargs: Any) -> float:
    began = time.monotonic()
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs
    )
    return round(time.monotonic() - began, 3)


def _gpubatch_file(
    folder: Path,
    name: str,
    items: list[dict[str, Any]] | None,
    tasks: int,
    command: list[str],
    order: dict[str, str] | None = None,
) -> Path:
    spec: dict[str, Any] = {
        "tasks": {"items": items}
        if items is not None
        else {"range": {"param": "n", "start": 0, "stop": tasks}},
        "retry": {"limit": 0, "backoffSeconds": 0},
        "worker": {"requireGPU": False},
        "template": {
            "spec": {"containers": [{"name": "task", "image": "unused", "command": command}]}
        },
    }
    if order:
        spec["order"] = order
    path = folder / f"{name}.yaml"
    doc = {
        "apiVersion": "gpubatch.io/v1alpha1",
        "kind": "GPUBatch",
        "metadata": {"name": name},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _run_gpubatch(path: Path, slots: int, state: Path) -> float:
    command = [*GPUBATCH, "run", str(path), "--slots", str(slots), "--no-progress"]
    return _timed([*command, "--state-dir", str(state)])


def _scripts(folder: Path, argvs: list[list[str]], slots: int) -> dict[str, float | None]:
    import json

    tasks = folder / "tasks.json"
    tasks.write_text(json.dumps(argvs))
    queue, split = folder / "seed_queue.py", folder / "static_split.py"
    queue.write_text(SEED_QUEUE)
    split.write_text(STATIC_SPLIT)
    results: dict[str, float | None] = {
        "seed_queue": _timed([sys.executable, str(queue), str(tasks), str(slots)]),
        "static_split": _timed([sys.executable, str(split), str(tasks), str(slots)]),
        "gnu_parallel": None,
    }
    if shutil.which("parallel"):
        lines = folder / "commands.txt"
        lines.write_text("".join(" ".join(argv) + "\n" for argv in argvs))
        with open(lines) as stdin:
            results["gnu_parallel"] = _timed(["parallel", "-j", str(slots)], stdin=stdin)
    return results


def tiny_tasks(tasks: int, slots: int, workdir: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"tiny{slots}-", dir=workdir))
    path = _gpubatch_file(folder, f"tiny{slots}", None, tasks, ["true"])
    result: dict[str, Any] = {"tasks": tasks, "slots": slots}
    result["gpubatch_index"] = _run_gpubatch(path, slots, folder / "state")
    result.update(_scripts(folder, [["true"]] * tasks, slots))
    return result


def skewed_tasks(tasks: int, total_seconds: float, slots: int, workdir: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="skewed-", dir=workdir))
    durations = skewed_durations(tasks, total_seconds)
    items = [{"n": i, "seconds": f"{d:.3f}"} for i, d in enumerate(durations)]
    command = ["sleep", "{seconds}"]
    result: dict[str, Any] = {
        "tasks": tasks,
        "slots": slots,
        "sum_seconds": round(sum(durations), 3),
        "lower_bound_seconds": round(lower_bound_seconds(durations, slots), 3),
    }
    index = _gpubatch_file(folder, "skewed-index", items, tasks, command)
    longest = _gpubatch_file(
        folder, "skewed-lpt", items, tasks, command, {"by": "longestFirst", "costParam": "seconds"}
    )
    result["gpubatch_index"] = _run_gpubatch(index, slots, folder / "state-index")
    result["gpubatch_longest_first"] = _run_gpubatch(longest, slots, folder / "state-lpt")
    result.update(_scripts(folder, [["sleep", f"{d:.3f}"] for d in durations], slots))
    return result


def big_range(tasks: int, slots: int, workdir: Path) -> dict[str, Any]:
    """Seconds until the first task of a `tasks`-task range has run, and the runner's peak
    resident memory over its first few seconds (then it is stopped with Ctrl-C)."""
    folder = Path(tempfile.mkdtemp(prefix="range-", dir=workdir))
    out = folder / "out"
    path = _gpubatch_file(folder, "range", None, tasks, ["touch", "{outputs[0]}"])
    doc = yaml.safe_load(path.read_text())
    doc["spec"].update({"outputRoot": str(out), "outputs": ["{n}.done"]})
    path.write_text(yaml.safe_dump(doc))
    command = [*GPUBATCH, "run", str(path), "--slots", str(slots), "--no-progress"]
    command += ["--state-dir", str(folder / "state")]
    began = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "0.done"
    while not first.exists():
        if process.poll() is not None or time.monotonic() - began > 120:
            raise RuntimeError("the first task never ran")
        time.sleep(0.005)
    first_task = time.monotonic() - began
    time.sleep(3.0)  # let it dispatch for a while, so the peak covers the steady state
    process.send_signal(signal.SIGINT)
    _, _, usage = os.wait4(process.pid, 0)
    return {
        "tasks": tasks,
        "slots": slots,
        "first_task_seconds": round(first_task, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def local_runs(scale: Any, workdir: Path) -> dict[str, Any]:
    return {
        "tiny_2_slots": tiny_tasks(scale.local_tiny_tasks, 2, workdir),
        "tiny_4_slots": tiny_tasks(scale.local_tiny_tasks, 4, workdir),
        "skewed_4_slots": skewed_tasks(
            scale.local_skewed_tasks, scale.local_skewed_seconds, 4, workdir
        ),
        "range": big_range(scale.local_range_tasks, 4, workdir),
        "cpus": os.cpu_count(),
        "gnu_parallel_installed": shutil.which("parallel") is not None,
    }
