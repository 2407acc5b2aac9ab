"""Prometheus metrics of the operator: tasks by phase, latencies, API traffic, status writes.

A private registry (not the process-global default) so tests can run several operators in one
process, and so only gpubatch's own series are exported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gpubatch.api.status import GPUBatchStatus

if TYPE_CHECKING:
    from gpubatch.core.podspec import BatchRef
    from gpubatch.edges.kube import KubeClient

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _ApiRequests(Collector):
    """Exports the client's own request counters at scrape time (no per-request overhead)."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gpubatch_api_requests",
            "Kubernetes API requests by verb and HTTP status",
            labels=["verb", "code"],
        )
        for (verb, code), count in sorted(self.client.stats.requests.items()):
            family.add_metric([verb, str(code)], count)
        yield family


class Metrics:
    """Every series the operator exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks = Gauge(
            "gpubatch_tasks",
            "Tasks by state per batch",
            ["namespace", "batch", "state"],
            registry=r,
        )
        self.pods_created = Counter("gpubatch_pods_created", "Task pods created", registry=r)
        self.status_writes = Counter("gpubatch_status_writes", "GPUBatch status writes", registry=r)
        self.reconcile_errors = Counter(
            "gpubatch_reconcile_errors", "Reconcile passes that failed and were retried", registry=r
        )
        self.reconcile_seconds = Histogram(
            "gpubatch_reconcile_seconds",
            "Duration of one reconcile pass",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.reaction_seconds = Histogram(
            "gpubatch_reaction_seconds",
            "From a task pod event to the next task pod created in response",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.scan_seconds = Histogram(
            "gpubatch_output_scan_seconds",
            "Bulk output existence check per batch generation",
            buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )

    def watch_client(self, client: KubeClient) -> None:
        self.registry.register(_ApiRequests(client))

    def observe_status(self, ref: BatchRef, status: GPUBatchStatus) -> None:
        counts = status.counts
        for state, value in (
            ("pending", counts.pending),
            ("running", counts.running),
            ("succeeded", counts.succeeded),
            ("failed", counts.failed),
            ("skipped", counts.skipped),
        ):
            self.tasks.labels(ref.namespace, ref.name, state).set(value)

    def forget(self, ref: BatchRef) -> None:
        for state in ("pending", "running", "succeeded", "failed", "skipped"):
            with contextlib.suppress(KeyError):
                self.tasks.remove(ref.namespace, ref.name, state)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - in-cluster port
        start_http_server(port, addr=address, registry=self.registry)
