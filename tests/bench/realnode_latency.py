"""Pod start latency on the real node: from the create call to the pod first seen Running.

Two rounds with the worker image: pods created one at a time (each waits for the previous to
run: the uncontended latency), then all at once (the 2-core machine's contended case). Client-side
clocks on both ends, observed through a watch, so no second-granularity timestamps are involved.

`python -m bench.realnode_latency [--pods 20]` (PYTHONPATH=tests, root); writes
tests/bench/results/realnode-latency.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from support.podwatch import PodEvents
from testbed import Testbed, TestbedConfig
from testbed.realnode.node import REAL_NODE_TAINT, RealNode

RESULTS = Path(__file__).resolve().parent / "results" / "realnode-latency.json"


def pod(name: str, node: RealNode) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"key": REAL_NODE_TAINT, "operator": "Exists"}],
            "nodeSelector": {"kubernetes.io/hostname": node.name},
            "securityContext": {"runAsNonRoot": True},
            "containers": [
                {
                    "name": "task",
                    "image": node.images.worker.ref,
                    "command": ["python3", "-c", "import time; time.sleep(30)"],
                }
            ],
        },
    }


class Starts:
    """Created-at (set by the caller) and first-seen-Running times per pod, from a watch."""

    def __init__(self, bed: Testbed, namespace: str) -> None:
        self.created: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.changed = threading.Condition()
        self.events = PodEvents(bed, namespace, self._on)

    def _on(self, _: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if (obj.get("status") or {}).get("phase") == "Running" and name not in self.running:
            with self.changed:
                self.running[name] = time.monotonic()
                self.changed.notify_all()

    def wait_running(self, names: list[str], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not set(names) <= set(self.running):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"pods not Running after {timeout}s: {names}")
                self.changed.wait(left)

    def latencies(self, names: list[str]) -> list[float]:
        return [self.running[n] - self.created[n] for n in names]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50_s": round(statistics.median(ordered), 2),
        "p95_s": round(p95, 2),
        "max_s": round(ordered[-1], 2),
    }


def run(pods: int) -> dict[str, Any]:
    bed = Testbed.create(TestbedConfig(real_node=True), workdir=Path(tempfile.mkdtemp()))
    try:
        bed.start()
        assert bed.real is not None
        node, api = bed.real, bed.core_v1()
        namespace = bed.create_namespace("latency")
        starts = Starts(bed, namespace)
        results: dict[str, Any] = {}
        with starts.events:
            for mode in ("sequential", "concurrent"):
                names = [f"{mode}-{i}" for i in range(pods)]
                for name in names:
                    starts.created[name] = time.monotonic()
                    api.create_namespaced_pod(namespace, pod(name, node))
                    if mode == "sequential":
                        starts.wait_running([name])
                starts.wait_running(names)
                results[mode] = summary(starts.latencies(names))
                for name in names:
                    api.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        return results
    finally:
        bed.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realnode_latency")
    parser.add_argument("--pods", type=int, default=20)
    args = parser.parse_args(argv)
    results = {"pods": args.pods, **run(args.pods)}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
