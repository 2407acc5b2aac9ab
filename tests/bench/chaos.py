"""Chaos runs: hurt the operator and the control plane mid-batch; nothing may be lost or doubled.

Every run checks the same end state: the batch is Complete with every task succeeded exactly
once (one attempt-0 pod per task unless a disruption forced a retry), no two attempts of a task
were ever alive at once, no pod still carries the tracking finalizer, and no pod is left over.

`python -m bench.chaos [run ...] [--tasks N]` (PYTHONPATH=tests); `make chaos`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import BenchEnv, bench_env, wait_batch
from support.batches import Batches, PodMonitor
from support.pods import gpu_pod_template
from testbed import GpuNodePool

Fault = Callable[[BenchEnv, random.Random], int]


def _kill_operator_repeatedly(env: BenchEnv, rng: random.Random, until: Callable[[], bool]) -> int:
    kills = 0
    while not until():
        time.sleep(rng.uniform(1.0, 4.0))
        if until():
            break
        env.operator.kill()
        kills += 1
        time.sleep(rng.uniform(0.0, 1.0))
        env.operator.start()
    return kills


def _run(
    name: str,
    tasks: int,
    fault: Callable[[BenchEnv, Batches, random.Random], dict[str, Any]],
    workdir: Path,
    seed: int = 1,
) -> dict[str, Any]:
    pools = [GpuNodePool(name="gpu", count=4, gpus=8)]
    rng = random.Random(seed)
    with bench_env(workdir, pools) as env:
        ns = env.namespace(name)
        batches = Batches(env.testbed, ns)
        body = {
            "apiVersion": "gpubatch.io/v1alpha1",
            "kind": "GPUBatch",
            "metadata": {"name": name},
            "spec": {
                "tasks": {"range": {"stop": tasks}},
                "template": gpu_pod_template(duration="300ms"),
                "retry": {"limit": 0},
            },
        }
        began = time.monotonic()
        with PodMonitor(env.testbed, ns) as monitor:
            batches.create(body)
            details = fault(env, batches, rng)
            if not env.operator.alive():
                env.operator.start()
            obj = wait_batch(env.testbed, ns, name, timeout=max(600.0, tasks * 0.5))
        elapsed = time.monotonic() - began
        status = obj["status"]
        leftover_deadline = time.monotonic() + 120
        while time.monotonic() < leftover_deadline and batches.pods():
            time.sleep(1)
        pods_left = len(batches.pods())
        attempts = {}
        for pod in monitor.created:
            index, attempt = pod.rsplit("-", 2)[-2:]
            attempts.setdefault(int(index), []).append(int(attempt))
    return {
        "run": name,
        "tasks": tasks,
        "seconds": elapsed,
        **details,
        "succeeded": status["counts"]["succeeded"],
        "failed": status["counts"]["failed"],
        "succeeded_indexes_exact": status["succeededIndexes"]
        == (f"0-{tasks - 1}" if tasks > 1 else "0"),
        "tasks_with_extra_attempts": sum(1 for a in attempts.values() if len(a) > 1),
        "tasks_never_started": tasks - len(attempts),
        "concurrent_attempt_violations": len(monitor.violations),
        "pods_left": pods_left,
        "ok": status["counts"]["succeeded"] == tasks and not monitor.violations and not pods_left,
    }


def operator_sigkill(tasks: int, workdir: Path) -> dict[str, Any]:
    def fault(env: BenchEnv, batches: Batches, rng: random.Random) -> dict[str, Any]:
        def done() -> bool:
            status = batches.status("sigkill")
            return status.get("counts", {}).get("succeeded", 0) >= tasks

        return {"operator_kills": _kill_operator_repeatedly(env, rng, done)}

    return _run("sigkill", tasks, fault, workdir)


def apiserver_restart(tasks: int, workdir: Path) -> dict[str, Any]:
    def fault(env: BenchEnv, batches: Batches, rng: random.Random) -> dict[str, Any]:
        _wait_progress(batches, "apiserver", tasks // 3)
        seconds = env.testbed.restart_apiserver()
        return {"apiserver_restart_seconds": seconds}

    return _run("apiserver", tasks, fault, workdir)


def etcd_restart(tasks: int, workdir: Path) -> dict[str, Any]:
    def fault(env: BenchEnv, batches: Batches, rng: random.Random) -> dict[str, Any]:
        _wait_progress(batches, "etcd", tasks // 3)
        seconds = env.testbed.restart("etcd", kill=True)
        # Observed here: after etcd is killed, kwok (the simulated kubelets) and kube-scheduler
        # can miss pod events from the restart window and leave a pod Running or Pending for
        # minutes (real kubelets and the scheduler relist on their own, on the order of
        # minutes). Restart both, as a node agent reconnecting would; the operator is not
        # touched - its recovery is what this run checks.
        env.testbed.restart("kwok")
        env.testbed.restart("kube-scheduler")
        return {"etcd_kill_restart_seconds": seconds}

    return _run("etcd", tasks, fault, workdir)


def node_deleted(tasks: int, workdir: Path) -> dict[str, Any]:
    def fault(env: BenchEnv, batches: Batches, rng: random.Random) -> dict[str, Any]:
        _wait_progress(batches, "nodeloss", tasks // 3)
        env.testbed.delete_node("gpu-0")
        return {"node_deleted": "gpu-0"}

    return _run("nodeloss", tasks, fault, workdir)


def _wait_progress(batches: Batches, name: str, done: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if batches.status(name).get("counts", {}).get("succeeded", 0) >= done:
                return
        except Exception:
            pass
        time.sleep(0.2)


RUNS = {
    "sigkill": operator_sigkill,
    "apiserver": apiserver_restart,
    "etcd": etcd_restart,
    "nodeloss": node_deleted,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("runs", nargs="*", default=[])
    parser.add_argument("--tasks", type=int, default=2000)
    args = parser.parse_args(argv)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    ok = True
    for name in args.runs or list(RUNS):
        with tempfile.TemporaryDirectory(prefix=f"chaos-{name}-") as tmp:
            result = RUNS[name](args.tasks, Path(tmp))
        ok = ok and bool(result["ok"])
        text = json.dumps(result, indent=2)
        print(f"== {name}\n{text}", flush=True)
        (results / f"chaos-{name}.json").write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
