"""kopf registrations. Handlers only wake the reconcile of one batch; they decide nothing.

- an index of task pods (server-side label selector: only pods carrying our batch-uid label are
  ever sent to the operator), each reduced to a PodView;
- an index of nodes: labels and allocatable resources (the GPU model of a pod's node, and
  whether any node could ever hold an unschedulable task pod);
- the pod index wakes the pod's batch on every pod event, and a batch event handler wakes it on
  spec edits;
- one daemon per GPUBatch running its reconcile loop;
- a delete handler that releases the batch's pods, so deleting a batch never leaves pods hanging
  on the tracking finalizer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from gpubatch.api.lease import LeaseRequest, LeaseResponse
from gpubatch.api.names import (
    FINALIZER_TRACKING,
    GROUP,
    LABEL_BATCH_UID,
    MANAGED_BY_GPUBATCH,
    PLURAL,
    VERSION,
)
from gpubatch.controller.leaseserver import LeaseHandler, LeaseServer, LeaseSettings, PodIdentity
from gpubatch.controller.metrics import Metrics
from gpubatch.controller.reconcile import BatchRuntime, Reconciler
from gpubatch.controller.warm import WarmLeases, end_requests
from gpubatch.core.planner import Event, Limits
from gpubatch.core.podspec import LeaseEndpoint, batch_ref, task_selector
from gpubatch.core.podview import PodView, pod_view
from gpubatch.core.stuck import NodeCapacity
from gpubatch.core.warmpod import WarmPodView, warm_pod_view
from gpubatch.edges.kube import ApiEndpoint, KubeClient

log = logging.getLogger("gpubatch.handlers")


@dataclass(frozen=True)
class Connection:
    """The API client and the reconcile that uses it, made once the login handler has run."""

    client: KubeClient
    reconciler: Reconciler


@dataclass
class Operator:
    """The operator's process-wide objects: made in `main()` and handed to kopf as the memo
    (`kopf.operator(memo=...)`), so every handler reaches them through its `memo` argument.

    kopf gives each resource a shallow copy of its memo, so the memo holds this one object
    (`memo.operator`) and every handler shares it."""

    limits: Limits = field(default_factory=Limits)
    api_concurrency: int = 32
    metrics_port: int | None = None
    metrics: Metrics = field(default_factory=Metrics)
    #: Kueue LocalQueue of batches that name none (--default-queue-name); None: not queued.
    default_queue: str | None = None
    runtimes: dict[str, BatchRuntime] = field(default_factory=dict)
    #: Each running batch as its reconcile loop sees it (the lease handler finds pods there).
    batches: dict[str, KopfBatch] = field(default_factory=dict)
    connected: Connection | None = None
    #: The HTTPS lease endpoint of warm workers (None: not served), and what answers it.
    lease: LeaseSettings | None = None
    lease_handler: LeaseHandler | None = None
    lease_server: LeaseServer | None = None

    def connect(self, endpoint: ApiEndpoint) -> None:
        """Make the client with the first credentials kopf's login found."""
        if self.connected is not None:
            return
        client = KubeClient(endpoint, concurrency=self.api_concurrency)
        self.metrics.watch_client(client)
        leases = None
        if self.lease is not None:  # warm batches run only where pods can ask for leases
            leases = LeaseEndpoint(self.lease.url, self.lease.ca_pem())
            self.lease_handler = self.warm_leases()
        reconciler = Reconciler(client, self.metrics, self.limits, leases)
        self.connected = Connection(client, reconciler)

    def warm_leases(self) -> WarmLeases:
        """The lease handler: requests go to their batch's loop, pods are checked against the
        pod index."""

        def warm_pods(uid: str) -> list[WarmPodView]:
            batch = self.batches.get(uid)
            return list(batch.warm_pods()) if batch is not None else []

        return WarmLeases(self.runtimes.get, warm_pods)

    @property
    def connection(self) -> Connection:
        """kopf runs the login handler before any watch, so resource handlers always find a
        connection; the error is for a handler that somehow runs first (kopf retries it)."""
        if self.connected is None:
            raise kopf.TemporaryError("no API credentials yet", delay=1)
        return self.connected

    def memo(self) -> kopf.Memo:
        return kopf.Memo(operator=self)

    # The lease server is started before kopf's login has made the client, and the lease
    # handler may come later still: the server calls these two, which answer 503 (the worker
    # asks again) until both exist.
    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        return await self.connection.client.review_token(token, audiences)

    async def handle_lease(self, pod: PodIdentity, request: LeaseRequest) -> LeaseResponse:
        if self.lease_handler is None:
            raise kopf.TemporaryError("no lease handler yet", delay=1)
        return await self.lease_handler.handle_lease(pod, request)

    async def start_lease_server(self) -> None:
        if self.lease is None or self.lease_server is not None:
            return
        self.lease_server = LeaseServer(
            self,
            self,
            host=self.lease.host,
            port=self.lease.port,
            cert_file=self.lease.cert_file,
            key_file=self.lease.key_file,
        )
        await self.lease_server.start()


def _operator(memo: Any) -> Operator:
    operator: Operator = memo.operator
    return operator


def _endpoint(info: kopf.ConnectionInfo) -> ApiEndpoint:
    def text(value: str | bytes | None) -> str | None:
        return value.decode() if isinstance(value, bytes) else value

    def path(value: object) -> str | None:
        return None if value is None else str(value)

    return ApiEndpoint(
        server=info.server,
        ca_path=path(info.ca_path),
        ca_data=text(info.ca_data),
        insecure=bool(info.insecure),
        token=info.token,
        certificate_path=path(info.certificate_path),
        certificate_data=text(info.certificate_data),
        private_key_path=path(info.private_key_path),
        private_key_data=text(info.private_key_data),
    )


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff-base, minus the deep copy of every pod on every event.

    kopf builds the "essence" of each object on each event for change detection, but only
    GPUBatches have change-detecting handlers (on.delete); for pods the deep copy was the single
    largest cost of the operator (profiled: ~13% of its CPU at 2k tasks). Pods get an empty
    essence, which nothing reads.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if LABEL_BATCH_UID in (body.get("metadata", {}).get("labels") or {}):  # a task pod
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)


@kopf.on.login(id="login")
def login(memo: Any, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then KUBECONFIG; our client shares the credentials."""
    info = kopf.login_with_service_account(**kwargs)
    if info is not None:
        info = in_cluster_address(info, os.environ)
    info = info or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        _operator(memo).connect(_endpoint(info))
    return info


def in_cluster_address(
    info: kopf.ConnectionInfo, environ: Mapping[str, str]
) -> kopf.ConnectionInfo:
    """The API server address a pod is given (KUBERNETES_SERVICE_HOST/PORT, as client-go's
    in-cluster config reads it) instead of kopf's fixed `https://kubernetes.default.svc`, which
    needs cluster DNS; without the variables kopf's address stays."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return info
    host = f"[{host}]" if ":" in host else host
    return dataclasses.replace(info, server=f"https://{host}:{port}")


@kopf.on.startup(id="startup")
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    prefix = GROUP
    settings.persistence.finalizer = f"{prefix}/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    # Only our task pods reach the operator: the selector is applied by the API server.
    settings.watching.label_selectors["v1", "pods"] = LABEL_BATCH_UID
    # React to a pod event within milliseconds, not kopf's default 0.1 s batching window.
    settings.batching.batch_window = 0.005
    settings.posting.level = logging.WARNING
    settings.peering.standalone = True
    # Serve the resources found at start-up (the CRD is installed before the operator): no
    # cluster-wide list/watch of CRDs (or, with --namespace, of namespaces), so the chart's RBAC
    # needs neither. A CRD installed after the operator started needs an operator restart.
    settings.scanning.disabled = True
    settings.posting.reporting_component = "gpubatch-operator"
    operator = _operator(memo)
    if operator.metrics_port:
        operator.metrics.serve(operator.metrics_port)
    await operator.start_lease_server()


@kopf.on.cleanup(id="cleanup")
async def cleanup(memo: Any, **_: Any) -> None:
    operator = _operator(memo)
    if operator.lease_server is not None:
        await operator.lease_server.stop()
        operator.lease_server = None
    connected = operator.connected
    if connected is not None:
        await connected.client.close()


@kopf.index("v1", "pods", id="task_pods", labels={LABEL_BATCH_UID: kopf.PRESENT})
async def task_pods(
    body: kopf.Body, memo: Any, **_: Any
) -> dict[str, PodView | WarmPodView] | None:
    """Keep a PodView per task pod, and wake its batch.

    Waking from the index handler (instead of a separate event handler) halves kopf's per-event
    work: at 10k pods and ~6 events each, kopf's handler overhead dominates the operator's CPU.
    The reconcile reads the index after a short coalescing delay, by when kopf has stored the
    value returned here. Async, because kopf runs sync handlers in a thread pool.
    """
    pod = dict(body)
    view: PodView | WarmPodView | None = pod_view(pod) or warm_pod_view(pod)
    if view is None:
        return None
    uid = view.batch_uid if isinstance(view, PodView) else view.pod.batch_uid
    runtime = _operator(memo).runtimes.get(uid)
    if runtime is not None:
        runtime.wake()
    return {uid: view}


@kopf.index("v1", "nodes", id="node_labels")
async def node_labels(
    name: str, labels: kopf.Labels, status: kopf.Status, **_: Any
) -> dict[str, NodeCapacity]:
    allocatable = {str(k): str(v) for k, v in (status.get("allocatable") or {}).items()}
    return {name: NodeCapacity(name, dict(labels), allocatable)}


def managed_here(spec: kopf.Spec, **_: Any) -> bool:
    """kopf's `when=` filter on every GPUBatch handler: spec.managedBy unset or gpubatch's own.

    A batch managed elsewhere (MultiKueue mirrors it to a worker cluster) must see no write from
    this operator at all. kopf adds its `cleanup` finalizer only when a handler that needs one
    matches the object, and `when=` is part of that match, so filtering each handler here (not
    returning early inside them) keeps the finalizer, the daemon and its status writes away.
    managedBy is immutable (a CEL transition rule), so a batch never moves in or out mid-run.
    """
    return spec.get("managedBy") in (None, MANAGED_BY_GPUBATCH)


@kopf.on.event(GROUP, VERSION, PLURAL, id="wake_on_batch_change", when=managed_here)
async def wake_on_batch_change(uid: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A spec edit (suspend, parallelism, ...) must act now, not at the next pod event.

    Only a new generation wakes the batch: every status write of the loop itself comes back as
    an event, and waking on those doubled the passes (and their API reads of pods and nodes)
    for nothing."""
    runtime = _operator(memo).runtimes.get(uid)
    if runtime is None:
        return
    if runtime.needs_pass_for((body.get("metadata") or {}).get("generation")):
        runtime.wake()


@kopf.daemon(GROUP, VERSION, PLURAL, id="reconcile", cancellation_timeout=1.0, when=managed_here)
async def reconcile(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    uid: str,
    stopped: kopf.DaemonStopped,
    memo: Any,
    **kwargs: Any,
) -> None:
    # kopf passes each index by its handler id.
    task_pods: kopf.Index[str, PodView | WarmPodView] = kwargs["task_pods"]
    node_labels: kopf.Index[str, NodeCapacity] = kwargs["node_labels"]
    operator = _operator(memo)
    reconciler = operator.connection.reconciler
    # The queue label is read when the operator starts serving the batch (like Kueue, which
    # lets a job change queues only before admission): an edit applies after a restart.
    labels = (body.get("metadata") or {}).get("labels") or {}
    ref = batch_ref(name, namespace or "default", uid, labels, operator.default_queue)
    runtime = operator.runtimes.setdefault(uid, BatchRuntime(ref=ref))

    batch = KopfBatch(uid, body, task_pods, node_labels, stopped)
    operator.batches[uid] = batch
    try:
        await reconciler.run(runtime, batch)
    finally:
        runtime.wakeup.cancel()
        end_requests(runtime.warm)
        operator.batches.pop(uid, None)
        if body.metadata.get("deletionTimestamp"):
            operator.runtimes.pop(uid, None)
            operator.metrics.forget(runtime.ref)


@dataclass(frozen=True)
class KopfBatch:
    """One batch as kopf shows it: its live body, its pods in the pod index, node labels from
    the node index; its Events go through kopf's poster."""

    uid: str
    body: kopf.Body
    task_pods: kopf.Index[str, PodView | WarmPodView]
    node_index: kopf.Index[str, NodeCapacity]
    stop_flag: kopf.DaemonStopped

    def pods(self) -> Iterable[PodView]:
        return [v for v in self.task_pods.get(self.uid, []) if isinstance(v, PodView)]

    def warm_pods(self) -> Iterable[WarmPodView]:
        return [v for v in self.task_pods.get(self.uid, []) if isinstance(v, WarmPodView)]

    def node_labels(self, node: str) -> Mapping[str, str]:
        for found in self.node_index.get(node, []):
            return found.labels
        return {}

    def cluster_nodes(self) -> list[NodeCapacity]:
        return [found for values in self.node_index.values() for found in values]

    def post(self, event: Event) -> None:
        kopf.event(self.body, type=event.type, reason=event.reason, message=event.message)

    def stopped(self) -> bool:
        return self.stop_flag.is_set()


@kopf.on.delete(GROUP, VERSION, PLURAL, id="release_pods", when=managed_here)
async def release_pods(namespace: str | None, uid: str, memo: Any, **_: Any) -> None:
    """Drop the tracking finalizer from every task pod; garbage collection then removes them."""
    operator = _operator(memo)
    client = operator.connection.client
    namespace = namespace or "default"
    for pod in await client.list_pods(namespace, task_selector(uid)):
        meta = pod["metadata"]
        if FINALIZER_TRACKING in (meta.get("finalizers") or []):
            await client.remove_pod_finalizer(namespace, meta["name"], FINALIZER_TRACKING)
    operator.runtimes.pop(uid, None)
