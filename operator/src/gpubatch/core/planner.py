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
final or its task's `retries[].attempts` has moved past it (`Ledger.recorded`). So a pass that
crashes after writing status but before releasing finalizers is simply repeated.

`plan()` is a fixed sequence of named steps over one `_Pass` state, in this order (each step may
rely on the ones before it):

1. `check_runnable`: an invalid spec or a changed task list blocks dispatch.
2. `fail_invalid_tasks`: tasks that cannot be rendered fail alone.
3. `record_given_up_attempts`: attempts given up stuck before Running are recorded like a
   disruption (retried, not counted) and count toward spec.stuck.maxAttempts.
4. `record_outcomes`: every terminal pod's outcome into the ledger; tracked ones are released.
5. `skip_existing_outputs`: tasks whose outputs exist are skipped before any pod starts.
6. `enforce_task_deadlines`: running attempts past the task deadline are stopped.
7. `detect_stuck_tasks`: pods stuck before Running are diagnosed (`core/stuck.py`); a
   configuration error holds dispatch back, too many given-up attempts block the batch.
8. `decide_batch_end`: failed (blocked, too many failed tasks, deadline, or every task
   finished and some failed) or complete (every task succeeded or was skipped).
9. `give_up_stuck_attempts`: pods stuck on a configuration error for too long are stopped.
10. `dispatch`: retries whose backoff is over, then fresh tasks in dispatch order, in budget.
11. `clean_up`: finished, recorded pods are deleted unless podCleanup keeps them.
12. `write_counts`, `set_conditions`, `report_stuck_tasks`, `set_kstatus_conditions`,
    `settle`: the status, its conditions and Events, the completion time, the TTL and the next
    timer.

A spec that does not parse has no tasks to plan: `plan_invalid_spec` decides that case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.status import (
    CONDITION_MESSAGE_LIMIT,
    FAILURE_MESSAGE_LIMIT,
    RECENT_FAILURES_LIMIT,
    UNKNOWN_GPU_MODEL,
    ConditionType,
    FailureReason,
    GPUBatchStatus,
    Reason,
    RetryState,
    StuckState,
    TaskCounts,
    TaskFailure,
)
from gpubatch.core.conditions import condition_is, set_condition
from gpubatch.core.gpustats import record_failure, record_success
from gpubatch.core.indexset import IndexSet
from gpubatch.core.outcome import (
    STOP_BATCH_ENDED,
    STOP_TASK_DEADLINE,
    AttemptOutcome,
    Verdict,
    classify,
)
from gpubatch.core.podview import PodView
from gpubatch.core.stuck import (
    WAITING_FOR_ADMISSION,
    Diagnosis,
    NodeCapacity,
    diagnose,
    same_error,
)

#: Stop reason of an attempt given up stuck before Running: this prefix, then the waiting reason.
STOP_STUCK: Final = "Stuck:"

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
    runs_warm: bool = False  # the executor supports worker.mode: Warm (gpubatch run does)
    #: Warm mode on a cluster: how many attempts the warm pods asking for work can be leased
    #: now (`core.warmfleet.lease_sizes`); it replaces the pod budget. None: pods per task.
    warm_capacity: int | None = None
    #: The warm pods themselves (their `index` is the pod's number, not a task): diagnosed
    #: when stuck before Running and given up like task pods, never recorded as attempts.
    warm_pods: Sequence[PodView] = ()
    #: The cluster's nodes (labels, allocatable), to tell "no node can ever hold this pod"
    #: from "wait for capacity"; None when not looked up (no pod is unschedulable).
    nodes: Sequence[NodeCapacity] | None = None


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
    delete_batch: bool = False  # finished and past ttlSecondsAfterFinished


def _since(now: datetime, then: datetime | None) -> float:
    return 0.0 if then is None else (now - then).total_seconds()


@dataclass
class Ledger:
    """The outcomes a status records: final tasks by kind, and retry state of the others.

    The one definition of "is this attempt's outcome recorded?": a pod may lose its tracking
    finalizer, be deleted, or be followed by a new attempt only once it is."""

    succeeded: IndexSet
    failed: IndexSet
    skipped: IndexSet
    retries: dict[int, RetryState]

    @classmethod
    def of(cls, status: GPUBatchStatus) -> Ledger:
        return cls(
            succeeded=IndexSet.parse(status.succeeded_indexes),
            failed=IndexSet.parse(status.failed_indexes),
            skipped=IndexSet.parse(status.skipped_indexes),
            retries={r.index: r for r in status.retries},
        )

    def final(self, index: int) -> bool:
        return index in self.succeeded or index in self.failed or index in self.skipped

    def recorded(self, pod: PodView) -> bool:
        """Is this attempt's outcome in the ledger (its task final, or retries moved past it)?"""
        state = self.retries.get(pod.index)
        return self.final(pod.index) or (state is not None and state.attempts > pod.attempt)

    def finish(self, kind: IndexSet, index: int) -> None:
        kind.add(index)
        self.retries.pop(index, None)

    @property
    def finished(self) -> int:
        return len(self.succeeded) + len(self.failed) + len(self.skipped)

    def write(self, status: GPUBatchStatus) -> None:
        status.succeeded_indexes = self.succeeded.format()
        status.failed_indexes = self.failed.format()
        status.skipped_indexes = self.skipped.format()
        status.retries = [self.retries[i] for i in sorted(self.retries) if not self.final(i)]


@dataclass
class _Pass:
    """The state one `plan()` call threads through its steps."""

    obs: Observation
    status: GPUBatchStatus  # the new status, built up step by step
    ledger: Ledger
    out: Plan
    pods_by_task: dict[int, list[PodView]]
    active: list[PodView]  # pods not terminal
    in_flight: list[tuple[int, int]]  # created by an earlier pass, not yet seen
    first_failure: bool  # no counted failure yet: the next one is announced
    wakes: list[float] = field(default_factory=list)
    blocked: tuple[str, str] | None = None  # invalid spec or changed task list
    failure: tuple[str, str] | None = None  # why the batch ended badly, if it did
    complete: bool = False
    stuck: list[Diagnosis] = field(default_factory=list)  # pods stuck before Running
    dispatch_cap: int | None = None  # most pods to create while stuck (None: no cap)

    @classmethod
    def start(cls, obs: Observation) -> _Pass:
        status = obs.status.model_copy(deep=True)
        ledger = Ledger.of(status)
        pods_by_task: dict[int, list[PodView]] = {}
        for pod in sorted(obs.pods, key=lambda p: p.key):
            pods_by_task.setdefault(pod.index, []).append(pod)
        seen = {p.key for p in obs.pods}
        return cls(
            obs=obs,
            status=status,
            ledger=ledger,
            out=Plan(status=status, cursor=obs.cursor),
            pods_by_task=pods_by_task,
            active=[p for p in obs.pods if not p.terminal],
            in_flight=[key for key in obs.in_flight if key not in seen],
            # Counted failures only: recentFailures also lists disruptions, which are not.
            first_failure=len(ledger.failed) == 0 and not any(m.failed for m in status.gpu_models),
        )

    @property
    def in_flight_tasks(self) -> set[int]:
        return {key[0] for key in self.in_flight}

    def set_condition(self, type_: ConditionType, value: str, reason: str, message: str) -> bool:
        obs = self.obs
        return set_condition(self.status, type_, value, reason, message, obs.now, obs.generation)

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.out.events.append(Event(type_, reason, message[:1024]))


def plan(obs: Observation) -> Plan:
    """One pass, as the sequence of named steps the module docstring lists."""
    step = _Pass.start(obs)
    check_runnable(step)
    fail_invalid_tasks(step)
    record_given_up_attempts(step)
    record_outcomes(step)
    skip_existing_outputs(step)
    enforce_task_deadlines(step)
    detect_stuck_tasks(step)
    decide_batch_end(step)
    give_up_stuck_attempts(step)
    dispatch(step)
    clean_up(step)
    write_counts(step)
    set_conditions(step)
    report_stuck_tasks(step)
    set_kstatus_conditions(step)
    settle(step)
    return step.out


def plan_invalid_spec(status: GPUBatchStatus, generation: int, message: str, now: datetime) -> Plan:
    """A spec that does not even parse: Failed/InvalidSpec and an Event, nothing else.

    Nothing about tasks can be known, so counts and the other conditions stay as they were."""
    new = status.model_copy(deep=True)
    out = Plan(status=new)
    invalid = Reason.INVALID_SPEC
    if set_condition(new, ConditionType.FAILED, "True", invalid, message, now, generation):
        out.events.append(Event("Warning", invalid, message[:1024]))
    set_condition(new, ConditionType.PROGRESSING, "False", invalid, message, now, generation)
    set_condition(new, ConditionType.STALLED, "True", invalid, message, now, generation)
    set_condition(new, ConditionType.RECONCILING, "False", invalid, "", now, generation)
    new.observed_generation = generation
    return out


# ------------------------------------------------------------------------------ the steps
#: Warm mode on a cluster needs the lease endpoint; without it a Warm batch is refused rather
#: than run as one pod per task, which would silently pay the load for every task.
WARM_NOT_ON_CLUSTER: Final = (
    "worker.mode: Warm needs the operator's lease endpoint, and this operator runs without it "
    "(install the chart with leases.enabled=true, or start the operator with --lease-port, "
    "--lease-cert, --lease-key, --lease-ca and --lease-url); or set worker.mode: PerTask"
)


def check_runnable(step: _Pass) -> None:
    """An invalid spec or a task list that changed under a running batch blocks dispatch."""
    obs, status = step.obs, step.status
    if obs.spec_error is not None:
        step.blocked = (Reason.INVALID_SPEC, obs.spec_error)
    elif obs.spec.worker.mode == "Warm" and not obs.runs_warm:
        step.blocked = (Reason.INVALID_SPEC, WARM_NOT_ON_CLUSTER)
    elif obs.fingerprint is None:
        return
    elif status.tasks_fingerprint is None:
        status.tasks_fingerprint = obs.fingerprint
    elif status.tasks_fingerprint != obs.fingerprint:
        step.blocked = (
            Reason.TASK_LIST_CHANGED,
            "the task list changed while the batch ran (files added or removed, manifest "
            "edited, or spec.tasks changed), so task indexes no longer mean the same tasks; "
            "restore it, or create a new GPUBatch for the new list",
        )


def fail_invalid_tasks(step: _Pass) -> None:
    """Tasks that cannot be rendered (a manifest value escaping outputRoot) fail alone, with
    one Warning Event when some are first found (a pass that finds none posts nothing)."""
    ledger = step.ledger
    found = [(i, p) for i, p in sorted(step.obs.invalid_tasks.items()) if not ledger.final(i)]
    for index, problem in found:
        ledger.finish(ledger.failed, index)
        _add_failure(
            step.status,
            TaskFailure(
                index=index,
                attempt=0,
                reason=FailureReason.INVALID_TASK,
                message=problem[-FAILURE_MESSAGE_LIMIT:],
                time=step.obs.now,
            ),
        )
    if found:
        index, problem = found[0]
        step.event(
            "Warning",
            "InvalidTasks",
            f"{len(found)} task(s) cannot run and failed without a pod, e.g. task {index}: "
            f"{problem}",
        )


def record_outcomes(step: _Pass) -> None:
    """Record every terminal pod not yet recorded; release every tracked one (now recorded)."""
    for pods in step.pods_by_task.values():
        for pod in pods:
            if not pod.terminal:
                continue
            if not step.ledger.recorded(pod):
                _record(step, pod)
            if pod.tracked:
                step.out.release.append(pod)


def _record(step: _Pass, pod: PodView) -> None:
    obs, status, ledger = step.obs, step.status, step.ledger
    state = ledger.retries.get(pod.index)
    failures = state.failures if state else 0
    verdict = classify(
        pod,
        retry=obs.spec.retry,
        failures_before=failures,
        node_model=obs.node_models.get(pod.node or ""),
    )
    model = verdict.gpu_model or UNKNOWN_GPU_MODEL
    if verdict.verdict is Verdict.SUCCEEDED:
        ledger.finish(ledger.succeeded, pod.index)
        record_success(status, model, verdict.duration_seconds)
        return
    if verdict.verdict is Verdict.SKIPPED:
        ledger.finish(ledger.skipped, pod.index)
        return
    if verdict.verdict is Verdict.STOPPED:
        ledger.retries[pod.index] = RetryState(
            index=pod.index, attempts=pod.attempt + 1, failures=failures, not_before=None
        )
        return
    if verdict.verdict is Verdict.FAILED:
        ledger.finish(ledger.failed, pod.index)
        record_failure(status, model)
    else:  # RETRY
        if verdict.counted:
            record_failure(status, model)
        delay = verdict.delay_seconds
        ledger.retries[pod.index] = RetryState(
            index=pod.index,
            attempts=pod.attempt + 1,
            failures=failures + (1 if verdict.counted else 0),
            not_before=obs.now + timedelta(seconds=delay) if delay else None,
        )
    _note_failure(step, pod, verdict)


def _note_failure(step: _Pass, pod: PodView, verdict: AttemptOutcome) -> None:
    """A failed or retried attempt goes into recentFailures; the batch's first counted
    failure is also announced as an Event."""
    _add_failure(
        step.status,
        TaskFailure(
            index=pod.index,
            attempt=pod.attempt,
            exit_code=verdict.exit_code,
            reason=verdict.reason[:128],
            message=verdict.message[-FAILURE_MESSAGE_LIMIT:],
            node=pod.node,
            gpu_model=verdict.gpu_model,
            time=step.obs.now,
        ),
    )
    if step.first_failure and verdict.counted:
        step.first_failure = False
        step.event(
            "Warning",
            "TaskFailed",
            f"task {pod.index} attempt {pod.attempt} failed: {verdict.reason}: {verdict.message}",
        )


def record_given_up_attempts(step: _Pass) -> None:
    """An attempt given up stuck before Running (stop reason `Stuck:<reason>`) that has ended is
    recorded like a disruption: its task gets a next attempt and no failure is counted against
    retry.limit (the task never ran). It counts toward spec.stuck.maxAttempts instead. Runs
    before `record_outcomes`, which then finds it recorded."""
    ledger = step.ledger
    for pod in step.obs.pods:
        stop = pod.stop_reason or ""
        if not pod.terminal or not stop.startswith(STOP_STUCK) or ledger.recorded(pod):
            continue
        state = ledger.retries.get(pod.index)
        ledger.retries[pod.index] = RetryState(
            index=pod.index,
            attempts=pod.attempt + 1,
            failures=state.failures if state else 0,
            not_before=None,
        )
        reason = stop.removeprefix(STOP_STUCK) or "Stuck"
        _add_failure(
            step.status,
            TaskFailure(
                index=pod.index,
                attempt=pod.attempt,
                reason=reason[:128],
                message="given up stuck before Running (spec.stuck.giveUpSeconds); "
                "not counted against retry.limit",
                node=pod.node,
                time=step.obs.now,
            ),
        )
        stuck = _stuck_state(step)
        stuck.given_up += 1
        stuck.reason = reason[:128]
    _record_given_up_warm_pods(step)


def _record_given_up_warm_pods(step: _Pass) -> None:
    """A warm pod given up stuck holds no task (it never ran, so it was never leased any):
    it counts toward spec.stuck.maxAttempts while it still carries its finalizer (released
    after this pass's status write, so it is counted once)."""
    for pod in step.obs.warm_pods:
        stop = pod.stop_reason or ""
        if pod.terminal and pod.tracked and stop.startswith(STOP_STUCK):
            stuck = _stuck_state(step)
            stuck.given_up += 1
            stuck.reason = (stop.removeprefix(STOP_STUCK) or "Stuck")[:128]


def _stuck_state(step: _Pass) -> StuckState:
    """The given-up count of this spec generation (a new generation starts afresh)."""
    generation = step.obs.generation
    if step.status.stuck is None or step.status.stuck.generation != generation:
        step.status.stuck = StuckState(generation=generation)
    return step.status.stuck


def skip_existing_outputs(step: _Pass) -> None:
    """Tasks whose outputs the bulk scan found are done before any pod of theirs starts."""
    found = step.obs.outputs_exist
    if found is None or step.blocked is not None:
        return
    ledger, in_flight = step.ledger, step.in_flight_tasks
    for index in found:
        if not (
            ledger.final(index)
            or index in step.pods_by_task
            or index in ledger.retries
            or index in in_flight
        ):
            ledger.skipped.add(index)


def enforce_task_deadlines(step: _Pass) -> None:
    """Stop running attempts past spec.taskDeadlineSeconds; wake when the next one is due."""
    deadline = step.obs.spec.task_deadline_seconds
    if deadline is None:
        return
    now = step.obs.now.timestamp()
    for pod in step.active:
        if not pod.running or pod.started_at is None:
            continue
        left = deadline - (now - pod.started_at)
        if left <= 0:
            step.out.stop.append((pod, STOP_TASK_DEADLINE))
        else:
            step.wakes.append(left)


def detect_stuck_tasks(step: _Pass) -> None:
    """Diagnose pods stuck before Running. While one waits on a configuration error nothing
    new is dispatched; after a give-up, one pod at a time probes until a pod runs. Too many
    given-up attempts in this spec generation block the batch (Failed/TasksStuck), which a new
    generation (a fixed spec) lifts."""
    obs, status = step.obs, step.status
    if status.stuck is not None and status.stuck.generation != obs.generation:
        status.stuck = None  # the spec changed: count afresh
    starting = [w for w in obs.warm_pods if not w.terminal]
    step.stuck = [
        found
        for pod in [*sorted(step.active, key=lambda p: p.key), *starting]
        if (found := diagnose(pod, obs.spec, obs.nodes)) is not None
    ]
    stuck, limit = status.stuck, obs.spec.stuck.max_attempts
    if stuck is not None and stuck.given_up >= limit:
        if step.blocked is None:
            step.blocked = (
                Reason.TASKS_STUCK,
                f"{stuck.given_up} task attempts were given up stuck before Running "
                f"(spec.stuck.maxAttempts is {limit}); the last: {stuck.message}. Fix the "
                "spec: editing it resumes the batch",
            )
        return
    if any(found.config for found in step.stuck):
        step.dispatch_cap = 0
    elif stuck is not None and any(_got_past_the_error(p) for p in [*obs.pods, *obs.warm_pods]):
        status.stuck = None  # a pod got past the error: it no longer repeats
    elif stuck is not None:
        step.dispatch_cap = max(0, 1 - len(step.active) - len(step.in_flight))


def _got_past_the_error(pod: PodView) -> bool:
    """The pod runs, or ran since the last pass (ended with an exit code, still tracked: a
    short task may never be seen Running); a given-up pod killed on deletion does not count."""
    if pod.running:
        return True
    given_up = (pod.stop_reason or "").startswith(STOP_STUCK)
    return pod.terminal and pod.tracked and pod.exit_code is not None and not given_up


def decide_batch_end(step: _Pass) -> None:
    """Has the batch failed (blocked, too many failed tasks, its deadline) or completed?
    A batch that ended badly stops its running attempts."""
    obs, status = step.obs, step.status
    if status.start_time is None and (obs.pods or step.in_flight):
        status.start_time = obs.now
    _track_suspension(step)
    step.failure = step.blocked or _too_many_failed(step) or _past_batch_deadline(step)
    if condition_is(obs.status, ConditionType.FAILED) and step.failure is None:
        # A Failed batch stays Failed unless it was blocked (an invalid spec, a changed task
        # list) and the block is gone: the spec was fixed, or the task list restored.
        previous = next(c for c in obs.status.conditions if c.type == ConditionType.FAILED)
        if previous.reason not in (
            Reason.INVALID_SPEC,
            Reason.TASK_LIST_CHANGED,
            Reason.TASKS_STUCK,
        ):
            step.failure = (previous.reason, previous.message)
    if step.failure is None and step.ledger.finished >= obs.total:
        step.failure = _finished_with_failures(step)
    step.complete = step.failure is None and step.ledger.finished >= obs.total
    if step.failure is None:
        return
    for pod in step.active:
        if not pod.deleting and (pod, STOP_TASK_DEADLINE) not in step.out.stop:
            step.out.stop.append((pod, STOP_BATCH_ENDED))


def _too_many_failed(step: _Pass) -> tuple[str, str] | None:
    limit, failed = step.obs.spec.max_failed_tasks, len(step.ledger.failed)
    if limit is None or failed <= limit:
        return None
    return (
        Reason.TOO_MANY_FAILED_TASKS,
        f"{failed} tasks failed, more than maxFailedTasks ({limit}); see recentFailures",
    )


def _finished_with_failures(step: _Pass) -> tuple[str, str] | None:
    """Every task finished and some failed: the batch is Failed, never Complete, so
    `kubectl wait --for=condition=Complete` means every task succeeded or was skipped (the
    Indexed Job with backoffLimitPerIndex decides the same way)."""
    if not step.ledger.failed:
        return None
    return (Reason.TASKS_FAILED, _summary(step) + "; see recentFailures")


def _summary(step: _Pass) -> str:
    ledger = step.ledger
    return (
        f"{len(ledger.succeeded)} succeeded, {len(ledger.failed)} failed, "
        f"{len(ledger.skipped)} skipped of {step.obs.total} tasks"
    )


def _track_suspension(step: _Pass) -> None:
    """Keep the time a started batch spends suspended, so activeDeadlineSeconds never counts
    it: a suspension opens `suspendedSince`; a resume adds it to `suspendedSeconds`. (The Job
    resets its startTime instead; keeping startTime keeps the batch's makespan true.)"""
    obs, status = step.obs, step.status
    if obs.spec.suspend:
        if status.suspended_since is None and status.start_time is not None:
            status.suspended_since = obs.now
    elif status.suspended_since is not None:
        status.suspended_seconds += _since(obs.now, status.suspended_since)
        status.suspended_since = None


def _active_seconds(step: _Pass) -> float:
    """Seconds the batch has run since its first dispatch, not counting suspensions."""
    status, now = step.status, step.obs.now
    suspended = status.suspended_seconds + _since(now, status.suspended_since)
    return _since(now, status.start_time) - suspended


def _past_batch_deadline(step: _Pass) -> tuple[str, str] | None:
    deadline, started = step.obs.spec.active_deadline_seconds, step.status.start_time
    if deadline is None or not started:
        return None
    left = deadline - _active_seconds(step)
    if left > 0:
        if step.status.suspended_since is None:  # suspended, the clock stands still
            step.wakes.append(left)
        return None
    return (
        Reason.DEADLINE_EXCEEDED,
        f"the batch ran longer than activeDeadlineSeconds ({deadline}), not counting time "
        "it spent suspended",
    )


def give_up_stuck_attempts(step: _Pass) -> None:
    """Stop pods stuck on a configuration error for spec.stuck.giveUpSeconds since creation
    (their attempt is recorded by `record_given_up_attempts` once the pod is gone); wake when
    the next one is due. A batch that ended stops them anyway."""
    if step.failure is not None:
        return
    obs, give_up = step.obs, step.obs.spec.stuck.give_up_seconds
    for found in step.stuck:
        if not found.config:
            continue
        pod = found.pod
        left = give_up - (obs.now.timestamp() - (pod.created_at or obs.now.timestamp()))
        if left > 0:
            step.wakes.append(left)
            continue
        step.out.stop.append((pod, STOP_STUCK + found.reason))
        state = _stuck_state(step)
        state.reason = found.reason[:128]
        state.message = found.message[:CONDITION_MESSAGE_LIMIT]


def dispatch(step: _Pass) -> None:
    """Create attempts within the budget: retries whose backoff is over first, then fresh
    tasks in dispatch order. Nothing starts in a batch that ended, completed or is suspended."""
    obs, status = step.obs, step.status
    if step.failure is not None or step.complete or obs.spec.suspend:
        return
    busy = {p.index for p in step.active} | step.in_flight_tasks
    # Earlier attempts that are terminal but not yet recorded also block a new attempt.
    busy |= {p.index for p in obs.pods if p.terminal and not step.ledger.recorded(p)}
    budget = _dispatch_budget(step)
    budget = _dispatch_retries(step, busy, budget)
    if budget > 0:
        _dispatch_fresh(step, busy, budget)
    if not step.out.create:
        return
    if status.start_time is None:
        status.start_time = obs.now
        if obs.spec.active_deadline_seconds is not None:  # the first pass arms the deadline
            step.wakes.append(float(obs.spec.active_deadline_seconds))
    if not obs.pods and not obs.status.start_time:
        step.event("Normal", "Started", f"dispatching {obs.total} tasks")


def _dispatch_budget(step: _Pass) -> int:
    """How many pods this pass may create: the per-pass cap, the pending cap, parallelism."""
    obs = step.obs
    if obs.warm_capacity is not None:  # leases to asking warm pods, not pods
        cap = step.dispatch_cap
        return obs.warm_capacity if cap is None else min(obs.warm_capacity, cap)
    unscheduled = sum(1 for p in step.active if not p.scheduled) + len(step.in_flight)
    max_pending = obs.spec.max_pending or obs.limits.max_pending
    budget = min(obs.limits.max_creates_per_pass, max_pending - unscheduled)
    if obs.spec.parallelism is not None:
        budget = min(budget, obs.spec.parallelism - len(step.active) - len(step.in_flight))
    if step.dispatch_cap is not None:
        budget = min(budget, step.dispatch_cap)
    return budget


def _dispatch_retries(step: _Pass, busy: set[int], budget: int) -> int:
    """Next attempts of retried tasks whose backoff is over; returns the budget left."""
    ledger, now = step.ledger, step.obs.now
    for index in sorted(ledger.retries):
        if budget <= 0:
            break
        state = ledger.retries[index]
        if index in busy or ledger.final(index):
            continue
        if state.not_before is not None and state.not_before > now:
            step.wakes.append((state.not_before - now).total_seconds())
            continue
        step.out.create.append(TaskAttempt(index, state.attempts))
        busy.add(index)
        budget -= 1
    return budget


def _dispatch_fresh(step: _Pass, busy: set[int], budget: int) -> None:
    """First attempts of untouched tasks, walking the dispatch order from the cursor."""
    ledger, out = step.ledger, step.out

    def taken(index: int) -> bool:
        return (
            ledger.final(index)
            or index in busy
            or index in ledger.retries
            or index in step.pods_by_task
        )

    for position, index in step.obs.order.fresh(out.cursor, taken):
        if budget <= 0:
            return
        out.create.append(TaskAttempt(index, 0))
        busy.add(index)
        budget -= 1
        out.cursor = position + 1
    out.cursor = len(step.obs.order)


def clean_up(step: _Pass) -> None:
    """Delete finished pods whose outcome is recorded, unless spec.podCleanup keeps them
    (level-triggered: pods released by earlier passes too)."""
    ledger, cleanup = step.ledger, step.obs.spec.pod_cleanup
    for pod in step.obs.pods:
        if not pod.terminal or pod.deleting or not ledger.recorded(pod):
            continue
        good = pod.index in ledger.succeeded or pod.index in ledger.skipped
        keep = cleanup.succeeded == "Keep" if good else cleanup.failed == "Keep"
        if not keep:
            step.out.delete.append(pod)


def write_counts(step: _Pass) -> None:
    """Index sets, retries, counts and progress into the new status."""
    obs, status, ledger = step.obs, step.status, step.ledger
    ledger.write(status)
    running = sum(1 for p in step.active if p.running)
    status.counts = TaskCounts(
        total=obs.total,
        running=running,
        pending=max(0, obs.total - ledger.finished - running),
        succeeded=len(ledger.succeeded),
        failed=len(ledger.failed),
        skipped=len(ledger.skipped),
    )
    status.progress = status.counts.progress()
    status.observed_generation = obs.generation


def set_conditions(step: _Pass) -> None:
    """Failed, Complete, Progressing and Suspended, with an Event on each change worth one."""
    if step.failure is not None:
        reason, message = step.failure
        if step.set_condition(ConditionType.FAILED, "True", reason, message):
            step.event("Warning", str(reason), message)
        step.set_condition(ConditionType.PROGRESSING, "False", reason, message)
        step.set_condition(ConditionType.COMPLETE, "False", reason, message)
    else:
        step.set_condition(ConditionType.FAILED, "False", Reason.DISPATCHING, "")
        if step.complete:
            _set_complete(step)
        else:
            _set_progressing(step)
    _set_suspended(step)


def _set_complete(step: _Pass) -> None:
    summary = _summary(step)
    if step.set_condition(ConditionType.COMPLETE, "True", Reason.ALL_TASKS_FINISHED, summary):
        step.event("Normal", "Completed", summary)
    step.set_condition(ConditionType.PROGRESSING, "False", Reason.ALL_TASKS_FINISHED, summary)


def _set_progressing(step: _Pass) -> None:
    step.set_condition(ConditionType.COMPLETE, "False", Reason.DISPATCHING, "")
    if step.obs.spec.suspend:
        step.set_condition(
            ConditionType.PROGRESSING,
            "False",
            Reason.SUSPENDED,
            "spec.suspend is true: no new tasks start; running tasks finish",
        )
    else:
        step.set_condition(
            ConditionType.PROGRESSING,
            "True",
            Reason.DISPATCHING,
            step.status.progress + " tasks finished",
        )


def _set_suspended(step: _Pass) -> None:
    if step.obs.spec.suspend:
        if step.set_condition(
            ConditionType.SUSPENDED, "True", Reason.SUSPENDED, "spec.suspend is true"
        ):
            step.event("Normal", "Suspended", "dispatching stopped (spec.suspend)")
    elif condition_is(step.status, ConditionType.SUSPENDED) and step.set_condition(
        ConditionType.SUSPENDED, "False", Reason.RESUMED, ""
    ):
        step.event("Normal", "Resumed", "dispatching resumed")


def report_stuck_tasks(step: _Pass) -> None:
    """TasksStuck: True (reason: the waiting reason) while pods are stuck on a configuration
    error or the batch failed on it, with a Warning Event when it starts or its reason
    changes; False/WaitingForCapacity while pods only wait for a node to free up. Absent
    until a pod has been stuck or waiting, so ordinary batches carry no extra condition."""
    obs, status = step.obs, step.status
    errors = [found for found in step.stuck if found.config]
    waiting = [found for found in step.stuck if not found.config]
    previous = next((c for c in obs.status.conditions if c.type == ConditionType.TASKS_STUCK), None)
    if errors:
        first, stuck = errors[0], status.stuck
        message = (
            f"{_pods(len(errors))} stuck before Running; {first.message}. No new tasks "
            f"start meanwhile; an attempt stuck {obs.spec.stuck.give_up_seconds}s is given up "
            f"(not counted against retry.limit), and after {obs.spec.stuck.max_attempts} "
            f"given-up attempts the batch fails ({stuck.given_up if stuck else 0} so far)"
        )
        news = step.set_condition(ConditionType.TASKS_STUCK, "True", first.reason, message)
        # The kubelet alternates ErrImagePull and ImagePullBackOff on every pull retry: one
        # error with one fix, so only a different fix is news.
        if news or (previous is not None and not same_error(previous.reason, first.reason)):
            step.event("Warning", Reason.TASKS_STUCK, message)
    elif step.failure is not None and step.failure[0] == Reason.TASKS_STUCK:
        reason = status.stuck.reason if status.stuck and status.stuck.reason else "TasksStuck"
        step.set_condition(ConditionType.TASKS_STUCK, "True", reason, step.failure[1])
    elif waiting and step.failure is None:
        _report_waiting(step, waiting)
    elif previous is not None:
        step.set_condition(ConditionType.TASKS_STUCK, "False", Reason.NOT_STUCK, "")


def _report_waiting(step: _Pass, waiting: list[Diagnosis]) -> None:
    """TasksStuck False: pods held by Kueue's quota (WaitingForAdmission, naming the queue)
    come first, since the scheduler never sees them; else pods waiting for a node."""
    gated = [found for found in waiting if found.reason == WAITING_FOR_ADMISSION]
    if gated:
        queue = gated[0].pod.awaiting_admission or "(no queue label)"
        step.set_condition(
            ConditionType.TASKS_STUCK,
            "False",
            Reason.WAITING_FOR_ADMISSION,
            f"{_pods(len(gated))} waiting for admission by Kueue in LocalQueue {queue} "
            f"(normal queueing): {gated[0].fix}",
        )
        return
    first = waiting[0]
    step.set_condition(
        ConditionType.TASKS_STUCK,
        "False",
        Reason.WAITING_FOR_CAPACITY,
        f"{_pods(len(waiting))} waiting for capacity (normal queueing); the scheduler "
        f"says: {first.detail}; {first.fix}",
    )


def _pods(count: int) -> str:
    return "1 task pod" if count == 1 else f"{count} task pods"


def set_kstatus_conditions(step: _Pass) -> None:
    """Reconciling and Stalled, the conditions kstatus (Flux, kpt, cli-utils) reads: a batch
    still working toward its end is Reconciling (InProgress); a Failed batch or one stuck on a
    configuration error is Stalled and not Reconciling (Failed); a Complete one is neither
    (Current). A suspended batch does what was asked, so it is neither either."""
    status = step.status
    stalled = next(
        (
            c
            for c in status.conditions
            if c.type in (ConditionType.FAILED, ConditionType.TASKS_STUCK) and c.status == "True"
        ),
        None,
    )
    if stalled is not None:
        step.set_condition(ConditionType.STALLED, "True", stalled.reason, stalled.message)
    else:
        step.set_condition(ConditionType.STALLED, "False", Reason.NOT_STUCK, "")
    if stalled is not None:  # kstatus reads Reconciling first: True would hide Stalled
        step.set_condition(ConditionType.RECONCILING, "False", stalled.reason, stalled.message)
    elif step.complete:
        step.set_condition(ConditionType.RECONCILING, "False", Reason.FINISHED, "")
    elif step.obs.spec.suspend:
        step.set_condition(ConditionType.RECONCILING, "False", Reason.SUSPENDED, "")
    else:
        step.set_condition(
            ConditionType.RECONCILING,
            "True",
            Reason.DISPATCHING,
            status.progress + " tasks finished",
        )


def settle(step: _Pass) -> None:
    """Finished or not, the completion time, the TTL (delete the batch, or wake for it) and
    the earliest timer a later pass needs."""
    obs, status, out = step.obs, step.status, step.out
    out.finished = step.failure is not None or step.complete
    if not out.finished:
        status.completion_time = None  # running again after a block was lifted
    elif status.completion_time is None and not step.active and not step.in_flight:
        status.completion_time = obs.now
    ttl = obs.spec.ttl_seconds_after_finished
    if out.finished and ttl is not None and status.completion_time:
        out.delete_batch = _ttl_expired(status, ttl, obs.now)
        step.wakes.append(ttl - _since(obs.now, status.completion_time))
    out.wake_in = max(0.0, min(step.wakes)) if step.wakes else None


def _add_failure(status: GPUBatchStatus, failure: TaskFailure) -> None:
    status.recent_failures = [*status.recent_failures, failure][-RECENT_FAILURES_LIMIT:]


def _ttl_expired(status: GPUBatchStatus, ttl_seconds: int | None, now: datetime) -> bool:
    """True when a finished batch has outlived ttlSecondsAfterFinished."""
    if ttl_seconds is None or status.completion_time is None:
        return False
    return _since(now, status.completion_time) >= ttl_seconds


__all__ = [
    "STOP_STUCK",
    "DispatchOrder",
    "Event",
    "Ledger",
    "Limits",
    "Observation",
    "Plan",
    "TaskAttempt",
    "plan",
    "plan_invalid_spec",
]
