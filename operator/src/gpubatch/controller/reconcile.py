"""One batch's reconcile loop: observe -> plan -> apply, woken by events, never by memory.

Every pass derives the truth from the batch object, the pods in the index and the status this
loop last wrote. `observe` gathers it into an `Observation` (the slow parts, expanding tasks
and scanning outputs, once per spec generation in a worker thread); the pure planner
(`gpubatch.core.planner`) decides; `apply` carries the plan out in the order that keeps
completions and exclusivity safe through any crash (see planner).

Why one long-lived loop per batch (a kopf daemon) instead of a handler per event: bursts of pod
events coalesce into one pass and one status write, and the loop holds the per-batch memory that
makes passes cheap (expanded tasks, dispatch cursor, pods created but not yet seen).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from gpubatch.api.names import ANNOTATION_STOP_REASON, FINALIZER_TRACKING
from gpubatch.api.status import GPUBatchStatus
from gpubatch.controller.metrics import Metrics
from gpubatch.controller.taskload import LoadedTasks, load_tasks, scan_outputs
from gpubatch.controller.warm import (
    WarmApply,
    WarmSeen,
    WarmState,
    answer_requests,
    create_warm_pods,
    observe_warm,
    take_warm_actions,
)
from gpubatch.controller.workloadadmission import (
    RECHECK_SECONDS,
    WholeBatchAdmission,
    admitted_spec,
    finish_workload,
)
from gpubatch.core.errors import SpecError, TaskSpecError
from gpubatch.core.indexset import IndexSet
from gpubatch.core.planner import (
    DispatchOrder,
    Event,
    Limits,
    Observation,
    Plan,
    TaskAttempt,
    plan,
    plan_invalid_spec,
)
from gpubatch.core.podspec import BatchRef, LeaseEndpoint, render_pod
from gpubatch.core.podview import PodView
from gpubatch.core.stuck import NodeCapacity
from gpubatch.core.warmfleet import FleetPlan, plan_fleet
from gpubatch.core.warmpod import WarmPodView
from gpubatch.edges.kube import JSON, ApiError

log = logging.getLogger("gpubatch.reconcile")

#: Pods created but not seen in the index after this long are forgotten (the create may have
#: been lost with a restarted API server); the next pass creates them again (409 if they exist).
IN_FLIGHT_TTL: Final = 20.0
#: Wait this long after a wake-up for more events, so a burst becomes one pass and one write.
COALESCE_SECONDS: Final = 0.02
#: After a failed pass, retry after this long (doubling, capped).
RETRY_MIN, RETRY_MAX = 0.5, 30.0


class KubeApi(Protocol):
    """The Kubernetes calls the operator makes (`gpubatch.edges.kube.KubeClient` is the real
    one). 409 on create and 404 on patch/delete mean "already done": the call returns False
    instead of raising; any other refusal raises `ApiError`."""

    async def create_pod(self, namespace: str, pod: JSON) -> bool: ...

    async def remove_pod_finalizer(self, namespace: str, name: str, finalizer: str) -> bool: ...

    async def annotate_pod(
        self, namespace: str, name: str, annotations: dict[str, str]
    ) -> bool: ...

    async def delete_pod(
        self, namespace: str, name: str, *, grace_seconds: int | None = None
    ) -> bool: ...

    async def list_pods(self, namespace: str, label_selector: str) -> list[JSON]: ...

    async def patch_batch_status(self, namespace: str, name: str, status: JSON) -> None: ...

    async def delete_batch(self, namespace: str, name: str) -> bool: ...

    async def get_workload(self, namespace: str, name: str) -> JSON | None: ...

    async def apply_workload_condition(
        self, namespace: str, name: str, condition: JSON
    ) -> bool: ...


class BatchContext(Protocol):
    """What the loop sees of one batch and its surroundings (kopf's body and indexes in the
    operator, plain objects in tests), and where its Events go."""

    @property
    def body(self) -> Mapping[str, Any]:
        """The batch as last seen (kopf keeps it current)."""
        ...

    def pods(self) -> Iterable[PodView]:
        """This batch's task pods, as the pod index holds them."""
        ...

    def warm_pods(self) -> Iterable[WarmPodView]:
        """This batch's warm pods (worker.mode: Warm), as the pod index holds them."""
        ...

    def node_labels(self, node: str) -> Mapping[str, str]: ...

    def cluster_nodes(self) -> Iterable[NodeCapacity]:
        """Every node's labels and allocatable resources (the node index)."""
        ...

    def post(self, event: Event) -> None: ...

    def stopped(self) -> bool:
        """True once the loop must end (the batch is gone or the operator stops)."""
        ...


@dataclass
class Wakeup:
    """Wakes the loop: now (a pod or batch event) or later (a timer the plan asked for)."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    since: float | None = None  # monotonic time of the first unprocessed wake-up
    timer: asyncio.TimerHandle | None = None

    def now(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.event.set()

    def later(self, seconds: float) -> None:
        self.cancel()
        self.timer = asyncio.get_running_loop().call_later(max(0.0, seconds), self.now)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

    async def wait(self) -> float | None:
        """Wait for a wake-up and a little more (coalescing a burst); when it first came."""
        await self.event.wait()
        await asyncio.sleep(COALESCE_SECONDS)
        self.event.clear()
        since, self.since = self.since, None
        return since


@dataclass
class GenerationState:
    """What the loop knows about one spec generation; replaced whole when the spec changes,
    so nothing of an old spec (its order, its cursor, a refusal of its pods) outlives it."""

    loaded: LoadedTasks
    outputs_scanned: bool = False
    #: Why the API server refused this generation's task pods (InvalidSpec), if it did.
    refused: str | None = None
    #: Dispatch-order position before which every task has been attempted.
    cursor: int = 0


@dataclass
class BatchRuntime:
    """What the operator remembers about one batch between passes (lost on restart, by design:
    everything here can be rebuilt from the API).

    Only what a pass cannot derive from the batch and its pods is kept: the status this loop
    wrote (kopf's copy of the body may lag it), whether that write went through, the expanded
    tasks of the current generation, tasks found unrenderable, and pods created but not seen
    in the index yet."""

    ref: BatchRef
    wakeup: Wakeup = field(default_factory=Wakeup)
    status: GPUBatchStatus | None = None  # the status as this loop last wrote (authoritative)
    #: Whether this loop's last status write went through. Until one has (a fresh loop, or
    #: after a refused write), a pass writes the status before it creates anything.
    status_confirmed: bool = False
    current: GenerationState | None = None
    invalid_tasks: dict[int, str] = field(default_factory=dict)
    in_flight: dict[tuple[int, int], float] = field(default_factory=dict)  # key -> created at
    warm: WarmState = field(default_factory=WarmState)  # open lease requests, warm creates
    #: What this pass saw of the warm pods (set by observe, used by decide and apply).
    warm_seen: WarmSeen | None = None
    #: The Kueue Workload that admitted the whole batch (MultiKueue), if one did.
    admission: WholeBatchAdmission | None = None

    def __post_init__(self) -> None:
        if self.admission is None and self.ref.workload is not None:
            self.admission = WholeBatchAdmission(self.ref.workload)

    def wake(self) -> None:
        self.wakeup.now()

    def needs_pass_for(self, generation: int | None) -> bool:
        return self.current is None or self.current.loaded.generation != generation


@dataclass(frozen=True)
class UnparseableSpec:
    """What a pass sees when the spec does not even parse: nothing to plan but the error."""

    status: GPUBatchStatus
    generation: int
    message: str
    now: datetime


def decide(seen: Observation | UnparseableSpec) -> Plan:
    """The plan step: pure, the planner's two entry points."""
    if isinstance(seen, UnparseableSpec):
        return plan_invalid_spec(seen.status, seen.generation, seen.message, seen.now)
    return plan(seen)


class Reconciler:
    """Runs passes for batches; shared by every batch's loop."""

    def __init__(
        self,
        client: KubeApi,
        metrics: Metrics,
        limits: Limits,
        lease_endpoint: LeaseEndpoint | None = None,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.limits = limits
        #: Where warm pods ask for leases; None: this operator runs no warm batch.
        self.lease_endpoint = lease_endpoint

    async def run(self, runtime: BatchRuntime, batch: BatchContext) -> None:
        """The loop: wait for a wake-up, coalesce, pass; until the daemon is stopped."""
        runtime.wake()
        backoff = RETRY_MIN
        while not batch.stopped():
            woken_at = await runtime.wakeup.wait()
            began = time.monotonic()
            try:
                await self.pass_once(runtime, batch, woken_at)
                backoff = RETRY_MIN
            except asyncio.CancelledError:
                raise
            except Exception as error:  # keep the loop alive; the next pass starts from truth
                self.metrics.reconcile_errors.inc()
                log.warning(
                    "batch %s/%s: pass failed (%s); retrying in %.1fs",
                    runtime.ref.namespace,
                    runtime.ref.name,
                    error,
                    backoff,
                )
                runtime.wakeup.later(backoff)
                backoff = min(backoff * 2, RETRY_MAX)
            finally:
                self.metrics.reconcile_seconds.observe(time.monotonic() - began)

    async def pass_once(
        self, runtime: BatchRuntime, batch: BatchContext, woken_at: float | None = None
    ) -> Plan | None:
        """One pass: observe -> plan -> apply. None when the batch is being deleted."""
        seen = await self.observe(runtime, batch)
        if seen is None:
            return None  # the delete handler releases the pods
        decided = decide(seen)
        fleet = None
        warm = runtime.warm_seen
        if warm is not None and isinstance(seen, Observation):
            fleet = plan_fleet(warm.fleet, decided, warm.sizes, warm.limits)
            take_warm_actions(decided, warm.fleet, fleet)
        await self.apply(runtime, batch, decided, woken_at, fleet)
        return decided

    # --------------------------------------------------------------------------- observe
    async def observe(
        self, runtime: BatchRuntime, batch: BatchContext
    ) -> Observation | UnparseableSpec | None:
        """Everything the planner needs, from the batch, the pod index and this loop's memory."""
        metadata = batch.body.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            return None
        generation = int(metadata.get("generation") or 0)
        if runtime.status is None:
            runtime.status = GPUBatchStatus.model_validate(batch.body.get("status") or {})
        current = await self._load(runtime, batch.body, generation)
        loaded = current.loaded
        if loaded.spec is None:
            message = loaded.error or "invalid spec"
            return UnparseableSpec(runtime.status, generation, message, datetime.now(UTC))
        outputs_exist = await self._scan_outputs(runtime, current)
        spec = loaded.spec
        if runtime.admission is not None:
            spec = await admitted_spec(self.client, runtime.ref, runtime.admission, spec)
        views = list(batch.pods())
        runtime.warm_seen = None
        if spec.worker.mode == "Warm" and self.lease_endpoint is not None:
            runtime.warm_seen = observe_warm(
                runtime.warm,
                batch.warm_pods(),
                runtime.status,
                spec,
                loaded.total,
                self.limits.max_pending,
                self.limits.max_creates_per_pass,
            )
            views += runtime.warm_seen.views
        warm_pods = [w.pod for w in runtime.warm_seen.fleet.pods] if runtime.warm_seen else []
        return Observation(
            spec=spec,
            generation=generation,
            now=datetime.now(UTC),
            total=loaded.total,
            status=runtime.status,
            pods=views,
            order=loaded.order or DispatchOrder(0),
            cursor=current.cursor,
            in_flight=_still_in_flight(runtime, views),
            outputs_exist=outputs_exist,
            node_models=_node_models(batch, views, spec.gpu_model_label),
            # Only an unschedulable pod needs them: could any node ever hold it?
            nodes=(
                list(batch.cluster_nodes())
                if any(v.unschedulable for v in [*views, *warm_pods])
                else None
            ),
            spec_error=loaded.error or current.refused,
            invalid_tasks=dict(runtime.invalid_tasks),
            fingerprint=loaded.prepared.tasks.fingerprint if loaded.prepared else None,
            limits=self.limits,
            runs_warm=self.lease_endpoint is not None,
            warm_capacity=(
                sum(runtime.warm_seen.sizes.values()) if runtime.warm_seen is not None else None
            ),
            warm_pods=warm_pods,
        )

    async def _load(
        self, runtime: BatchRuntime, body: Mapping[str, Any], generation: int
    ) -> GenerationState:
        """Expand the tasks once per spec generation (a new generation starts afresh)."""
        if runtime.current is None or runtime.current.loaded.generation != generation:
            spec = dict(body.get("spec") or {})
            loaded = await asyncio.to_thread(load_tasks, spec, generation)
            runtime.current = GenerationState(loaded)
        return runtime.current

    async def _scan_outputs(
        self, runtime: BatchRuntime, current: GenerationState
    ) -> IndexSet | None:
        """Once per generation: the tasks whose outputs all exist already (None: not now)."""
        if current.outputs_scanned or current.loaded.error is not None:
            return None
        status = runtime.status or GPUBatchStatus()
        final = (
            IndexSet.parse(status.succeeded_indexes)
            .union(IndexSet.parse(status.failed_indexes))
            .union(IndexSet.parse(status.skipped_indexes))
        )
        began = time.monotonic()
        scan = await asyncio.to_thread(scan_outputs, current.loaded, final)
        self.metrics.scan_seconds.observe(time.monotonic() - began)
        current.outputs_scanned = True
        runtime.invalid_tasks.update(scan.invalid)
        return scan.complete

    # --------------------------------------------------------------------------- apply
    async def apply(
        self,
        runtime: BatchRuntime,
        batch: BatchContext,
        decided: Plan,
        woken_at: float | None = None,
        fleet: FleetPlan | None = None,
    ) -> None:
        """Carry out a plan: status, pods, Events, the batch's own deletion, the next timer.
        With warm pods (`fleet`), the planner's attempts become leases (see `_apply_fleet`)."""
        # Two chains run at once. Creating the next attempts depends on nothing this pass
        # writes: names are deterministic (a repeated create is a harmless 409) and a restart
        # rebuilds the truth from pods and status, so a finished task's replacement waits for
        # neither the status write nor its predecessor's cleanup (reaction latency).
        # Releasing a pod's tracking finalizer must wait for the status write that records its
        # outcome; stops and cleanup follow it too, so the status says why before pods go.
        # One exception: an operator that cannot record outcomes (a missing RBAC rule, a status
        # the API server refuses) must not start tasks, or it would run the batch blind. Until
        # this loop has written a status once (a fresh loop, or after a refused write), the
        # write goes first and gates the creates.
        if not runtime.status_confirmed:
            await self._write_status(runtime, decided.status)
        # The cursor moves only now: had an earlier pass failed before its creates, the tasks
        # it passed over would never be created (a failed create resets it to 0).
        if runtime.current is not None:
            runtime.current.cursor = decided.cursor
        manifests = [] if fleet is not None else self._render(runtime, decided.create)
        await _gather(
            [
                *(self._create_one(runtime, attempt, pod) for attempt, pod in manifests),
                self._record_then_release(runtime, decided, fleet),
            ]
        )
        if manifests:
            self.metrics.pods_created.inc(len(manifests))
            if woken_at is not None and decided.release:
                self.metrics.reaction_seconds.observe(time.monotonic() - woken_at)
        for event in decided.events:
            batch.post(event)
        if runtime.admission is not None and runtime.status is not None:
            await finish_workload(
                self.client, runtime.ref, runtime.admission, runtime.status, batch.post
            )
        # A batch MultiKueue mirrored here is deleted by MultiKueue once it has copied the final
        # status back; deleting it first would make MultiKueue create it again.
        if decided.delete_batch and runtime.admission is None:
            await self.client.delete_batch(runtime.ref.namespace, runtime.ref.name)
        self._set_timer(runtime, decided)
        self.metrics.observe_status(runtime.ref, decided.status)

    async def _record_then_release(
        self, runtime: BatchRuntime, decided: Plan, fleet: FleetPlan | None
    ) -> None:
        await self._write_status(runtime, decided.status)
        await _gather(
            [
                *([self._apply_fleet(runtime, decided, fleet)] if fleet is not None else []),
                *(
                    self.client.remove_pod_finalizer(p.namespace, p.name, FINALIZER_TRACKING)
                    for p in decided.release
                ),
                *(self._stop(p, reason) for p, reason in decided.stop),
                # Finished pods' containers have exited: no grace period to wait for.
                *(
                    self.client.delete_pod(p.namespace, p.name, grace_seconds=0)
                    for p in decided.delete
                ),
            ]
        )

    async def _apply_fleet(self, runtime: BatchRuntime, decided: Plan, fleet: FleetPlan) -> None:
        """Warm pods, after the status write: leases recorded on their pods and then answered
        (the planner's attempts are in flight until the pod index shows the lease), new warm
        pods, finished ones released and cleaned up, stopped ones stopped."""
        current, warm = runtime.current, runtime.warm_seen
        if current is None or current.loaded.prepared is None or warm is None:
            return
        assert self.lease_endpoint is not None  # warm_seen is only set with an endpoint
        how = WarmApply(
            runtime.ref, current.loaded.prepared.spec, current.loaded.prepared, self.lease_endpoint
        )
        now = time.monotonic()
        for lease in fleet.leases.values():
            for attempt in lease.attempts:
                runtime.in_flight[(attempt.index, attempt.attempt)] = now
        unleased = await answer_requests(self.client, runtime.warm, warm.fleet, fleet, how)
        for attempt in unleased.attempts:
            runtime.in_flight.pop((attempt.index, attempt.attempt), None)
        if unleased.attempts:
            current.cursor = 0  # walk again: the unleased fresh tasks are untouched
            runtime.invalid_tasks.update(unleased.invalid)
            runtime.wake()
        namespace = runtime.ref.namespace
        await _gather(
            [
                create_warm_pods(self.client, runtime.warm, fleet.create, how),
                *(
                    self.client.remove_pod_finalizer(namespace, p.name, FINALIZER_TRACKING)
                    for p in fleet.release
                ),
                *(self._stop(p.pod, reason) for p, reason in fleet.stop),
                *(self.client.delete_pod(namespace, p.name, grace_seconds=0) for p in fleet.delete),
            ]
        )
        if fleet.create:
            self.metrics.pods_created.inc(len(fleet.create))

    def _set_timer(self, runtime: BatchRuntime, decided: Plan) -> None:
        wake_in = decided.wake_in
        if runtime.in_flight:  # look again for pods whose create may have been lost
            wake_in = min(wake_in or IN_FLIGHT_TTL, IN_FLIGHT_TTL)
        if runtime.admission is not None and runtime.admission.pods is None:
            wake_in = min(wake_in or RECHECK_SECONDS, RECHECK_SECONDS)  # not admitted yet
        if wake_in is not None:
            runtime.wakeup.later(wake_in + 0.05)

    async def _write_status(self, runtime: BatchRuntime, status: GPUBatchStatus) -> None:
        if runtime.status is not None and _dump(status) == _dump(runtime.status):
            return
        ref = runtime.ref
        try:
            await self.client.patch_batch_status(ref.namespace, ref.name, _dump(status))
        except BaseException:
            runtime.status_confirmed = False
            raise
        self.metrics.status_writes.inc()
        runtime.status = status
        runtime.status_confirmed = True

    async def _stop(self, pod: PodView, reason: str) -> None:
        if await self.client.annotate_pod(
            pod.namespace, pod.name, {ANNOTATION_STOP_REASON: reason}
        ):
            await self.client.delete_pod(pod.namespace, pod.name)

    def _render(
        self, runtime: BatchRuntime, attempts: list[TaskAttempt]
    ) -> list[tuple[TaskAttempt, dict[str, Any]]]:
        """Task pods for the planned attempts, each marked in flight; a task that cannot be
        rendered is set aside alone, a spec that cannot be rendered at all stops the creates."""
        current = runtime.current
        if current is None or current.loaded.prepared is None or not attempts:
            return []  # (a plan creates only for a spec that prepared)
        prepared = current.loaded.prepared
        manifests: list[tuple[TaskAttempt, dict[str, Any]]] = []
        for attempt in attempts:
            try:
                rendered = prepared.render(attempt.index)
                manifests.append(
                    (attempt, render_pod(runtime.ref, prepared.spec, rendered, attempt.attempt))
                )
            except TaskSpecError as error:
                runtime.invalid_tasks[attempt.index] = str(error)
                runtime.wake()
            except SpecError as error:
                current.refused = str(error)
                current.cursor = 0  # the tasks passed over in this pass were never created
                runtime.wake()
                return []
        now = time.monotonic()
        for attempt, _ in manifests:
            runtime.in_flight[(attempt.index, attempt.attempt)] = now
        return manifests

    async def _create_one(
        self, runtime: BatchRuntime, attempt: TaskAttempt, pod: dict[str, Any]
    ) -> None:
        try:
            await self.client.create_pod(runtime.ref.namespace, pod)
        except Exception as error:
            runtime.in_flight.pop((attempt.index, attempt.attempt), None)
            current = runtime.current
            if current is not None:
                # The cursor already moved past this task; walk again from the start
                # (attempted tasks are skipped by their status or pods: nothing runs twice).
                current.cursor = 0
            if not isinstance(error, ApiError) or not _refuses_every_pod(error):
                raise
            if current is not None:
                current.refused = (
                    f"the API server refused the task pod: {error.message}; fix spec.template"
                )
            runtime.wake()


def _refuses_every_pod(error: ApiError) -> bool:
    """The API server refuses this pod as rendered (an invalid template field, a Pod Security
    violation): every task would fail the same way. An exceeded quota is not that."""
    return error.status in (400, 422) or (
        error.status == 403 and "exceeded quota" not in error.message
    )


def _still_in_flight(runtime: BatchRuntime, views: Iterable[PodView]) -> frozenset[tuple[int, int]]:
    """Forget created pods that the index now shows, or that never showed up in time."""
    now = time.monotonic()
    seen = {v.key for v in views}
    runtime.in_flight = {
        key: created
        for key, created in runtime.in_flight.items()
        if key not in seen and now - created < IN_FLIGHT_TTL
    }
    return frozenset(runtime.in_flight)


def _node_models(batch: BatchContext, views: Iterable[PodView], label: str) -> dict[str, str]:
    """The GPU model of each node that runs one of the pods, from its node label."""
    models = {}
    for node in {v.node for v in views if v.node}:
        model = batch.node_labels(node).get(label)
        if model:
            models[node] = model
    return models


def _dump(status: GPUBatchStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True)


async def _gather(calls: Iterable[Awaitable[Any]]) -> None:
    """Run calls concurrently (the client bounds concurrency); raise the first error after all
    have finished, so one failure does not leave the others half-done and unobserved."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


__all__ = [
    "BatchContext",
    "BatchRuntime",
    "KubeApi",
    "Reconciler",
    "UnparseableSpec",
    "decide",
]
