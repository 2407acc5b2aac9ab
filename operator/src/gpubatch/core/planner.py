"""Planning: given a batch, its recorded status and the pods that exist, decide what to do.

This is the reconcile's brain and it is pure (no I/O, no clock of its own, no Kubernetes client),
so every rule below is unit-tested without a cluster. The reconcile observes, calls `plan()`, and
applies the result in a fixed order that keeps two promises through any crash:

1. No completion is lost. A finished pod keeps the tracking finalizer until its outcome is in the
   status; `Plan.release` only lists pods whose outcome the new status already holds, and the
   status is written before any finalizer is removed.
2. No task runs twice at once. A task gets a new attempt only when every earlier attempt is
   terminal (or gone), and attempts are counted in the status (`retries`) before the next one is
   created; pod names are deterministic, so a create repeated after a crash is a harmless 409.

Recording is idempotent, keyed by (task index, attempt): an attempt is recorded once its task is
final or its task's `retries[].attempts` has moved past it. So a pass that crashes after writing
status but before releasing finalizers is simply repeated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.status import (
    FAILURE_MESSAGE_LIMIT,
    RECENT_FAILURES_LIMIT,
    UNKNOWN_GPU_MODEL,
    ConditionType,
    GPUBatchStatus,
    Reason,
    RetryState,
    TaskCounts,
    TaskFailure,
)
from gpubatch.core.conditions import set_condition
from gpubatch.core.gpustats import record_failure, record_success
from gpubatch.core.indexset import IndexSet
from gpubatch.core.outcome import STOP_BATCH_ENDED, STOP_TASK_DEADLINE, Verdict, classify
from gpubatch.core.podview import PodView

#: Operator-wide defaults a batch may override.
DEFAULT_MAX_PENDING: Final = 8
DEFAULT_MAX_CREATES_PER_PASS: Final = 200


@dataclass(frozen=True, slots=True)
class TaskAttempt:
    """A pod to create: task `index`, attempt number `attempt`."""

    index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post on the batch."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Limits:
    """Operator-wide limits (command-line flags), so no pass floods the API server."""

    max_pending: int = DEFAULT_MAX_PENDING
    max_creates_per_pass: int = DEFAULT_MAX_CREATES_PER_PASS


class DispatchOrder:
    """The order in which fresh tasks are dispatched: by index, or a precomputed permutation.

    `fresh(cursor, taken)` walks forward from a cursor. Everything before the cursor has been
    attempted at least once, and attempted tasks never become fresh again, so the cursor only
    moves forward and a pass costs O(dispatched) instead of O(tasks).
    """

    def __init__(self, total: int, permutation: Sequence[int] | None = None) -> None:
        self.total = total
        self._permutation = permutation

    def __len__(self) -> int:
        return self.total

    def at(self, position: int) -> int:
        return position if self._permutation is None else self._permutation[position]

    def fresh(self, cursor: int, taken: Callable[[int], bool]) -> Iterator[tuple[int, int]]:
        """Yield (position, index) of untaken tasks from `cursor` on."""
        for position in range(cursor, self.total):
            index = self.at(position)
            if not taken(index):
                yield position, index


@dataclass
class Observation:
    """Everything a pass knows; built by the reconcile from the batch, the pod index, storage."""

    spec: GPUBatchSpec
    generation: int
    now: datetime
    total: int
    status: GPUBatchStatus
    pods: Sequence[PodView]
    order: DispatchOrder
    cursor: int = 0
    in_flight: frozenset[tuple[int, int]] = frozenset()  # created, not yet seen in the index
    outputs_exist: IndexSet | None = None  # tasks whose outputs all exist (fresh bulk scan)
    node_models: Mapping[str, str] = field(default_factory=dict)
    spec_error: str | None = None  # the batch cannot run as written: InvalidSpec
    invalid_tasks: Mapping[int, str] = field(default_factory=dict)  # per-task problems
    fingerprint: str | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass
class Plan:
    """What to do, in the order the reconcile applies it."""

    status: GPUBatchStatus
    release: list[PodView] = field(default_factory=list)  # outcome recorded: drop finalizer
    stop: list[tuple[PodView, str]] = field(default_factory=list)  # annotate reason, delete
    delete: list[PodView] = field(default_factory=list)  # finished pods to clean up
    create: list[TaskAttempt] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    wake_in: float | None = None  # seconds until a timer (backoff, deadline) needs a pass
    cursor: int = 0
    finished: bool = False


def _since(now: datetime, then: datetime | None) -> float:
    return 0.0 if then is None else (now - then).total_seconds()


def _has_condition(status: GPUBatchStatus, type_: ConditionType, value: str = "True") -> bool:
    return any(c.type == type_ and c.status == value for c in status.conditions)


def plan(obs: Observation) -> Plan:
    spec, now = obs.spec, obs.now
    status = obs.status.model_copy(deep=True)
    out = Plan(status=status, cursor=obs.cursor)
    wakes: list[float] = []

    succeeded = IndexSet.parse(status.succeeded_indexes)
    failed = IndexSet.parse(status.failed_indexes)
    skipped = IndexSet.parse(status.skipped_indexes)
    retries: dict[int, RetryState] = {r.index: r for r in status.retries}

    def final(index: int) -> bool:
        return index in succeeded or index in failed or index in skipped

    def recorded(pod: PodView) -> bool:
        state = retries.get(pod.index)
        return final(pod.index) or (state is not None and state.attempts > pod.attempt)

    # Counted failures only: recentFailures also lists disruptions, which are not failures.
    first_failure = len(failed) == 0 and not any(m.failed for m in status.gpu_models)

    # 1. Is the batch runnable at all? An invalid spec or a changed task list stops dispatch.
    blocked: tuple[str, str] | None = None
    if obs.spec_error is not None:
        blocked = (Reason.INVALID_SPEC, obs.spec_error)
    elif (
        obs.fingerprint is not None
        and status.tasks_fingerprint is not None
        and status.tasks_fingerprint != obs.fingerprint
    ):
        blocked = (
            Reason.TASK_LIST_CHANGED,
            "the task list changed while the batch ran (files added or removed, manifest "
            "edited, or spec.tasks changed), so task indexes no longer mean the same tasks; "
            "restore it, or create a new GPUBatch for the new list",
        )
    elif obs.fingerprint is not None:
        status.tasks_fingerprint = obs.fingerprint

    # 2. Tasks that cannot be rendered (e.g. a manifest value escaping outputRoot) fail alone.
    for index, problem in sorted(obs.invalid_tasks.items()):
        if not final(index):
            failed.add(index)
            retries.pop(index, None)
            _add_failure(
                status,
                TaskFailure(
                    index=index,
                    attempt=0,
                    reason="InvalidTask",
                    message=problem[-FAILURE_MESSAGE_LIMIT:],
                    time=now,
                ),
            )

    # 3. Record every terminal pod not yet recorded; release those that are.
    pods_by_task: dict[int, list[PodView]] = {}
    for pod in sorted(obs.pods, key=lambda p: p.key):
        pods_by_task.setdefault(pod.index, []).append(pod)
    for pod in sorted(obs.pods, key=lambda p: p.key):
        if not pod.terminal:
            continue
        if not recorded(pod):
            state = retries.get(pod.index)
            verdict = classify(
                pod,
                retry=spec.retry,
                failures_before=state.failures if state else 0,
                node_model=obs.node_models.get(pod.node or ""),
            )
            model = verdict.gpu_model or UNKNOWN_GPU_MODEL
            if verdict.verdict is Verdict.SUCCEEDED:
                succeeded.add(pod.index)
                retries.pop(pod.index, None)
                record_success(status, model, verdict.duration_seconds)
            elif verdict.verdict is Verdict.SKIPPED:
                skipped.add(pod.index)
                retries.pop(pod.index, None)
            elif verdict.verdict is Verdict.FAILED:
                failed.add(pod.index)
                retries.pop(pod.index, None)
                record_failure(status, model)
            elif verdict.verdict is Verdict.STOPPED:
                retries[pod.index] = RetryState(
                    index=pod.index,
                    attempts=pod.attempt + 1,
                    failures=state.failures if state else 0,
                    not_before=None,
                )
            else:  # RETRY
                if verdict.counted:
                    record_failure(status, model)
                retries[pod.index] = RetryState(
                    index=pod.index,
                    attempts=pod.attempt + 1,
                    failures=(state.failures if state else 0) + (1 if verdict.counted else 0),
                    not_before=now + timedelta(seconds=verdict.delay_seconds)
                    if verdict.delay_seconds
                    else None,
                )
            if verdict.verdict not in (Verdict.SUCCEEDED, Verdict.SKIPPED, Verdict.STOPPED):
                _add_failure(
                    status,
                    TaskFailure(
                        index=pod.index,
                        attempt=pod.attempt,
                        exit_code=verdict.exit_code,
                        reason=verdict.reason[:128],
                        message=verdict.message[-FAILURE_MESSAGE_LIMIT:],
                        node=pod.node,
                        gpu_model=verdict.gpu_model,
                        time=now,
                    ),
                )
                if first_failure and verdict.counted:
                    first_failure = False
                    out.events.append(
                        Event(
                            "Warning",
                            "TaskFailed",
                            f"task {pod.index} attempt {pod.attempt} failed: "
                            f"{verdict.reason}: {verdict.message}"[:1024],
                        )
                    )
        if pod.tracked:
            out.release.append(pod)

    # 4. Outputs found by the bulk scan: those tasks are done before any pod starts.
    seen = {p.key for p in obs.pods}
    in_flight = [key for key in obs.in_flight if key not in seen]
    in_flight_tasks = {key[0] for key in in_flight}
    if obs.outputs_exist is not None and blocked is None:
        for index in obs.outputs_exist:
            if not (
                final(index)
                or index in pods_by_task
                or index in retries
                or index in in_flight_tasks
            ):
                skipped.add(index)

    # 5. Active attempts: enforce the task deadline.
    active = [p for p in obs.pods if not p.terminal]
    for pod in active:
        if spec.task_deadline_seconds is None or pod.deleting or pod.started_at is None:
            continue
        if pod.phase != "Running":
            continue
        left = spec.task_deadline_seconds - (now.timestamp() - pod.started_at)
        if left <= 0:
            out.stop.append((pod, STOP_TASK_DEADLINE))
        else:
            wakes.append(left)

    # 6. Batch-level failure: too many failed tasks, or the batch deadline.
    if status.start_time is None and (obs.pods or in_flight):
        status.start_time = now
    failure: tuple[str, str] | None = blocked
    if (
        failure is None
        and spec.max_failed_tasks is not None
        and len(failed) > spec.max_failed_tasks
    ):
        failure = (
            Reason.TOO_MANY_FAILED_TASKS,
            f"{len(failed)} tasks failed, more than maxFailedTasks "
            f"({spec.max_failed_tasks}); see recentFailures",
        )
    if failure is None and spec.active_deadline_seconds is not None and status.start_time:
        left = spec.active_deadline_seconds - _since(now, status.start_time)
        if left <= 0:
            failure = (
                Reason.DEADLINE_EXCEEDED,
                f"the batch ran longer than activeDeadlineSeconds ({spec.active_deadline_seconds})",
            )
        else:
            wakes.append(left)
    already_failed = _has_condition(obs.status, ConditionType.FAILED)
    if already_failed and failure is None:
        # A Failed batch stays Failed unless it was blocked (an invalid spec, a changed task
        # list) and the block is gone: the spec was fixed, or the task list restored.
        previous = next(c for c in obs.status.conditions if c.type == ConditionType.FAILED)
        if previous.reason not in (Reason.INVALID_SPEC, Reason.TASK_LIST_CHANGED):
            failure = (previous.reason, previous.message)

    complete = failure is None and len(succeeded) + len(failed) + len(skipped) >= obs.total

    if failure is not None:
        for pod in active:
            if not pod.deleting and (pod, STOP_TASK_DEADLINE) not in out.stop:
                out.stop.append((pod, STOP_BATCH_ENDED))

    # 7. Dispatch: retries whose backoff is over first, then fresh tasks in dispatch order.
    suspended = spec.suspend
    if failure is None and not complete and not suspended:
        busy = {p.index for p in active} | in_flight_tasks
        # Earlier attempts that are terminal but not yet recorded also block a new attempt.
        busy |= {p.index for p in obs.pods if p.terminal and not recorded(p)}
        unscheduled = sum(1 for p in active if not p.scheduled) + len(in_flight)
        running_or_waiting = len(active) + len(in_flight)
        budget = obs.limits.max_creates_per_pass
        max_pending = spec.max_pending or obs.limits.max_pending
        budget = min(budget, max_pending - unscheduled)
        if spec.parallelism is not None:
            budget = min(budget, spec.parallelism - running_or_waiting)
        for index in sorted(retries):
            if budget <= 0:
                break
            state = retries[index]
            if index in busy or final(index):
                continue
            if state.not_before is not None and state.not_before > now:
                wakes.append((state.not_before - now).total_seconds())
                continue
            out.create.append(TaskAttempt(index, state.attempts))
            busy.add(index)
            budget -= 1

        def taken(index: int) -> bool:
            return final(index) or index in busy or index in retries or index in pods_by_task

        if budget > 0:
            for position, index in obs.order.fresh(out.cursor, taken):
                if budget <= 0:
                    break
                out.create.append(TaskAttempt(index, 0))
                busy.add(index)
                budget -= 1
                out.cursor = position + 1
            else:
                out.cursor = len(obs.order)
        if out.create and status.start_time is None:
            status.start_time = now
            if spec.active_deadline_seconds is not None:  # the first pass arms the deadline
                wakes.append(float(spec.active_deadline_seconds))
        if out.create and not obs.pods and not obs.status.start_time:
            out.events.append(Event("Normal", "Started", f"dispatching {obs.total} tasks"))

    # 8. Cleanup of finished, released pods (level-triggered: also pods released earlier).
    for pod in obs.pods:
        if (
            not pod.terminal
            or pod.deleting
            or not recorded_after(pod, succeeded, failed, skipped, retries)
        ):
            continue
        good = pod.index in succeeded or pod.index in skipped
        keep = spec.pod_cleanup.succeeded == "Keep" if good else spec.pod_cleanup.failed == "Keep"
        if not keep:
            out.delete.append(pod)

    # 9. Counts, conditions, completion.
    running = sum(1 for p in active if p.phase == "Running" and not p.deleting)
    status.succeeded_indexes = succeeded.format()
    status.failed_indexes = failed.format()
    status.skipped_indexes = skipped.format()
    status.retries = [retries[i] for i in sorted(retries) if not final(i)]
    finished_count = len(succeeded) + len(failed) + len(skipped)
    status.counts = TaskCounts(
        total=obs.total,
        running=running,
        pending=max(0, obs.total - finished_count - running),
        succeeded=len(succeeded),
        failed=len(failed),
        skipped=len(skipped),
    )
    status.progress = status.counts.progress()
    status.observed_generation = obs.generation

    if failure is not None:
        reason, message = failure
        if set_condition(
            status, ConditionType.FAILED, "True", reason, message, now, obs.generation
        ):
            out.events.append(Event("Warning", str(reason), message[:1024]))
        set_condition(
            status, ConditionType.PROGRESSING, "False", reason, message, now, obs.generation
        )
        set_condition(status, ConditionType.COMPLETE, "False", reason, message, now, obs.generation)
    else:
        set_condition(
            status, ConditionType.FAILED, "False", Reason.DISPATCHING, "", now, obs.generation
        )
        if complete:
            summary = (
                f"{len(succeeded)} succeeded, {len(failed)} failed, "
                f"{len(skipped)} skipped of {obs.total} tasks"
            )
            if set_condition(
                status,
                ConditionType.COMPLETE,
                "True",
                Reason.ALL_TASKS_FINISHED,
                summary,
                now,
                obs.generation,
            ):
                out.events.append(Event("Normal", "Completed", summary))
            set_condition(
                status,
                ConditionType.PROGRESSING,
                "False",
                Reason.ALL_TASKS_FINISHED,
                summary,
                now,
                obs.generation,
            )
        else:
            set_condition(
                status, ConditionType.COMPLETE, "False", Reason.DISPATCHING, "", now, obs.generation
            )
            if suspended:
                set_condition(
                    status,
                    ConditionType.PROGRESSING,
                    "False",
                    Reason.SUSPENDED,
                    "spec.suspend is true: no new tasks start; running tasks finish",
                    now,
                    obs.generation,
                )
            else:
                set_condition(
                    status,
                    ConditionType.PROGRESSING,
                    "True",
                    Reason.DISPATCHING,
                    status.progress + " tasks finished",
                    now,
                    obs.generation,
                )
    if suspended:
        if set_condition(
            status,
            ConditionType.SUSPENDED,
            "True",
            Reason.SUSPENDED,
            "spec.suspend is true",
            now,
            obs.generation,
        ):
            out.events.append(Event("Normal", "Suspended", "dispatching stopped (spec.suspend)"))
    elif _has_condition(status, ConditionType.SUSPENDED) and set_condition(
        status, ConditionType.SUSPENDED, "False", Reason.RESUMED, "", now, obs.generation
    ):
        out.events.append(Event("Normal", "Resumed", "dispatching resumed"))

    out.finished = failure is not None or complete
    if not out.finished:
        status.completion_time = None  # running again after a block was lifted
    elif status.completion_time is None and not active and not in_flight:
        status.completion_time = now
    if out.finished and spec.ttl_seconds_after_finished is not None and status.completion_time:
        wakes.append(spec.ttl_seconds_after_finished - _since(now, status.completion_time))
    out.wake_in = max(0.0, min(wakes)) if wakes else None
    return out


def recorded_after(
    pod: PodView,
    succeeded: IndexSet,
    failed: IndexSet,
    skipped: IndexSet,
    retries: Mapping[int, RetryState],
) -> bool:
    """Is this pod's outcome in the (new) status? Only then may it lose its finalizer or go."""
    if pod.index in succeeded or pod.index in failed or pod.index in skipped:
        return True
    state = retries.get(pod.index)
    return state is not None and state.attempts > pod.attempt


def _add_failure(status: GPUBatchStatus, failure: TaskFailure) -> None:
    status.recent_failures = [*status.recent_failures, failure][-RECENT_FAILURES_LIMIT:]


def ttl_expired(status: GPUBatchStatus, ttl_seconds: int | None, now: datetime) -> bool:
    """True when a finished batch has outlived ttlSecondsAfterFinished."""
    if ttl_seconds is None or status.completion_time is None:
        return False
    return _since(now, status.completion_time) >= ttl_seconds


__all__ = [
    "DispatchOrder",
    "Event",
    "Limits",
    "Observation",
    "Plan",
    "TaskAttempt",
    "plan",
    "ttl_expired",
]
