"""Warm pods on a cluster: the operator's side of the lease protocol (`gpubatch.api.lease`).

A warm pod's request reaches `WarmLeases.handle_lease` (through `controller.leaseserver`, which
has checked the pod's token). The request is parked on its batch's runtime and the batch's
reconcile loop is woken; the loop's next pass shows the request's results to the planner as
attempt views (`core.warmpod`), plans, writes the status, and only then answers: with a new
lease written on the pod first, with `done`, or - when there is no work yet - not at all, so
the request stays open (a long poll) until work comes or `LONG_POLL_SECONDS` pass.

Everything here that a restart would lose is a request the worker repeats: an answer is given
only after what it acknowledges is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from gpubatch.api.lease import (
    ANNOTATION_LEASE,
    LONG_POLL_SECONDS,
    LeasedTask,
    LeaseRequest,
    LeaseResponse,
    format_lease,
)
from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.status import GPUBatchStatus
from gpubatch.controller.leaseserver import PodIdentity
from gpubatch.core.errors import TaskSpecError
from gpubatch.core.invocation import task_invocation
from gpubatch.core.planner import Ledger, Plan, TaskAttempt
from gpubatch.core.podspec import BatchRef, LeaseEndpoint, render_warm_pod
from gpubatch.core.podview import PodView
from gpubatch.core.prepare import PreparedBatch
from gpubatch.core.warmfleet import Fleet, FleetLimits, FleetPlan, Lease, held, lease_sizes
from gpubatch.core.warmpod import Reported, WarmPodView, lease_attempts

#: Warm pods created but not yet seen in the pod index are forgotten after this long.
WARM_IN_FLIGHT_TTL = 20.0


class LeaseRefused(Exception):
    """The request cannot be served now (an unknown batch, a pod that is not its warm pod);
    the server answers 503 and the worker asks again, so nothing it holds is lost."""


@dataclass
class PendingLease:
    """An open request: what it reports, and the answer once the loop has one."""

    request: LeaseRequest
    answer: asyncio.Future[LeaseResponse]
    recorded: bool = False  # its results are in the status: an empty answer may be given

    def reported(self) -> Reported:
        return Reported(
            seq=self.request.seq,
            results={(r.index, r.attempt): r for r in self.request.results},
            unrun=frozenset(self.request.unrun),
        )

    def give(self, response: LeaseResponse) -> None:
        if not self.answer.done():
            self.answer.set_result(response)


@dataclass
class WarmState:
    """One batch's open requests (by pod name) and warm pods created but not yet seen."""

    waiting: dict[str, PendingLease] = field(default_factory=dict)
    created: dict[int, float] = field(default_factory=dict)  # pod number -> created at

    def in_flight(self, seen: Iterable[int]) -> frozenset[int]:
        now, seen_numbers = time.monotonic(), set(seen)
        self.created = {
            n: t
            for n, t in self.created.items()
            if n not in seen_numbers and now - t < WARM_IN_FLIGHT_TTL
        }
        return frozenset(self.created)


class WarmRuntime(Protocol):
    """What the lease handler needs of a batch's runtime."""

    warm: WarmState

    def wake(self) -> None: ...


class WarmLeases:
    """The lease handler: parks each request on its batch and waits for the loop's answer."""

    def __init__(
        self,
        runtimes: Callable[[str], WarmRuntime | None],
        warm_pods: Callable[[str], Iterable[WarmPodView]],
        long_poll_seconds: float = LONG_POLL_SECONDS,
    ) -> None:
        self._runtime_of = runtimes
        self._warm_pods_of = warm_pods
        self._long_poll = long_poll_seconds

    async def handle_lease(self, pod: PodIdentity, request: LeaseRequest) -> LeaseResponse:
        runtime = self._runtime_of(request.batch_uid)
        if runtime is None:
            raise LeaseRefused(f"batch {request.batch_uid} is not served by this operator (yet)")
        if not any(
            w.name == pod.name and w.pod.namespace == pod.namespace
            for w in self._warm_pods_of(request.batch_uid)
        ):
            raise LeaseRefused(f"pod {pod.namespace}/{pod.name} is no warm pod of this batch")
        pending = PendingLease(request, asyncio.get_running_loop().create_future())
        earlier = runtime.warm.waiting.get(pod.name)
        if earlier is not None:  # the worker gave up on it and asked again
            earlier.answer.cancel()
        runtime.warm.waiting[pod.name] = pending
        runtime.wake()
        try:
            return await asyncio.wait_for(asyncio.shield(pending.answer), self._long_poll)
        except TimeoutError:
            if not pending.recorded:
                raise LeaseRefused("the results are not recorded yet; ask again") from None
            return LeaseResponse(seq=request.seq)
        finally:
            if runtime.warm.waiting.get(pod.name) is pending:
                del runtime.warm.waiting[pod.name]


@dataclass(frozen=True)
class WarmSeen:
    """What a pass sees of the warm side: the fleet, and the attempt views the planner gets."""

    fleet: Fleet
    views: list[PodView]
    sizes: dict[str, int]
    limits: FleetLimits


def observe_warm(
    state: WarmState,
    pods: Iterable[WarmPodView],
    status: GPUBatchStatus,
    spec: GPUBatchSpec,
    total: int,
    max_pending: int,
    max_creates: int,
) -> WarmSeen:
    """The fleet as it stands, its leased attempts as views, and the lease sizes on offer."""
    warm = list(pods)
    fleet = Fleet(
        pods=warm,
        waiting={name: p.request.seq for name, p in state.waiting.items()},
        in_flight=state.in_flight(w.number for w in warm),
    )
    views = [
        view
        for pod in warm
        for view in lease_attempts(
            pod, state.waiting[pod.name].reported() if pod.name in state.waiting else None
        )
    ]
    ledger = Ledger.of(status)
    unheld = max(0, total - ledger.finished - len(held(fleet, ledger)))
    limits = FleetLimits(
        total=total,
        parallelism=spec.parallelism,
        # Warm pods are few and long-lived (at most parallelism): unless the batch caps them,
        # all may wait for nodes at once, so the whole fleet starts together.
        max_pending=spec.max_pending or max(max_pending, spec.parallelism or 0),
        max_creates=max_creates,
        suspended=spec.suspend,
        keep_failed=spec.pod_cleanup.failed == "Keep",
    )
    return WarmSeen(fleet, views, lease_sizes(fleet, unheld), limits)


class WarmKube(Protocol):
    async def create_pod(self, namespace: str, pod: dict[str, object]) -> bool: ...

    async def annotate_pod(
        self, namespace: str, name: str, annotations: dict[str, str]
    ) -> bool: ...


@dataclass(frozen=True)
class WarmApply:
    """What carrying out a fleet plan needs: the batch, its tasks, where pods ask."""

    ref: BatchRef
    spec: GPUBatchSpec
    prepared: PreparedBatch
    endpoint: LeaseEndpoint


@dataclass
class Unleased:
    """Attempts planned but not handed out: their pod went away before its lease was written,
    or the task could not be rendered (its problem, to fail it alone)."""

    attempts: list[TaskAttempt] = field(default_factory=list)
    invalid: dict[int, str] = field(default_factory=dict)


async def answer_requests(
    kube: WarmKube, state: WarmState, fleet: Fleet, decided: FleetPlan, how: WarmApply
) -> Unleased:
    """After the status write: record each new lease on its pod, then answer every request
    the plan has an answer for."""
    by_name = {pod.name: pod for pod in fleet.pods}
    for name in [*decided.acknowledged, *decided.done, *decided.leases, *decided.resend]:
        if name in state.waiting:
            state.waiting[name].recorded = True
    for name in decided.done:
        _answer(state, name, LeaseResponse(seq=by_name[name].lease_seq, done=True))
    for name in decided.resend:
        pod = by_name[name]
        leased = tuple(TaskAttempt(i, a) for i, a in pod.lease)
        _answer(state, name, _response(Lease(pod.lease_seq, leased), how))
    unleased = Unleased()
    await asyncio.gather(
        *(
            _lease_one(kube, state, name, lease, how, unleased)
            for name, lease in decided.leases.items()
        )
    )
    return unleased


async def _lease_one(
    kube: WarmKube, state: WarmState, name: str, lease: Lease, how: WarmApply, lost: Unleased
) -> None:
    tasks = []
    for attempt in lease.attempts:
        try:
            tasks.append(_leased_task(attempt, how))
        except TaskSpecError as error:
            lost.attempts.append(attempt)
            lost.invalid[attempt.index] = str(error)
    if not tasks:
        return  # the request stays open; the next pass leases it other work
    pairs = [(t.index, t.attempt) for t in tasks]
    annotation = {ANNOTATION_LEASE: format_lease(lease.seq, pairs)}
    if not await kube.annotate_pod(how.ref.namespace, name, annotation):
        lost.attempts.extend(TaskAttempt(i, a) for i, a in pairs)  # the pod is gone
        return
    _answer(state, name, LeaseResponse(seq=lease.seq, tasks=tuple(tasks)))


def _answer(state: WarmState, name: str, response: LeaseResponse) -> None:
    pending = state.waiting.get(name)
    if pending is not None:
        pending.give(response)


def _leased_task(attempt: TaskAttempt, how: WarmApply) -> LeasedTask:
    """One attempt as the worker receives it: the task's GPUBATCH_* environment."""
    rendered = how.prepared.render(attempt.index)
    invocation = task_invocation(how.ref.name, how.spec, rendered, attempt.attempt)
    environ = invocation.task.to_environ()
    return LeasedTask(index=attempt.index, attempt=attempt.attempt, environ=environ)


def _response(lease: Lease, how: WarmApply) -> LeaseResponse:
    return LeaseResponse(seq=lease.seq, tasks=tuple(_leased_task(a, how) for a in lease.attempts))


async def create_warm_pods(
    kube: WarmKube, state: WarmState, numbers: list[int], how: WarmApply
) -> None:
    now = time.monotonic()
    for number in numbers:
        state.created[number] = now
    manifests = [render_warm_pod(how.ref, how.spec, n, how.endpoint) for n in numbers]
    results = await asyncio.gather(
        *(kube.create_pod(how.ref.namespace, m) for m in manifests), return_exceptions=True
    )
    for number, result in zip(numbers, results, strict=True):
        if isinstance(result, BaseException):
            state.created.pop(number, None)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def end_requests(state: WarmState) -> None:
    """The batch is gone or the loop stops: every open request is refused (503), so the
    workers ask again (a restarted operator answers them)."""
    for pending in state.waiting.values():
        with contextlib.suppress(asyncio.InvalidStateError):
            pending.answer.cancel()


def take_warm_actions(plan: Plan, fleet: Fleet, decided: FleetPlan) -> None:
    """Take the warm pods' views out of the planner's pod actions: an attempt view's release
    is its request's answer and its deletion nothing; a stop (the batch ended, a warm pod given
    up stuck) is a stop of its warm pod, once."""
    pods = {pod.name: pod for pod in fleet.pods}
    plan.release = [p for p in plan.release if p.name not in pods]
    plan.delete = [p for p in plan.delete if p.name not in pods]
    stopping = {pod.name for pod, _ in decided.stop}
    for view, reason in plan.stop:
        if view.name in pods and view.name not in stopping:
            decided.stop.append((pods[view.name], reason))
            stopping.add(view.name)
    plan.stop = [(p, r) for p, r in plan.stop if p.name not in pods]
