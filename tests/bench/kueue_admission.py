"""Admission latency per task pod through Kueue vs without it, on one test bed in one run, and
what a quota does to a batch much larger than it.

Latency: from a task pod first seen (ADDED, the operator's create) to first seen bound to a node
(spec.nodeName), client-side clocks on one watch. Without Kueue that is the scheduler alone; with
Kueue it adds the pod webhook's gate, the Workload Kueue creates, its admission, the gate's
removal, then the scheduler. Both batches run with `parallelism` below the quota and the
cluster's GPUs, so neither waits for capacity: the difference is Kueue's admission path.

Quota exhaustion: a batch of `--big` tasks through a queue of `--quota` GPUs (the cluster has
more): the most pods running at once (must stay <= the quota), and the time to finish.

`python -m bench.kueue_admission [--tasks 40] [--big 200] [--quota 8]` (PYTHONPATH=tests);
writes tests/bench/results/kueue-admission.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from gpubatch.api.names import LABEL_KUEUE_QUEUE, LABEL_TASK_INDEX
from support.batches import Batches, PodMonitor, batch
from support.crd import install_crd
from support.operator_process import OperatorProcess
from support.podwatch import PodEvents
from testbed import Testbed, TestbedConfig
from testbed.kueue import Kueue, Queue

RESULTS = Path(__file__).resolve().parent / "results" / "kueue-admission.json"


class BindClock:
    """First-seen and first-bound monotonic times of each task pod in one namespace."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self._lock = threading.Lock()

    def on(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if LABEL_TASK_INDEX not in (pod["metadata"].get("labels") or {}):
            return
        now = time.monotonic()
        with self._lock:
            self.seen.setdefault(name, now)
            if (pod.get("spec") or {}).get("nodeName"):
                self.bound.setdefault(name, now)

    def latencies_ms(self) -> list[float]:
        return sorted(1000 * (self.bound[n] - self.seen[n]) for n in self.bound)


def summary(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=20) if len(values) > 1 else values * 19
    return {
        "pods": len(values),
        "p50_ms": round(statistics.median(values), 1),
        "p95_ms": round(cuts[18], 1),
        "max_ms": round(max(values), 1),
    }


def latency_round(bed: Testbed, kueue: Kueue, tasks: int, queued: bool) -> dict[str, float]:
    namespace = bed.create_namespace(f"lat-{'kueue' if queued else 'plain'}-{uuid.uuid4().hex[:4]}")
    body = batch("lat", tasks={"range": {"stop": tasks}}, duration="1s", parallelism=8)
    if queued:
        queue = Queue(name=f"lat-{uuid.uuid4().hex[:6]}", gpus=16)
        kueue.create_queue(queue, namespace)
        body["metadata"]["labels"] = {LABEL_KUEUE_QUEUE: queue.name}
    clock = BindClock()
    batches = Batches(bed, namespace)
    with PodEvents(bed, namespace, clock.on):
        batches.create(body)
        batches.wait_condition("lat", "Complete", timeout=600)
    return summary(clock.latencies_ms())


def quota_round(bed: Testbed, kueue: Kueue, tasks: int, quota: int) -> dict[str, Any]:
    namespace = bed.create_namespace(f"quota-{uuid.uuid4().hex[:4]}")
    queue = Queue(name=f"big-{uuid.uuid4().hex[:6]}", gpus=quota)
    kueue.create_queue(queue, namespace)
    body = batch("big", tasks={"range": {"stop": tasks}}, duration="500ms")
    body["metadata"]["labels"] = {LABEL_KUEUE_QUEUE: queue.name}
    batches = Batches(bed, namespace)
    began = time.monotonic()
    with PodMonitor(bed, namespace) as monitor:
        batches.create(body)
        batches.wait_condition("big", "Complete", timeout=1200)
    return {
        "tasks": tasks,
        "quota_gpus": quota,
        "cluster_gpus": 16,
        "max_running": monitor.max_running,
        "max_unscheduled": monitor.max_unscheduled,
        "pods_created": len(monitor.created),
        "violations": monitor.violations,
        "seconds": round(time.monotonic() - began, 1),
        "lower_bound_seconds": round(tasks * 0.5 / quota, 1),
        "succeeded": batches.status("big")["counts"]["succeeded"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=40, help="tasks per latency batch (40)")
    parser.add_argument("--big", type=int, default=200, help="tasks of the quota batch (200)")
    parser.add_argument("--quota", type=int, default=8, help="GPUs of its queue (8)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="gpubatch-kueue-bench-"))
    bed = Testbed.create(TestbedConfig(), workdir=workdir, tied=True)
    bed.start()
    kueue = Kueue(bed)
    operator = OperatorProcess(testbed=bed, log_path=workdir / "logs" / "operator.log")
    try:
        kueue.start()
        install_crd(bed)
        operator.start()
        result = {
            "without_kueue": latency_round(bed, kueue, args.tasks, queued=False),
            "with_kueue": latency_round(bed, kueue, args.tasks, queued=True),
            "quota_exhaustion": quota_round(bed, kueue, args.big, args.quota),
        }
    finally:
        operator.stop()
        kueue.stop()
        bed.stop()
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
