"""Shared machinery for benchmarks and chaos runs: a test bed, the operator, a pod watcher.

Every scenario runs its systems side by side on the same test bed in the same run, so results
are compared as ratios on one noisy machine, never against numbers from another run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from support.audit import audited
from support.batches import Batches
from support.crd import install_crd
from support.operator_process import OperatorProcess
from support.podwatch import PodEvents
from testbed import GpuNodePool, Testbed, TestbedConfig

OPERATOR_USER = "gpubatch-operator"


@dataclass
class PodTimeline:
    """Wall-clock times (monotonic) at which the watcher saw each pod appear and finish."""

    added: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)  # first seen Running
    finished: dict[str, float] = field(default_factory=dict)
    node: dict[str, str] = field(default_factory=dict)
    order: list[tuple[float, str, str]] = field(default_factory=list)  # (t, kind, pod)

    def creation_rate(self, first: int | None = None) -> float:
        """Pods per second between the first and the last pod seen created (or the `first`-th:
        the rate at which free GPUs are filled, before finishes pace the creates)."""
        times = sorted(self.added.values())[:first]
        if len(times) < 2 or times[-1] == times[0]:
            return float("nan")
        return (len(times) - 1) / (times[-1] - times[0])

    def reaction_latencies(self) -> list[float]:
        """For each finish, the delay until the next pod was created (FIFO pairing)."""
        latencies: list[float] = []
        pending: list[float] = []
        for t, kind, _ in sorted(self.order):
            if kind == "finished":
                pending.append(t)
            elif kind == "added" and pending:
                latencies.append(t - pending.pop(0))
        return latencies

    def gpu_idle_gaps(self) -> list[float]:
        """For each finish, the delay until the next pod started on the same node (FIFO per
        node): how long a freed GPU waits for work, which is what makespan pays for."""
        per_node: dict[str, list[tuple[float, int]]] = {}
        for name, node in self.node.items():
            if name in self.finished:
                per_node.setdefault(node, []).append((self.finished[name], 0))
            if name in self.started:
                per_node.setdefault(node, []).append((self.started[name], 1))
        gaps: list[float] = []
        for events in per_node.values():
            waiting: list[float] = []
            for t, kind in sorted(events):
                if kind == 0:
                    waiting.append(t)
                elif waiting:
                    gaps.append(t - waiting.pop(0))
        return gaps


class PodWatcher:
    """Watches one namespace's pods from a thread and builds a PodTimeline."""

    def __init__(self, testbed: Testbed, namespace: str) -> None:
        self.timeline = PodTimeline()
        self._events = PodEvents(testbed, namespace, self._on)

    def __enter__(self) -> PodWatcher:
        self._events.__enter__()
        return self

    def __exit__(self, *args: object) -> None:
        self._events.__exit__(*args)

    def _on(self, kind: str, pod: dict[str, Any]) -> None:
        now = time.monotonic()
        name = pod["metadata"]["name"]
        t = self.timeline
        if name not in t.added:
            t.added[name] = now
            t.order.append((now, "added", name))
        phase = (pod.get("status") or {}).get("phase")
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            t.node[name] = node
        if phase == "Running" and name not in t.started:
            t.started[name] = now
        if phase in ("Succeeded", "Failed") and name not in t.finished:
            t.finished[name] = now
            t.order.append((now, "finished", name))


@dataclass
class BenchEnv:
    """A test bed plus an operator with its own identity (so its API calls can be counted)."""

    testbed: Testbed
    operator: OperatorProcess

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{int(time.time() * 1000) % 10_000_000}"
        return self.testbed.create_namespace(name)

    def audited_requests(self) -> int:
        """Requests the operator has made so far (kube-apiserver's audit log)."""
        return len(audited(self.testbed, OPERATOR_USER))


@contextmanager
def bench_env(
    workdir: Path, pools: list[GpuNodePool], *, operator_args: list[str] = ()
) -> Iterator[BenchEnv]:
    bed = Testbed.create(
        TestbedConfig(node_pools=pools, audit_users=[OPERATOR_USER]), workdir=workdir
    )
    bed.start()
    try:
        install_crd(bed)
        operator = OperatorProcess(
            testbed=bed,
            log_path=workdir / "operator.log",
            extra_args=list(operator_args),
            kubeconfig=bed.user_kubeconfig(OPERATOR_USER),
        )
        operator.start()
        try:
            yield BenchEnv(testbed=bed, operator=operator)
        finally:
            operator.stop()
    finally:
        bed.destroy()


def wait_batch(bed: Testbed, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """Wait until the batch is Complete or Failed; return its final object."""
    return Batches(bed, namespace).wait_finished(name, timeout=timeout)


def wait_job(bed: Testbed, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    api = client.BatchV1Api(bed.api_client())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.read_namespaced_job(name, namespace)
        for cond in job.status.conditions or []:
            if cond.type in ("Complete", "Failed") and cond.status == "True":
                return {"succeeded": job.status.succeeded, "failed": job.status.failed}
        time.sleep(0.2)
    raise TimeoutError(f"job {namespace}/{name} not finished after {timeout}s")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _admin_endpoint(bed: Testbed) -> Any:
    from gpubatch.edges.kube import ApiEndpoint

    c = bed.certs
    return ApiEndpoint(
        server=bed.server,
        ca_path=str(c.ca_cert),
        certificate_path=str(c.admin_cert),
        private_key_path=str(c.admin_key),
    )


async def minimal_dispatcher(
    bed: Testbed,
    namespace: str,
    count: int,
    window: int,
    template: dict[str, Any],
    concurrency: int = 32,
) -> None:
    """Run `count` task pods with the least work a dispatcher can do: keep `window` of them
    unfinished, and for each one that finishes delete it and create the next. No finalizer, no
    status, no retries: the ceiling of this workload on this API server, scheduler and kwok,
    against which the operator's own bookkeeping is judged."""
    from gpubatch.edges.kube import KubeClient

    loop = asyncio.get_running_loop()
    finished: asyncio.Queue[str] = asyncio.Queue()
    seen: set[str] = set()

    def on_event(kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase")
        if kind != "DELETED" and phase in ("Succeeded", "Failed") and name not in seen:
            seen.add(name)
            loop.call_soon_threadsafe(finished.put_nowait, name)

    def pod(i: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"task-{i}", **template["metadata"]},
            "spec": template["spec"],
        }

    with PodEvents(bed, namespace, on_event):
        async with KubeClient(_admin_endpoint(bed), concurrency=concurrency) as kube:
            started = min(window, count)
            work = [asyncio.create_task(kube.create_pod(namespace, pod(i))) for i in range(started)]
            for _ in range(count):
                name = await finished.get()
                work.append(asyncio.create_task(kube.delete_pod(namespace, name, grace_seconds=0)))
                if started < count:
                    work.append(asyncio.create_task(kube.create_pod(namespace, pod(started))))
                    started += 1
            await asyncio.gather(*work)


async def raw_create_ceiling(
    bed: Testbed, namespace: str, count: int, concurrency: int = 32
) -> float:
    """Pods/s a minimal async client reaches creating `count` pods (nobody schedules them)."""
    from gpubatch.edges.kube import KubeClient

    async with KubeClient(_admin_endpoint(bed), concurrency=concurrency) as kube:

        def pod(i: int) -> dict[str, Any]:
            return {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"raw-{i}"},
                "spec": {
                    "schedulerName": "nobody",
                    "containers": [{"name": "c", "image": "registry.example.com/task:1"}],
                },
            }

        began = time.monotonic()
        await asyncio.gather(*(kube.create_pod(namespace, pod(i)) for i in range(count)))
        return count / (time.monotonic() - began)


def object_size(bed: Testbed, namespace: str, name: str) -> int:
    out = bed.kubectl("-n", namespace, "get", "gpub", name, "-o", "json").stdout
    return len(json.dumps(json.loads(out), separators=(",", ":")).encode())
