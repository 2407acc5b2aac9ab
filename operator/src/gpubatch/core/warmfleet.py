"""The warm pods of a batch: how many to run, what each is leased, when each is done.

Pure, like the planner, and run around it (`reconcile.decide`): before `plan()` it says how many
task attempts the waiting pods can take (`lease_sizes`, the planner's dispatch budget in warm
mode); after it, it hands the attempts the planner dispatched to those pods as leases and
decides the pods themselves (`plan_fleet`).

Lease sizes follow OpenMP's guided schedule: `ceil(unheld / (2 x live pods))`, at least 1 and
at most `MAX_LEASE_TASKS`. Large leases while much remains keep the operator's work and API
writes per task low (one pod patch per lease); single tasks at the tail keep every GPU busy to
the end. A pod whose request finds no work waits (the request is held open) while work may
still come (a retry in backoff); once every unfinished task is held by another pod's lease it is
told `done` and exits, freeing its GPU, and a retry that appears later gets a fresh pod.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gpubatch.api.lease import MAX_LEASE_TASKS
from gpubatch.api.status import ConditionType
from gpubatch.core.conditions import condition_is
from gpubatch.core.outcome import STOP_BATCH_ENDED
from gpubatch.core.planner import Ledger, Plan, TaskAttempt
from gpubatch.core.warmpod import WarmPodView


@dataclass(frozen=True)
class Fleet:
    """What a pass sees of the warm pods: the pods, the open requests (pod name -> the lease
    seq each reports on) and the pods created but not yet seen (their numbers)."""

    pods: Sequence[WarmPodView]
    waiting: Mapping[str, int]
    in_flight: frozenset[int] = frozenset()

    def live(self) -> list[WarmPodView]:
        return [w for w in self.pods if w.live]

    def asking(self) -> list[WarmPodView]:
        """Pods with an open request about their current lease, by pod number (a pod being
        deleted may still report: it is told `done`)."""
        return sorted(
            (
                w
                for w in self.pods
                if not w.pod.terminal and self.waiting.get(w.name) == w.lease_seq
            ),
            key=lambda w: w.number,
        )


@dataclass(frozen=True)
class Lease:
    seq: int
    attempts: tuple[TaskAttempt, ...]


@dataclass
class FleetPlan:
    """What to do with the warm pods, applied after the status write."""

    leases: dict[str, Lease] = field(default_factory=dict)  # new leases: annotate, then answer
    resend: list[str] = field(default_factory=list)  # answer with the lease already recorded
    done: list[str] = field(default_factory=list)  # answer `done`: the pod exits
    acknowledged: list[str] = field(default_factory=list)  # results recorded, no news yet
    create: list[int] = field(default_factory=list)  # numbers of new warm pods
    release: list[WarmPodView] = field(default_factory=list)  # every leased attempt recorded
    stop: list[tuple[WarmPodView, str]] = field(default_factory=list)
    delete: list[WarmPodView] = field(default_factory=list)


def lease_sizes(fleet: Fleet, unheld: int) -> dict[str, int]:
    """How many attempts each asking pod may be leased now (`unheld`: unfinished tasks held
    by no lease)."""
    live = max(1, len(fleet.live()) + len(fleet.in_flight))
    sizes: dict[str, int] = {}
    left = unheld
    for pod in fleet.asking():
        if left <= 0:
            break
        if not pod.live:
            continue
        size = min(MAX_LEASE_TASKS, max(1, math.ceil(left / (2 * live))))
        sizes[pod.name] = size
        left -= size
    return sizes


def held(fleet: Fleet, ledger: Ledger) -> set[int]:
    """Tasks in the lease of a live pod that is not asking (an asking pod's lease is over)
    whose attempt is not recorded: running somewhere."""
    asking = {pod.name for pod in fleet.asking()}
    return {
        index
        for pod in fleet.live()
        if pod.name not in asking
        for index, attempt in pod.lease
        if not ledger.final(index) and not _attempt_recorded(ledger, index, attempt)
    }


def _attempt_recorded(ledger: Ledger, index: int, attempt: int) -> bool:
    state = ledger.retries.get(index)
    return ledger.final(index) or (state is not None and state.attempts > attempt)


@dataclass(frozen=True)
class FleetLimits:
    """The batch's bounds on warm pods."""

    total: int  # tasks in the batch
    parallelism: int | None  # most live warm pods (None: as many as tasks)
    max_pending: int  # most warm pods not yet scheduled
    max_creates: int  # most pods created in one pass
    suspended: bool
    keep_failed: bool  # spec.podCleanup.failed == Keep
    stuck: bool = False  # pods are stuck on a configuration error (TasksStuck=True)


def plan_fleet(
    fleet: Fleet, plan: Plan, sizes: Mapping[str, int], limits: FleetLimits
) -> FleetPlan:
    """Leases for asking pods, answers, new pods, and the ends of finished pods. While warm
    pods are stuck on a configuration error (TasksStuck), one pod at a time probes."""
    out = FleetPlan()
    ledger = Ledger.of(plan.status)
    if condition_is(plan.status, ConditionType.TASKS_STUCK):
        limits = dataclasses.replace(limits, stuck=True)
    _answer_stale_requests(fleet, out)
    _hand_out_leases(fleet, plan, sizes, out)
    still_held = held(fleet, ledger) | {
        a.index for lease in out.leases.values() for a in lease.attempts
    }
    unheld = max(0, limits.total - ledger.finished - len(still_held))
    stopping = plan.finished or limits.suspended
    for pod in fleet.asking():
        if pod.name in out.leases:
            continue
        if stopping or unheld == 0 or not pod.live:
            out.done.append(pod.name)
        else:
            out.acknowledged.append(pod.name)
    if plan.finished:
        _stop_the_rest(fleet, out)
    else:
        _create_pods(fleet, ledger, out, unheld, limits)
    _end_finished_pods(fleet, ledger, out, limits)
    return out


def _answer_stale_requests(fleet: Fleet, out: FleetPlan) -> None:
    """A request about an older lease than the one recorded on its pod lost its answer on the
    way: it gets the recorded lease again."""
    for pod in fleet.live():
        seq = fleet.waiting.get(pod.name)
        if seq is not None and seq < pod.lease_seq:
            out.resend.append(pod.name)


def _hand_out_leases(fleet: Fleet, plan: Plan, sizes: Mapping[str, int], out: FleetPlan) -> None:
    """Split the planner's dispatched attempts over the asking pods, in their lease sizes."""
    attempts = list(plan.create)
    for pod in fleet.asking():
        size = sizes.get(pod.name, 0)
        if not attempts or size <= 0:
            continue
        mine, attempts = attempts[:size], attempts[size:]
        out.leases[pod.name] = Lease(pod.lease_seq + 1, tuple(mine))


def _stop_the_rest(fleet: Fleet, out: FleetPlan) -> None:
    """A finished batch stops its pods that are not asking (still loading, or running the
    attempts the planner stopped); asking ones are told `done`."""
    asking = {p.name for p in fleet.asking()}
    for pod in fleet.live():
        if pod.name not in asking:
            out.stop.append((pod, STOP_BATCH_ENDED))


def _create_pods(
    fleet: Fleet, ledger: Ledger, out: FleetPlan, unheld: int, limits: FleetLimits
) -> None:
    """New warm pods while there is work no live pod will take: up to parallelism, with at
    most max_pending unscheduled."""
    if limits.suspended or unheld == 0:
        return
    live = fleet.live()
    idle = sum(
        1
        for pod in live
        if pod.name not in out.leases and all(_attempt_recorded(ledger, i, a) for i, a in pod.lease)
    )
    unscheduled = sum(1 for pod in live if not pod.pod.scheduled) + len(fleet.in_flight)
    alive = len(live) + len(fleet.in_flight)
    ceiling = limits.parallelism if limits.parallelism is not None else limits.total
    if limits.stuck:  # a configuration error: new pods would be stuck the same way
        ceiling = min(ceiling, len(live) + len(fleet.in_flight) + 1 - unscheduled)
    count = min(
        ceiling - alive,
        limits.max_pending - unscheduled,
        limits.max_creates,
        unheld - idle - len(fleet.in_flight),
    )
    taken = {pod.number for pod in fleet.pods} | set(fleet.in_flight)
    number = max(taken, default=-1) + 1
    for _ in range(max(0, count)):
        out.create.append(number)
        number += 1


def _end_finished_pods(fleet: Fleet, ledger: Ledger, out: FleetPlan, limits: FleetLimits) -> None:
    """A finished warm pod is released once every attempt of its lease is recorded, and then
    deleted (a failed one kept if podCleanup says so)."""
    for pod in fleet.pods:
        if not pod.pod.terminal:
            continue
        recorded = all(_attempt_recorded(ledger, i, a) for i, a in pod.lease)
        if not recorded:
            continue
        if pod.pod.tracked:
            out.release.append(pod)
        keep = limits.keep_failed and pod.pod.phase == "Failed"
        if not pod.pod.deleting and not keep:
            out.delete.append(pod)


__all__ = [
    "Fleet",
    "FleetLimits",
    "FleetPlan",
    "Lease",
    "held",
    "lease_sizes",
    "plan_fleet",
]
