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
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import BenchEnv, bench_env, wait_batch
from gpubatch.api.lease import LABEL_WARM_SLOT
from support.batches import Batches, PodMonitor, warm_batch
from support.pods import gpu_pod_template
from testbed import GpuNodePool
from testbed.warmsim import WarmFleet

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


def warm_chaos(tasks: int, workdir: Path, seed: int = 1) -> dict[str, Any]:
    """Issue 15 target 5: a warm batch (tests/testbed/warmsim.py plays its pods' program) while
    the operator is SIGKILLed every few seconds, a random warm pod is deleted every few seconds
    (mid-lease: its worker answers SIGTERM with its progress) and node gpu-0 is deleted at a
    third of the way (its workers die without a word).

    Checked: the status says every task succeeded; the simulator saw no success acknowledged
    twice and no task run in two places at once (per task, the intervals it ran never
    overlap); no pod is left. Tasks run 1 s, so the run lasts long enough for the faults (at
    2,000 tasks on 32 GPUs about a minute of work). Retries are allowed (limit 2): a deleted
    pod's running task may count one failure, as a crash in the middle of a lease does."""
    name = "warm"
    rng = random.Random(seed)
    pools = [GpuNodePool(name="gpu", count=4, gpus=8)]
    with bench_env(workdir, pools) as env, WarmFleet(env.testbed) as fleet:
        ns = env.namespace(name)
        batches = Batches(env.testbed, ns)
        body = warm_batch(
            name,
            template=gpu_pod_template(duration="1s"),
            tasks={"range": {"stop": tasks}},
            retry={"limit": 2},
            parallelism=32,
        )
        began = time.monotonic()
        uid = batches.create(body)["metadata"]["uid"]

        def finished() -> bool:
            try:
                status = batches.status(name)
            except Exception:
                return False
            return any(
                c["type"] in ("Complete", "Failed") and c["status"] == "True"
                for c in status.get("conditions") or []
            )

        disruptions: dict[str, Any] = {}
        pod_faults = threading.Thread(
            target=_disrupt_warm_pods,
            args=(env, Batches(env.testbed, ns), random.Random(seed + 1), finished, tasks // 3),
            kwargs={"into": disruptions},
            daemon=True,
        )
        pod_faults.start()
        kills = _kill_operator_repeatedly(env, rng, finished)
        pod_faults.join(timeout=60)
        if not env.operator.alive():
            env.operator.start()
        obj = wait_batch(env.testbed, ns, name, timeout=max(600.0, tasks * 0.5))
        elapsed = time.monotonic() - began
        leftover_deadline = time.monotonic() + 120
        while time.monotonic() < leftover_deadline and batches.pods():
            time.sleep(1)
        pods_left = len(batches.pods())
        status = obj["status"]
        acked = fleet.log.acknowledged_successes(uid)
        concurrent = fleet.log.concurrent_runs(uid)
        runs = Counter(run.index for run in fleet.log.runs if run.batch_uid == uid)
        # Legitimate only where the first success was never told (its node was deleted).
        successes = Counter(
            run.index for run in fleet.log.runs if run.batch_uid == uid and run.exit_code == 0
        )
        exact = status.get("succeededIndexes") == (f"0-{tasks - 1}" if tasks > 1 else "0")
    return {
        "run": name,
        "tasks": tasks,
        "seconds": elapsed,
        "operator_kills": kills,
        **disruptions,
        "succeeded": status["counts"]["succeeded"],
        "failed": status["counts"]["failed"],
        "succeeded_indexes_exact": exact,
        "successes_acknowledged_twice": sum(1 for count in acked.values() if count > 1),
        "successes_known_only_from_progress": tasks - len(acked),
        "tasks_with_extra_attempts": sum(1 for count in runs.values() if count > 1),
        "tasks_run_to_success_twice": sum(1 for count in successes.values() if count > 1),
        "tasks_never_started": tasks - len(runs),
        "concurrent_attempt_violations": len(concurrent),
        "concurrent_examples": concurrent[:5],
        "sim_errors": fleet.log.errors[:5],
        "pods_left": pods_left,
        "ok": status["counts"]["succeeded"] == tasks
        and exact
        and all(count == 1 for count in acked.values())
        and not concurrent
        and not pods_left,
    }


def _disrupt_warm_pods(
    env: BenchEnv,
    batches: Batches,
    rng: random.Random,
    until: Callable[[], bool],
    node_at: int,
    *,
    into: dict[str, Any],
) -> None:
    """Every 2-5 s delete one running warm pod; once `node_at` tasks succeeded, delete gpu-0."""
    into.update(warm_pods_deleted=0, node_deleted="")
    while not until():
        time.sleep(rng.uniform(2.0, 5.0))
        if until():
            return
        try:
            succeeded = batches.status("warm").get("counts", {}).get("succeeded", 0)
            if not into["node_deleted"] and succeeded >= node_at:
                env.testbed.delete_node("gpu-0")
                into["node_deleted"] = "gpu-0"
                continue
            pods = batches.core.list_namespaced_pod(
                batches.namespace, label_selector=LABEL_WARM_SLOT
            ).items
            running = [
                p.metadata.name
                for p in pods
                if p.status.phase == "Running" and not p.metadata.deletion_timestamp
            ]
            if running:
                batches.core.delete_namespaced_pod(rng.choice(running), batches.namespace)
                into["warm_pods_deleted"] += 1
        except Exception:  # the API server is fine, but a pod may vanish between list and delete
            continue


RUNS = {
    "sigkill": operator_sigkill,
    "apiserver": apiserver_restart,
    "etcd": etcd_restart,
    "nodeloss": node_deleted,
    "warm": warm_chaos,
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
