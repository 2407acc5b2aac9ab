"""One batch's reconcile loop: observe -> plan -> apply, woken by events, never by memory.

Every pass derives the truth from the batch object, the pods in the index and the status this
loop last wrote; the pure planner (`gpubatch.core.planner`) decides, and `apply` carries the plan
out in the order that keeps completions and exclusivity safe through any crash (see planner).

Why one long-lived loop per batch (a kopf daemon) instead of a handler per event: bursts of pod
events coalesce into one pass and one status write, and the loop holds the per-batch memory that
makes passes cheap (expanded tasks, dispatch cursor, pods created but not yet seen).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from gpubatch.api.names import ANNOTATION_STOP_REASON, FINALIZER_TRACKING, LABEL_BATCH_UID
from gpubatch.api.status import GPUBatchStatus
from gpubatch.controller.metrics import Metrics
from gpubatch.controller.taskload import LoadedTasks, ScanResult, load_tasks, scan_outputs
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
from gpubatch.core.podspec import BatchRef, render_pod
from gpubatch.core.podview import PodView
from gpubatch.edges.kube import ApiError, KubeClient

log = logging.getLogger("gpubatch.reconcile")

#: Pods created but not seen in the index after this long are forgotten (the create may have
#: been lost with a restarted API server); the next pass creates them again (409 if they exist).
IN_FLIGHT_TTL: Final = 20.0
#: Wait this long after a wake-up for more events, so a burst becomes one pass and one write.
COALESCE_SECONDS: Final = 0.02
#: After a failed pass, retry after this long (doubling, capped).
RETRY_MIN, RETRY_MAX = 0.5, 30.0


@dataclass
class BatchRuntime:
    """What the operator remembers about one batch between passes (lost on restart, by design:
    everything here can be rebuilt from the API)."""

    ref: BatchRef
    wake_event: asyncio.Event = field(default_factory=asyncio.Event)
    status: GPUBatchStatus | None = None  # the status as this loop last wrote (authoritative)
    #: Whether this loop's last status write went through. Until one has (a fresh loop, or
    #: after a refused write), a pass writes the status before it creates anything.
    status_writable: bool = False
    loaded: LoadedTasks | None = None
    scanned_generation: int | None = None
    scan: ScanResult | None = None
    invalid_tasks: dict[int, str] = field(default_factory=dict)
    api_spec_error: str | None = None
    cursor: int = 0
    in_flight: dict[tuple[int, int], float] = field(default_factory=dict)
    woken_at: float | None = None  # monotonic time of the first unprocessed wake-up
    timer: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        if self.woken_at is None:
            self.woken_at = time.monotonic()
        self.wake_event.set()

    def wake_later(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(max(0.0, seconds), self.wake)


PostEvent = Callable[[Event], None]
NodeModels = Callable[[str], Mapping[str, str]]


class Reconciler:
    """Runs passes for batches; shared by every batch's loop."""

    def __init__(self, client: KubeClient, metrics: Metrics, limits: Limits) -> None:
        self.client = client
        self.metrics = metrics
        self.limits = limits

    async def run(
        self,
        runtime: BatchRuntime,
        body: Mapping[str, Any],
        pods: Callable[[], Iterable[PodView]],
        node_models: NodeModels,
        post_event: PostEvent,
        stopped: Callable[[], bool],
    ) -> None:
        """The loop: wait for a wake-up, coalesce, pass; until the daemon is stopped."""
        runtime.wake()
        backoff = RETRY_MIN
        while not stopped():
            await runtime.wake_event.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            runtime.wake_event.clear()
            woken_at, runtime.woken_at = runtime.woken_at, None
            began = time.monotonic()
            try:
                await self.pass_once(runtime, body, pods, node_models, post_event, woken_at)
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
                runtime.wake_later(backoff)
                backoff = min(backoff * 2, RETRY_MAX)
            finally:
                self.metrics.reconcile_seconds.observe(time.monotonic() - began)

    # --------------------------------------------------------------------------- observe
    async def pass_once(
        self,
        runtime: BatchRuntime,
        body: Mapping[str, Any],
        pods: Callable[[], Iterable[PodView]],
        node_models: NodeModels,
        post_event: PostEvent,
        woken_at: float | None,
    ) -> Plan | None:
        metadata = body.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            return None  # the delete handler releases the pods
        generation = int(metadata.get("generation") or 0)
        if runtime.status is None:
            runtime.status = GPUBatchStatus.model_validate(body.get("status") or {})

        if runtime.loaded is None or runtime.loaded.generation != generation:
            runtime.loaded = await asyncio.to_thread(
                load_tasks, dict(body.get("spec") or {}), generation
            )
            runtime.api_spec_error = None
            runtime.cursor = 0  # a new order (or task list) is walked from its start
        loaded = runtime.loaded
        if loaded.spec is None:
            await self._block_invalid(
                runtime, generation, loaded.error or "invalid spec", post_event
            )
            return None

        status = runtime.status
        outputs_exist: IndexSet | None = None
        if loaded.error is None and runtime.scanned_generation != generation:
            final = (
                IndexSet.parse(status.succeeded_indexes)
                .union(IndexSet.parse(status.failed_indexes))
                .union(IndexSet.parse(status.skipped_indexes))
            )
            began = time.monotonic()
            runtime.scan = await asyncio.to_thread(scan_outputs, loaded, final)
            self.metrics.scan_seconds.observe(time.monotonic() - began)
            runtime.scanned_generation = generation
            runtime.invalid_tasks.update(runtime.scan.invalid)
            outputs_exist = runtime.scan.complete

        now_mono = time.monotonic()
        runtime.in_flight = {
            k: t for k, t in runtime.in_flight.items() if now_mono - t < IN_FLIGHT_TTL
        }
        views = list(pods())
        seen = {v.key for v in views}
        for key in list(runtime.in_flight):
            if key in seen:
                del runtime.in_flight[key]
        nodes = {v.node for v in views if v.node}
        models = {}
        for node in nodes:
            labels = node_models(node)
            model = labels.get(loaded.spec.gpu_model_label)
            if model:
                models[node] = model

        observation = Observation(
            spec=loaded.spec,
            generation=generation,
            now=datetime.now(UTC),
            total=loaded.total,
            status=status,
            pods=views,
            order=loaded.order or DispatchOrder(0),
            cursor=runtime.cursor,
            in_flight=frozenset(runtime.in_flight),
            outputs_exist=outputs_exist,
            node_models=models,
            spec_error=loaded.error or runtime.api_spec_error,
            invalid_tasks=dict(runtime.invalid_tasks),
            fingerprint=loaded.prepared.tasks.fingerprint if loaded.prepared else None,
            limits=self.limits,
        )
        decided = plan(observation)
        await self.apply(runtime, decided, loaded, post_event, woken_at)
        if runtime.in_flight:
            decided.wake_in = min(decided.wake_in or IN_FLIGHT_TTL, IN_FLIGHT_TTL)
        if decided.wake_in is not None:
            runtime.wake_later(decided.wake_in + 0.05)
        if decided.delete_batch:
            await self.client.delete_batch(runtime.ref.namespace, runtime.ref.name)
        self.metrics.observe_status(runtime.ref, decided.status)
        return decided

    async def _block_invalid(
        self, runtime: BatchRuntime, generation: int, message: str, post_event: PostEvent
    ) -> None:
        """A spec that does not even parse: Failed/InvalidSpec and an Event, nothing else."""
        decided = plan_invalid_spec(
            runtime.status or GPUBatchStatus(), generation, message, datetime.now(UTC)
        )
        await self._write_status(runtime, decided.status)
        for event in decided.events:
            post_event(event)

    # --------------------------------------------------------------------------- apply
    async def apply(
        self,
        runtime: BatchRuntime,
        decided: Plan,
        loaded: LoadedTasks,
        post_event: PostEvent,
        woken_at: float | None,
    ) -> None:
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
        if not runtime.status_writable:
            await self._write_status(runtime, decided.status)
        # The cursor moves only now: had an earlier pass failed before its creates, the tasks
        # it passed over would never be created (a failed create resets it to 0).
        runtime.cursor = decided.cursor
        manifests = self._render(runtime, decided.create, loaded)

        async def record_then_release() -> None:
            await self._write_status(runtime, decided.status)
            await _gather(
                [
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

        await _gather(
            [
                *(self._create_one(runtime, attempt, pod) for attempt, pod in manifests),
                record_then_release(),
            ]
        )
        if manifests:
            self.metrics.pods_created.inc(len(manifests))
            if woken_at is not None and decided.release:
                self.metrics.reaction_seconds.observe(time.monotonic() - woken_at)
        for event in decided.events:
            post_event(event)

    async def _write_status(self, runtime: BatchRuntime, status: GPUBatchStatus) -> None:
        if runtime.status is not None and _dump(status) == _dump(runtime.status):
            return
        ref = runtime.ref
        try:
            await self.client.patch_batch_status(ref.namespace, ref.name, _dump(status))
        except BaseException:
            runtime.status_writable = False
            raise
        self.metrics.status_writes.inc()
        runtime.status = status
        runtime.status_writable = True

    async def _stop(self, pod: PodView, reason: str) -> None:
        if await self.client.annotate_pod(
            pod.namespace, pod.name, {ANNOTATION_STOP_REASON: reason}
        ):
            await self.client.delete_pod(pod.namespace, pod.name)

    def _render(
        self, runtime: BatchRuntime, attempts: list[TaskAttempt], loaded: LoadedTasks
    ) -> list[tuple[TaskAttempt, dict[str, Any]]]:
        """Task pods for the planned attempts, each marked in flight; a task that cannot be
        rendered is set aside alone, a spec that cannot be rendered at all stops the creates."""
        if not attempts:
            return []
        prepared = loaded.prepared
        assert prepared is not None
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
                runtime.api_spec_error = str(error)
                runtime.cursor = 0  # the tasks passed over in this pass were never created
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
            # The cursor already moved past this task; walk again from the start (attempted
            # tasks are skipped by their status or pods, so nothing runs twice).
            runtime.cursor = 0
            if not isinstance(error, ApiError):
                raise
            if error.status in (400, 422) or (
                error.status == 403 and "exceeded quota" not in error.message
            ):
                # The API server refuses this pod as rendered (an invalid template field,
                # a Pod Security violation): every task would fail the same way.
                runtime.api_spec_error = (
                    f"the API server refused the task pod: {error.message}; fix spec.template"
                )
                runtime.wake()
                return
            raise


def _dump(status: GPUBatchStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True)


async def _gather(calls: Iterable[Awaitable[Any]]) -> None:
    """Run calls concurrently (the client bounds concurrency); raise the first error after all
    have finished, so one failure does not leave the others half-done and unobserved."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


__all__ = ["BatchRuntime", "Reconciler", "pod_selector"]


def pod_selector(uid: str) -> str:
    return f"{LABEL_BATCH_UID}={uid}"
