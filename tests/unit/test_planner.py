"""The planner: given a batch, its recorded status and its pods, what one pass must do.

Every test builds an `Observation` (see `builders`), calls `plan()` and checks the plan: what is
recorded in the status, which pods are released, stopped, deleted or created, which events are
posted. Repeated passes feed the plan's status back in, as the reconcile does.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from gpubatch.api.result import Outcome, Reason
from gpubatch.api.status import (
    RECENT_FAILURES_LIMIT,
    Condition,
    ConditionType,
    GPUBatchStatus,
    TaskCounts,
)
from gpubatch.api.status import Reason as Why
from gpubatch.core.indexset import IndexSet
from gpubatch.core.outcome import STOP_BATCH_ENDED, STOP_TASK_DEADLINE
from gpubatch.core.planner import (
    DispatchOrder,
    Ledger,
    Limits,
    Observation,
    Plan,
    TaskAttempt,
    plan,
    plan_invalid_spec,
)
from gpubatch.core.podview import PodView
from support.builders import (
    NOW,
    a_result,
    a_retry,
    a_spec,
    a_status,
    ago,
    an_observation,
    failed,
    later,
    running,
    succeeded,
    unscheduled,
)

pytestmark = pytest.mark.unit


# -------------------------------------------------------------------------------- helpers
def condition(status: GPUBatchStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def condition_of(status: GPUBatchStatus, type_: str) -> tuple[str, str] | None:
    found = condition(status, type_)
    return None if found is None else (found.status, found.reason)


def created(result: Plan) -> list[tuple[int, int]]:
    return [(c.index, c.attempt) for c in result.create]


def created_tasks(result: Plan) -> list[int]:
    return [c.index for c in result.create]


def event_reasons(result: Plan) -> list[str]:
    return [e.reason for e in result.events]


def indexes(text: str) -> list[int]:
    return list(IndexSet.parse(text))


def retry_of(status: GPUBatchStatus, index: int) -> tuple[int, int] | None:
    """(attempts, failures) of a task's retry entry, None when it has none."""
    entry = next((r for r in status.retries if r.index == index), None)
    return None if entry is None else (entry.attempts, entry.failures)


def outcome_in(status: GPUBatchStatus, pod: PodView) -> bool:
    """Does `status` hold this attempt's outcome (final task, or retries moved past it)?"""
    return Ledger.of(status).recorded(pod)


def again(previous: Plan, obs: Observation, **changes: Any) -> Plan:
    """The next pass: the same observation with the status the previous pass wrote."""
    return plan(replace(obs, status=previous.status, cursor=previous.cursor, **changes))


# ------------------------------------------------------------------------------- dispatch
def test_first_pass_dispatches_first_attempts_in_index_order_and_announces_the_start():
    result = plan(an_observation(limits=Limits(max_pending=3)))

    assert created(result) == [(0, 0), (1, 0), (2, 0)]
    assert result.cursor == 3
    assert result.status.start_time == NOW
    assert [(e.type, e.reason) for e in result.events] == [("Normal", "Started")]
    assert condition_of(result.status, ConditionType.PROGRESSING) == ("True", Why.DISPATCHING)
    assert condition_of(result.status, ConditionType.COMPLETE) == ("False", Why.DISPATCHING)
    assert condition_of(result.status, ConditionType.FAILED) == ("False", Why.DISPATCHING)
    assert not result.finished


def test_creates_per_pass_are_capped_by_the_operator_limit():
    result = plan(an_observation(limits=Limits(max_pending=100, max_creates_per_pass=4)))
    assert created_tasks(result) == [0, 1, 2, 3]


def test_operator_max_pending_applies_when_the_batch_sets_none():
    result = plan(an_observation(limits=Limits(max_pending=2)))
    assert created_tasks(result) == [0, 1]


def test_batch_max_pending_overrides_the_operator_default():
    result = plan(an_observation(a_spec(maxPending=5), limits=Limits(max_pending=2)))
    assert created_tasks(result) == [0, 1, 2, 3, 4]


def test_unscheduled_pods_use_up_the_pending_budget_but_scheduled_ones_do_not():
    pods = [unscheduled(0), unscheduled(1), running(2), running(3)]
    result = plan(an_observation(a_spec(maxPending=4), pods=pods))
    assert created_tasks(result) == [4, 5]


def test_nothing_is_created_while_more_pods_wait_than_max_pending_allows():
    pods = [unscheduled(i) for i in range(5)]
    result = plan(an_observation(a_spec(maxPending=3), pods=pods))
    assert result.create == []


def test_pods_created_but_not_yet_seen_count_as_unscheduled_and_are_not_created_again():
    obs = an_observation(a_spec(maxPending=3), in_flight=frozenset({(0, 0), (1, 0)}))
    result = plan(obs)
    assert created(result) == [(2, 0)]


def test_an_in_flight_pod_already_seen_in_the_index_is_counted_once():
    obs = an_observation(a_spec(maxPending=3), pods=[unscheduled(0)], in_flight=frozenset({(0, 0)}))
    assert created_tasks(plan(obs)) == [1, 2]


def test_parallelism_caps_active_and_in_flight_pods_together():
    pods = [running(0), unscheduled(1)]
    full = an_observation(a_spec(parallelism=3), pods=pods, in_flight=frozenset({(2, 0)}))
    assert plan(full).create == []

    room = an_observation(a_spec(parallelism=5), pods=pods, in_flight=frozenset({(2, 0)}))
    assert created_tasks(plan(room)) == [3, 4]


def test_a_pod_still_stopping_keeps_its_place_under_parallelism():
    stopping = running(0, deleting=True, stop_reason=STOP_TASK_DEADLINE)
    result = plan(an_observation(a_spec(parallelism=2), pods=[stopping, running(1)]))
    assert result.create == []


def test_the_smallest_of_the_three_limits_wins():
    obs = an_observation(
        a_spec(parallelism=6, maxPending=4),
        pods=[running(0), unscheduled(1)],
        limits=Limits(max_creates_per_pass=10),
    )
    # parallelism leaves 4, maxPending leaves 3, the operator allows 10
    assert created_tasks(plan(obs)) == [2, 3, 4]


def test_fresh_tasks_follow_the_dispatch_order():
    order = DispatchOrder(5, [4, 2, 0, 1, 3])
    result = plan(an_observation(total=5, order=order, limits=Limits(max_pending=2)))
    assert created_tasks(result) == [4, 2]
    assert result.cursor == 2


def test_next_pass_continues_from_the_cursor_and_skips_tasks_already_taken():
    status = a_status(succeeded=[0, 1], skipped=[4], start_time=ago(60))
    obs = an_observation(status=status, pods=[running(3)], cursor=2, limits=Limits(max_pending=2))
    result = plan(obs)
    assert created_tasks(result) == [2, 5]
    assert result.cursor == 6


def test_positions_before_the_cursor_are_never_revisited():
    result = plan(an_observation(cursor=7, limits=Limits(max_pending=10)))
    assert created_tasks(result) == [7, 8, 9]
    assert result.cursor == 10


def test_cursor_moves_to_the_end_when_every_remaining_task_is_taken():
    pods = [running(i) for i in range(3)]
    result = plan(an_observation(total=3, pods=pods, status=a_status(start_time=ago(5))))
    assert result.create == []
    assert result.cursor == 3


def test_cursor_stays_put_when_dispatch_is_suspended():
    result = plan(an_observation(a_spec(suspend=True), cursor=4))
    assert result.create == []
    assert result.cursor == 4


def test_restarted_operator_does_not_recreate_tasks_whose_pods_exist():
    status = a_status(succeeded=range(5), start_time=ago(600))
    pods = [running(5), running(6), unscheduled(7)]
    result = plan(an_observation(status=status, pods=pods, limits=Limits(max_pending=3)))
    assert created_tasks(result) == [8, 9]
    assert "Started" not in event_reasons(result)


def test_retries_are_dispatched_before_fresh_tasks():
    status = a_status(retries=[a_retry(6, attempts=1, failures=1)], start_time=ago(60))
    result = plan(an_observation(status=status, cursor=7, limits=Limits(max_pending=2)))
    assert created(result) == [(6, 1), (7, 0)]


def test_a_retry_waits_out_its_backoff_and_the_pass_asks_to_be_woken_then():
    status = a_status(retries=[a_retry(6, attempts=1, not_before=later(30))], start_time=ago(60))
    result = plan(an_observation(status=status, cursor=7, limits=Limits(max_pending=2)))
    assert created(result) == [(7, 0), (8, 0)]
    assert result.wake_in == pytest.approx(30)


def test_a_retry_whose_backoff_has_passed_is_dispatched():
    status = a_status(retries=[a_retry(6, attempts=2, not_before=ago(1))], start_time=ago(60))
    result = plan(an_observation(status=status, cursor=10))
    assert created(result) == [(6, 2)]


def test_no_new_attempt_while_an_earlier_attempt_of_the_task_is_active():
    # Attempt 1 was recorded as deleted before scheduling, but a node bound it in the same
    # instant: the status says attempt 2 is next, yet attempt 1 may still start.
    status = a_status(retries=[a_retry(6, attempts=2)], start_time=ago(60))
    for pod in (running(6, 1), running(6, 1, deleting=True), unscheduled(6, 1)):
        result = plan(an_observation(status=status, pods=[pod], cursor=10))
        assert 6 not in created_tasks(result), pod


def test_no_new_attempt_while_the_previous_create_is_in_flight():
    status = a_status(retries=[a_retry(6, attempts=1)], start_time=ago(60))
    obs = an_observation(status=status, cursor=10, in_flight=frozenset({(6, 1)}))
    assert plan(obs).create == []


def test_a_failed_attempt_is_recorded_before_its_retry_is_created_with_the_next_number():
    result = plan(an_observation(pods=[failed(3, 0)], cursor=10))
    assert retry_of(result.status, 3) == (1, 1)
    assert created(result) == [(3, 1)]
    assert outcome_in(result.status, result.release[0])


def test_several_unrecorded_attempts_of_one_task_are_all_recorded_in_attempt_order():
    pods = [failed(3, 1, exit_code=2), failed(3, 0, exit_code=1)]
    result = plan(an_observation(pods=pods, cursor=10))
    assert retry_of(result.status, 3) == (2, 2)
    assert [(f.attempt, f.exit_code) for f in result.status.recent_failures] == [(0, 1), (1, 2)]
    assert created(result) == [(3, 2)]


def test_final_tasks_are_never_dispatched():
    status = a_status(succeeded=[0], failed=[1], skipped=[2], retries=[a_retry(1)])
    result = plan(an_observation(total=4, status=status))
    assert created(result) == [(3, 0)]


# ------------------------------------------------------------------------------- recording
def test_a_succeeded_pod_is_recorded_with_its_gpu_model_and_duration_then_released():
    pod = succeeded(2, message=a_result(duration_seconds=42.0).encode())
    result = plan(an_observation(pods=[pod], status=a_status(start_time=ago(60)), cursor=10))

    assert indexes(result.status.succeeded_indexes) == [2]
    assert result.status.counts.succeeded == 1
    [stats] = result.status.gpu_models
    assert (stats.model, stats.succeeded, stats.mean_seconds) == ("NVIDIA-A100", 1, 42.0)
    assert result.release == [pod]


def test_gpu_model_falls_back_to_the_node_label_then_to_unknown():
    with_label = plan(an_observation(pods=[succeeded(2)], node_models={"gpu-node-1": "L4"}))
    [stats] = with_label.status.gpu_models
    assert (stats.model, stats.mean_seconds) == ("L4", 90.0)  # from the container's start/end

    without = plan(an_observation(pods=[succeeded(2)]))
    assert [s.model for s in without.status.gpu_models] == ["unknown"]


def test_a_skipped_result_records_the_task_as_skipped_not_succeeded():
    message = a_result(outcome=Outcome.SKIPPED, reason=Reason.OUTPUTS_EXIST).encode()
    result = plan(an_observation(pods=[succeeded(4, message=message)]))
    assert indexes(result.status.skipped_indexes) == [4]
    assert result.status.succeeded_indexes == ""
    assert result.status.gpu_models == []


def test_recording_is_idempotent_when_a_pass_is_repeated_before_release():
    pods = [succeeded(0), failed(1, 0, exit_code=7), failed(2, 0, disruption="Evicted")]
    obs = an_observation(pods=pods, cursor=10)
    first = plan(obs)
    # The status was written, then the operator died before dropping any finalizer.
    second = again(first, obs)

    assert second.status.model_dump() == first.status.model_dump()
    assert second.release == first.release == pods
    assert second.create == first.create  # the same deterministic attempts (409 if they exist)
    assert "TaskFailed" not in event_reasons(second)


def test_an_attempt_recorded_earlier_is_not_counted_again():
    status = a_status(retries=[a_retry(1, attempts=1, failures=1)])
    result = plan(an_observation(status=status, pods=[failed(1, 0), running(1, 1)], cursor=10))
    assert retry_of(result.status, 1) == (1, 1)
    assert result.status.recent_failures == []


def test_only_terminal_pods_that_still_carry_the_finalizer_are_released():
    done_untracked = succeeded(1, tracked=False)
    done_tracked = failed(2)
    result = plan(an_observation(pods=[running(0), done_untracked, done_tracked, unscheduled(3)]))
    assert result.release == [done_tracked]


def test_every_released_pod_has_its_outcome_in_the_status_written_before_release():
    pods = [
        succeeded(0),
        failed(1, 0),
        failed(2, 0, exit_code=9),
        failed(3, 0, disruption="DeletionByTaintManager"),
        unscheduled(4, deleting=True),
        failed(5, 0, stop_reason=STOP_BATCH_ENDED, deleting=True),
        succeeded(
            6, message=a_result(outcome=Outcome.SKIPPED, reason=Reason.OUTPUTS_EXIST).encode()
        ),
        running(7),
    ]
    spec = a_spec(retry={"nonRetriableExitCodes": [9]})
    result = plan(an_observation(spec, pods=pods))
    assert {p.index for p in result.release} == {0, 1, 2, 3, 4, 5, 6}
    for pod in result.release:
        assert outcome_in(result.status, pod), pod
    assert not outcome_in(result.status, running(7))


# --------------------------------------------------------------------- retries and failures
def test_a_failed_attempt_is_listed_in_recent_failures():
    pod = failed(3, 0, exit_code=2, node="gpu-node-9")
    result = plan(an_observation(pods=[pod], node_models={"gpu-node-9": "H100"}))
    [failure] = result.status.recent_failures
    assert (failure.index, failure.attempt, failure.exit_code) == (3, 0, 2)
    assert (failure.reason, failure.node, failure.gpu_model) == ("Error", "gpu-node-9", "H100")
    assert failure.message == "command exited with code 2"
    assert failure.time == NOW
    assert [(s.model, s.failed) for s in result.status.gpu_models] == [("H100", 1)]


def test_recent_failures_keep_only_the_newest():
    pods = [failed(i, 0, exit_code=i + 1) for i in range(RECENT_FAILURES_LIMIT + 5)]
    result = plan(an_observation(total=len(pods), pods=pods))
    kept = [f.index for f in result.status.recent_failures]
    assert kept == list(range(5, RECENT_FAILURES_LIMIT + 5))


def test_retry_backoff_sets_not_before_and_wakes_the_batch_then():
    spec = a_spec(retry={"backoffSeconds": 10, "maxBackoffSeconds": 600})
    result = plan(an_observation(spec, pods=[failed(3, 0)], cursor=10))
    [entry] = result.status.retries
    assert (entry.attempts, entry.failures, entry.not_before) == (1, 1, later(10))
    assert result.create == []
    assert result.wake_in == pytest.approx(10)


def test_retry_backoff_doubles_with_each_counted_failure():
    spec = a_spec(retry={"backoffSeconds": 10, "maxBackoffSeconds": 600})
    status = a_status(retries=[a_retry(3, attempts=2, failures=2)])
    result = plan(an_observation(spec, status=status, pods=[failed(3, 2)], cursor=10))
    assert result.status.retries[0].not_before == later(40)


def test_a_disrupted_pod_is_retried_at_once_without_counting_against_the_limit():
    spec = a_spec(retry={"limit": 0, "backoffSeconds": 60, "maxBackoffSeconds": 60})
    pod = failed(3, 0, exit_code=137, disruption="DeletionByTaintManager")
    result = plan(an_observation(spec, pods=[pod], cursor=10))

    assert retry_of(result.status, 3) == (1, 0)
    assert result.status.retries[0].not_before is None
    assert created(result) == [(3, 1)]
    assert result.status.failed_indexes == ""
    assert result.status.gpu_models == []
    assert result.status.recent_failures[0].reason == "DeletionByTaintManager"
    assert "TaskFailed" not in event_reasons(result)


def test_a_pod_deleted_before_it_was_scheduled_is_retried_without_counting():
    result = plan(an_observation(pods=[unscheduled(3, deleting=True)], cursor=10))
    assert retry_of(result.status, 3) == (1, 0)
    assert result.status.recent_failures[0].reason == "PodDeleted"
    assert created(result) == [(3, 1)]


def test_a_non_retriable_exit_code_fails_the_task_at_once():
    spec = a_spec(retry={"limit": 5, "nonRetriableExitCodes": [2]})
    result = plan(an_observation(spec, pods=[failed(3, 0, exit_code=2)], cursor=10))
    assert indexes(result.status.failed_indexes) == [3]
    assert result.status.retries == []
    assert result.create == []
    assert "non-retriable" in result.status.recent_failures[0].message


def test_the_task_fails_when_its_retries_are_used_up():
    spec = a_spec(retry={"limit": 2})
    status = a_status(retries=[a_retry(3, attempts=2, failures=2)])
    result = plan(an_observation(spec, status=status, pods=[failed(3, 2)], cursor=10))
    assert indexes(result.status.failed_indexes) == [3]
    assert result.status.retries == []
    assert result.create == []
    assert result.status.counts.failed == 1


def test_disruptions_do_not_use_up_retries():
    spec = a_spec(retry={"limit": 1})
    status = a_status(retries=[a_retry(3, attempts=3, failures=0)])  # two disruptions so far
    result = plan(an_observation(spec, status=status, pods=[failed(3, 3)], cursor=10))
    assert retry_of(result.status, 3) == (4, 1)
    assert created(result) == [(3, 4)]


def test_the_first_counted_failure_posts_one_warning_event():
    pods = [failed(1, 0, exit_code=3), failed(2, 0, exit_code=4)]
    obs = an_observation(pods=pods, cursor=10)
    first = plan(obs)
    warnings = [e for e in first.events if e.reason == "TaskFailed"]
    assert len(warnings) == 1
    assert warnings[0].type == "Warning"
    assert warnings[0].message.startswith("task 1 attempt 0 failed")

    later_failure = again(first, obs, pods=[*pods, failed(5, 0)])
    assert "TaskFailed" not in event_reasons(later_failure)


def test_the_first_real_failure_is_announced_even_after_a_disruption_was_recorded():
    obs = an_observation(pods=[failed(0, 0, disruption="Evicted")], cursor=10)
    first = plan(obs)
    assert "TaskFailed" not in event_reasons(first)

    second = again(first, obs, pods=[failed(0, 0, disruption="Evicted"), failed(4, 0)])
    assert "TaskFailed" in event_reasons(second)


def test_too_many_failed_tasks_fail_the_batch_and_stop_its_active_pods():
    spec = a_spec(maxFailedTasks=1, retry={"limit": 0})
    status = a_status(failed=[1], start_time=ago(60))
    pods = [failed(3, 0), running(4), unscheduled(5), running(6, deleting=True)]
    result = plan(an_observation(spec, status=status, pods=pods, cursor=7))

    assert condition_of(result.status, ConditionType.FAILED) == (
        "True",
        Why.TOO_MANY_FAILED_TASKS,
    )
    assert condition_of(result.status, ConditionType.PROGRESSING) == (
        "False",
        Why.TOO_MANY_FAILED_TASKS,
    )
    assert condition_of(result.status, ConditionType.COMPLETE) == (
        "False",
        Why.TOO_MANY_FAILED_TASKS,
    )
    assert [(p.index, why) for p, why in result.stop] == [
        (4, STOP_BATCH_ENDED),
        (5, STOP_BATCH_ENDED),
    ]
    assert result.create == []
    assert result.finished
    assert ("Warning", "TooManyFailedTasks") in [(e.type, e.reason) for e in result.events]
    assert result.status.completion_time is None  # pods are still stopping


def test_failed_tasks_up_to_the_limit_do_not_fail_the_batch():
    spec = a_spec(maxFailedTasks=2, retry={"limit": 0})
    status = a_status(failed=[1], start_time=ago(60))
    result = plan(an_observation(spec, status=status, pods=[failed(3, 0)], cursor=5))
    assert condition_of(result.status, ConditionType.FAILED) == ("False", Why.DISPATCHING)
    assert created_tasks(result) == [5, 6, 7, 8, 9]


def test_pods_stopped_because_the_batch_ended_are_neither_counted_nor_retried():
    spec = a_spec(maxFailedTasks=0)
    failed_condition = Condition(
        type="Failed", status="True", reason="TooManyFailedTasks", last_transition_time=ago(5)
    )
    status = a_status(failed=[1], conditions=[failed_condition], start_time=ago(60))
    stopped = failed(4, 0, exit_code=143, deleting=True, stop_reason=STOP_BATCH_ENDED)
    result = plan(an_observation(spec, status=status, pods=[stopped]))

    assert retry_of(result.status, 4) == (1, 0)
    assert result.status.recent_failures == []
    assert result.status.gpu_models == []
    assert result.create == []
    assert result.release == [stopped]
    assert result.events == []  # the Failed condition did not change
    assert result.status.completion_time == NOW


def test_a_failed_batch_stays_failed_and_dispatches_nothing():
    failed_condition = Condition(
        type="Failed",
        status="True",
        reason="DeadlineExceeded",
        message="too long",
        last_transition_time=ago(5),
    )
    status = a_status(conditions=[failed_condition], start_time=ago(60))
    result = plan(an_observation(status=status))
    assert condition_of(result.status, ConditionType.FAILED) == ("True", Why.DEADLINE_EXCEEDED)
    assert condition(result.status, ConditionType.FAILED).last_transition_time == ago(5)
    assert result.create == []
    assert result.events == []


def test_the_batch_deadline_fails_the_batch_and_stops_running_pods():
    spec = a_spec(activeDeadlineSeconds=60)
    status = a_status(start_time=ago(61))
    result = plan(an_observation(spec, status=status, pods=[running(0)], cursor=1))
    assert condition_of(result.status, ConditionType.FAILED) == ("True", Why.DEADLINE_EXCEEDED)
    assert [(p.index, why) for p, why in result.stop] == [(0, STOP_BATCH_ENDED)]
    assert result.create == []


def test_before_the_batch_deadline_the_pass_asks_to_be_woken_at_it():
    spec = a_spec(activeDeadlineSeconds=60)
    status = a_status(start_time=ago(20))
    result = plan(an_observation(spec, status=status, pods=[running(0)], cursor=10))
    assert condition_of(result.status, ConditionType.FAILED) == ("False", Why.DISPATCHING)
    assert result.wake_in == pytest.approx(40)


def test_time_spent_suspended_does_not_count_against_the_batch_deadline():
    spec = a_spec(activeDeadlineSeconds=60)
    # started 100 s ago, suspended for 50 s of it: 50 s of the 60 used
    status = a_status(start_time=ago(100), suspended_seconds=50.0)
    result = plan(an_observation(spec, status=status, pods=[running(0)], cursor=10))
    assert condition_of(result.status, ConditionType.FAILED) == ("False", Why.DISPATCHING)
    assert result.wake_in == pytest.approx(10)


def test_suspending_a_started_batch_stops_its_deadline_clock_until_resumed():
    status = a_status(start_time=ago(50))
    suspended = an_observation(
        a_spec(activeDeadlineSeconds=60, suspend=True), status=status, pods=[running(0)]
    )
    first = plan(suspended)
    assert first.status.suspended_since == NOW
    assert first.wake_in is None  # the clock stands still: no deadline timer

    # an hour later, still suspended: not failed
    later_on = again(first, suspended, now=NOW + timedelta(hours=1))
    assert condition_of(later_on.status, ConditionType.FAILED) == ("False", Why.DISPATCHING)

    resumed = replace(suspended, spec=a_spec(activeDeadlineSeconds=60), cursor=10)
    back = again(later_on, resumed, now=NOW + timedelta(hours=1))
    assert back.status.suspended_since is None
    assert back.status.suspended_seconds == pytest.approx(3600)
    assert condition_of(back.status, ConditionType.FAILED) == ("False", Why.DISPATCHING)
    assert back.wake_in == pytest.approx(10)  # 50 s of 60 were used before the suspension
    assert back.status.start_time == status.start_time  # the makespan stays true


def test_a_batch_suspended_before_it_started_has_nothing_to_pause():
    result = plan(an_observation(a_spec(activeDeadlineSeconds=60, suspend=True)))
    assert result.status.start_time is None
    assert result.status.suspended_since is None


def test_the_task_deadline_counts_from_the_task_containers_start_not_the_pods():
    spec = a_spec(taskDeadlineSeconds=60)
    # the pod was created 10 minutes ago, but its container started 30 s ago (image pull)
    pulled = running(0, created_at=ago(600).timestamp(), started_at=ago(30).timestamp())
    result = plan(an_observation(spec, pods=[pulled], cursor=10))
    assert result.stop == []
    assert result.wake_in == pytest.approx(30)


def test_an_invalid_spec_batch_is_deleted_once_past_its_ttl():
    spec = a_spec(ttlSecondsAfterFinished=60)
    obs = an_observation(spec, spec_error="spec.tasks.files: the glob matched nothing")
    first = plan(obs)
    assert condition_of(first.status, ConditionType.FAILED) == ("True", Why.INVALID_SPEC)
    assert first.status.completion_time == NOW
    assert not first.delete_batch
    assert first.wake_in == pytest.approx(60)
    assert again(first, obs, now=NOW + timedelta(seconds=61)).delete_batch


def test_a_running_attempt_past_the_task_deadline_is_stopped_with_that_reason():
    spec = a_spec(taskDeadlineSeconds=60)
    late = running(0, started_at=ago(61).timestamp())
    young = running(1, started_at=ago(20).timestamp())
    waiting = unscheduled(2)
    already = running(3, started_at=ago(500).timestamp(), deleting=True)
    pulling = running(4, phase="Pending", started_at=ago(500).timestamp())  # image pull
    obs = an_observation(spec, pods=[late, young, waiting, already, pulling], cursor=10)
    result = plan(obs)
    assert result.stop == [(late, STOP_TASK_DEADLINE)]
    assert result.wake_in == pytest.approx(40)


def test_an_attempt_stopped_for_its_deadline_counts_as_a_failed_attempt():
    pod = failed(0, 0, exit_code=143, deleting=True, stop_reason=STOP_TASK_DEADLINE)
    result = plan(an_observation(pods=[pod], cursor=10))
    assert retry_of(result.status, 0) == (1, 1)
    assert result.status.recent_failures[0].reason == "DeadlineExceeded"


def test_a_pod_past_its_task_deadline_is_stopped_once_when_the_batch_also_ends():
    spec = a_spec(taskDeadlineSeconds=60, activeDeadlineSeconds=100)
    late = running(0, started_at=ago(61).timestamp())
    result = plan(an_observation(spec, status=a_status(start_time=ago(101)), pods=[late]))
    assert result.stop == [(late, STOP_TASK_DEADLINE)]


# ----------------------------------------------------------------------------- spec problems
def test_an_invalid_spec_fails_the_batch_with_a_warning_and_dispatches_nothing():
    result = plan(an_observation(spec_error="spec.outputs[0]: unknown placeholder {shto}"))
    assert result.create == []
    assert condition_of(result.status, ConditionType.FAILED) == ("True", Why.INVALID_SPEC)
    assert condition(result.status, ConditionType.FAILED).message.endswith("{shto}")
    assert condition_of(result.status, ConditionType.PROGRESSING) == ("False", Why.INVALID_SPEC)
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "InvalidSpec")]
    assert result.status.start_time is None


def test_a_warm_batch_is_refused_by_an_operator_without_a_lease_endpoint():
    warm = {"name": "task", "image": "registry.example.com/task:1", "command": ["serve"]}
    spec = a_spec(worker={"mode": "Warm"}, template={"spec": {"containers": [warm]}})
    result = plan(an_observation(spec))
    assert result.create == []
    assert condition_of(result.status, ConditionType.FAILED) == ("True", Why.INVALID_SPEC)
    assert "--lease-port" in condition(result.status, ConditionType.FAILED).message
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "InvalidSpec")]


def test_a_warm_batch_leases_exactly_what_its_asking_pods_can_take():
    warm = {"name": "task", "image": "registry.example.com/task:1", "command": ["serve"]}
    spec = a_spec(worker={"mode": "Warm"}, template={"spec": {"containers": [warm]}}, parallelism=2)
    result = plan(an_observation(spec, runs_warm=True, warm_capacity=5))
    assert created_tasks(result) == [0, 1, 2, 3, 4]  # not bounded by parallelism: leases
    assert plan(an_observation(spec, runs_warm=True, warm_capacity=0)).create == []


def test_a_fixed_spec_resumes_dispatch_after_an_invalid_spec():
    obs = an_observation(spec_error="bad", limits=Limits(max_pending=2))
    broken = plan(obs)
    fixed = again(broken, obs, spec_error=None)
    assert condition_of(fixed.status, ConditionType.FAILED) == ("False", Why.DISPATCHING)
    assert condition_of(fixed.status, ConditionType.PROGRESSING) == ("True", Why.DISPATCHING)
    assert created_tasks(fixed) == [0, 1]
    assert not fixed.finished


def test_the_fingerprint_of_the_task_list_is_recorded_on_the_first_pass():
    result = plan(an_observation(fingerprint="sha256:aaa"))
    assert result.status.tasks_fingerprint == "sha256:aaa"
    assert result.create


def test_a_changed_task_list_blocks_dispatch_and_keeps_the_recorded_fingerprint():
    status = a_status(tasks_fingerprint="sha256:aaa", start_time=ago(60))
    obs = an_observation(
        status=status, fingerprint="sha256:bbb", pods=[running(0)], outputs_exist=IndexSet([5])
    )
    result = plan(obs)
    assert result.create == []
    assert result.status.tasks_fingerprint == "sha256:aaa"
    assert condition_of(result.status, ConditionType.FAILED) == ("True", Why.TASK_LIST_CHANGED)
    assert [(p.index, why) for p, why in result.stop] == [(0, STOP_BATCH_ENDED)]
    assert result.status.skipped_indexes == ""  # outputs of a list that may mean other tasks


def test_restoring_the_task_list_resumes_the_batch():
    status = a_status(tasks_fingerprint="sha256:aaa", start_time=ago(60))
    obs = an_observation(status=status, fingerprint="sha256:bbb", limits=Limits(max_pending=2))
    blocked = plan(obs)
    assert blocked.create == []

    restored = again(blocked, obs, fingerprint="sha256:aaa")
    assert condition_of(restored.status, ConditionType.FAILED) == ("False", Why.DISPATCHING)
    assert created_tasks(restored) == [0, 1]


def test_a_task_that_cannot_be_rendered_fails_alone():
    obs = an_observation(
        invalid_tasks={2: "output '/etc/x' is outside outputRoot '/out'"},
        status=a_status(retries=[a_retry(2, attempts=1, failures=0)]),
        limits=Limits(max_pending=4),
    )
    result = plan(obs)
    assert indexes(result.status.failed_indexes) == [2]
    assert result.status.retries == []
    [failure] = result.status.recent_failures
    assert (failure.index, failure.attempt, failure.reason) == (2, 0, "InvalidTask")
    assert "outside outputRoot" in failure.message
    assert created_tasks(result) == [0, 1, 3, 4]
    assert condition_of(result.status, ConditionType.FAILED) == ("False", Why.DISPATCHING)


def test_an_invalid_task_that_is_already_final_is_left_as_it_was():
    status = a_status(succeeded=[2])
    result = plan(an_observation(status=status, invalid_tasks={2: "nope"}))
    assert indexes(result.status.succeeded_indexes) == [2]
    assert result.status.failed_indexes == ""
    assert result.status.recent_failures == []


def test_existing_outputs_skip_only_tasks_that_have_no_attempt_yet():
    status = a_status(succeeded=[4], retries=[a_retry(2, attempts=1)], start_time=ago(60))
    obs = an_observation(
        status=status,
        pods=[running(1), failed(2, 0)],
        in_flight=frozenset({(3, 0)}),
        outputs_exist=IndexSet(range(6)),
        limits=Limits(max_pending=3),
    )
    result = plan(obs)
    assert indexes(result.status.skipped_indexes) == [0, 5]
    assert indexes(result.status.succeeded_indexes) == [4]
    assert 0 not in created_tasks(result)
    assert 5 not in created_tasks(result)


def test_existing_outputs_are_not_trusted_while_the_spec_is_invalid():
    result = plan(an_observation(spec_error="bad", outputs_exist=IndexSet(range(10))))
    assert result.status.skipped_indexes == ""
    assert condition_of(result.status, ConditionType.COMPLETE) == ("False", Why.INVALID_SPEC)


def test_a_batch_whose_outputs_all_exist_completes_without_a_pod():
    result = plan(an_observation(outputs_exist=IndexSet(range(10))))
    assert result.create == []
    assert result.status.counts.skipped == 10
    assert condition_of(result.status, ConditionType.COMPLETE) == ("True", Why.ALL_TASKS_FINISHED)
    assert result.finished
    assert result.status.start_time is None
    assert result.status.completion_time == NOW


# ------------------------------------------------------------------------------ completion
def test_the_batch_completes_when_every_task_succeeded_or_was_skipped_and_says_so_once():
    status = a_status(succeeded=[0], skipped=[1], start_time=ago(300))
    obs = an_observation(total=3, status=status, pods=[succeeded(2)])
    done = plan(obs)

    assert condition_of(done.status, ConditionType.COMPLETE) == ("True", Why.ALL_TASKS_FINISHED)
    assert condition_of(done.status, ConditionType.PROGRESSING) == (
        "False",
        Why.ALL_TASKS_FINISHED,
    )
    assert condition_of(done.status, ConditionType.FAILED) == ("False", Why.DISPATCHING)
    assert condition(done.status, ConditionType.COMPLETE).message == (
        "2 succeeded, 0 failed, 1 skipped of 3 tasks"
    )
    assert [(e.type, e.reason) for e in done.events] == [("Normal", "Completed")]
    assert done.finished
    assert done.status.completion_time == NOW
    assert done.create == []

    repeat = again(done, obs, now=NOW + timedelta(seconds=30))
    assert repeat.events == []
    assert repeat.status.completion_time == NOW


def test_a_batch_whose_tasks_all_finished_with_one_failed_ends_failed_with_the_counts():
    status = a_status(succeeded=[0], failed=[1], start_time=ago(300))
    obs = an_observation(total=3, status=status, pods=[succeeded(2)])
    done = plan(obs)

    assert condition_of(done.status, ConditionType.FAILED) == ("True", Why.TASKS_FAILED)
    assert condition_of(done.status, ConditionType.COMPLETE) == ("False", Why.TASKS_FAILED)
    assert condition_of(done.status, ConditionType.PROGRESSING) == ("False", Why.TASKS_FAILED)
    assert condition(done.status, ConditionType.FAILED).message == (
        "2 succeeded, 1 failed, 0 skipped of 3 tasks; see recentFailures"
    )
    assert [(e.type, e.reason) for e in done.events] == [("Warning", "TasksFailed")]
    assert done.finished
    assert done.status.completion_time == NOW
    assert again(done, obs, now=NOW + timedelta(seconds=30)).events == []


def test_a_batch_whose_every_task_is_invalid_ends_failed_with_a_warning_for_the_invalid_tasks():
    problem = "output '/etc/x' is outside outputRoot '/out'; write outputs inside it"
    obs = an_observation(total=2, invalid_tasks={0: problem, 1: problem})
    done = plan(obs)

    assert condition_of(done.status, ConditionType.FAILED) == ("True", Why.TASKS_FAILED)
    warnings = [(e.reason, e.message) for e in done.events if e.type == "Warning"]
    assert (
        "InvalidTasks",
        f"2 task(s) cannot run and failed without a pod, e.g. task 0: {problem}",
    ) in (warnings)
    assert ("TasksFailed", "0 succeeded, 2 failed, 0 skipped of 2 tasks; see recentFailures") in (
        warnings
    )
    assert done.create == []
    assert [e.reason for e in again(done, obs).events] == []


def test_completion_time_waits_until_no_pod_is_active():
    spec = a_spec(maxFailedTasks=0, retry={"limit": 0})
    result = plan(
        an_observation(spec, pods=[failed(0), running(1)], status=a_status(start_time=ago(9)))
    )
    assert result.finished
    assert result.status.completion_time is None


def test_a_finished_batch_asks_to_be_woken_when_its_ttl_runs_out():
    spec = a_spec(ttlSecondsAfterFinished=100)
    status = a_status(succeeded=range(10), start_time=ago(300), completion_time=ago(30))
    result = plan(an_observation(spec, status=status))
    assert result.finished
    assert result.wake_in == pytest.approx(70)


def test_a_finished_batch_is_deleted_once_its_ttl_has_passed():
    def deleted(ttl: int | None, status: GPUBatchStatus) -> bool:
        spec = a_spec(ttlSecondsAfterFinished=ttl) if ttl is not None else a_spec()
        return plan(an_observation(spec, status=status)).delete_batch

    finished_30s_ago = a_status(succeeded=range(10), start_time=ago(300), completion_time=ago(30))
    assert deleted(30, finished_30s_ago)
    assert not deleted(31, finished_30s_ago)
    assert not deleted(None, finished_30s_ago)
    assert not deleted(0, a_status(succeeded=range(5), start_time=ago(300)))


def test_a_spec_that_does_not_parse_fails_the_batch_once_and_keeps_its_counts():
    status = a_status(succeeded=[0, 1], counts=TaskCounts(total=10, succeeded=2, pending=8))
    first = plan_invalid_spec(status, 3, "spec.tasks: field required", NOW)
    again_ = plan_invalid_spec(first.status, 3, "spec.tasks: field required", later(5))

    assert condition_of(first.status, ConditionType.FAILED) == ("True", Why.INVALID_SPEC)
    assert condition_of(first.status, ConditionType.PROGRESSING) == ("False", Why.INVALID_SPEC)
    assert first.status.observed_generation == 3
    assert first.status.counts == status.counts
    assert [(e.type, e.reason) for e in first.events] == [("Warning", Why.INVALID_SPEC)]
    assert not (first.create or first.release or first.stop or first.delete)
    assert again_.events == []


def test_recovering_from_an_invalid_spec_clears_the_old_completion_time():
    spec = a_spec(ttlSecondsAfterFinished=60)
    broken = plan(an_observation(spec, spec_error="bad", total=1, limits=Limits(max_pending=1)))
    assert broken.status.completion_time == NOW

    fixed = plan(
        an_observation(spec, total=1, status=broken.status, now=NOW + timedelta(hours=2), cursor=0)
    )
    assert fixed.status.completion_time is None
    assert created_tasks(fixed) == [0]


# ------------------------------------------------------------------------------- cleanup
def test_recorded_succeeded_pods_are_deleted_and_failed_ones_kept_by_default():
    ok, bad = succeeded(0), failed(1, 0, exit_code=3)
    result = plan(an_observation(pods=[ok, bad, running(2)], cursor=10))
    assert result.delete == [ok]


def test_pod_cleanup_policy_is_honoured_both_ways():
    spec = a_spec(podCleanup={"succeeded": "Keep", "failed": "Delete"})
    ok, bad = succeeded(0), failed(1, 0, exit_code=3)
    result = plan(an_observation(spec, pods=[ok, bad], cursor=10))
    assert result.delete == [bad]


def test_pods_released_in_an_earlier_pass_are_still_cleaned_up_but_not_twice():
    status = a_status(succeeded=[0, 1], start_time=ago(60))
    released = succeeded(0, tracked=False)
    going = succeeded(1, tracked=False, deleting=True)
    result = plan(an_observation(status=status, pods=[released, going], cursor=10))
    assert result.delete == [released]
    assert result.release == []


def test_skipped_tasks_follow_the_succeeded_cleanup_policy():
    message = a_result(outcome=Outcome.SKIPPED, reason=Reason.OUTPUTS_EXIST).encode()
    pod = succeeded(0, message=message)
    assert plan(an_observation(pods=[pod], cursor=10)).delete == [pod]
    keep = a_spec(podCleanup={"succeeded": "Keep"})
    assert plan(an_observation(keep, pods=[pod], cursor=10)).delete == []


# ------------------------------------------------------------------------------- suspend
def test_suspend_stops_dispatch_but_lets_running_tasks_finish():
    obs = an_observation(
        a_spec(suspend=True), pods=[running(0)], status=a_status(start_time=ago(9))
    )
    result = plan(obs)
    assert result.create == []
    assert result.stop == []
    assert condition_of(result.status, ConditionType.SUSPENDED) == ("True", Why.SUSPENDED)
    assert condition_of(result.status, ConditionType.PROGRESSING) == ("False", Why.SUSPENDED)
    assert [(e.type, e.reason) for e in result.events] == [("Normal", "Suspended")]

    still = again(result, obs)
    assert still.events == []


def test_resuming_a_suspended_batch_dispatches_and_says_so():
    obs = an_observation(a_spec(suspend=True), limits=Limits(max_pending=2))
    paused = plan(obs)
    resumed = again(paused, obs, spec=a_spec())
    assert condition_of(resumed.status, ConditionType.SUSPENDED) == ("False", Why.RESUMED)
    assert condition_of(resumed.status, ConditionType.PROGRESSING) == ("True", Why.DISPATCHING)
    assert "Resumed" in event_reasons(resumed)
    assert created_tasks(resumed) == [0, 1]


def test_a_batch_never_suspended_has_no_suspended_condition():
    result = plan(an_observation())
    assert condition(result.status, ConditionType.SUSPENDED) is None


def test_a_suspended_batch_still_records_finished_pods():
    result = plan(an_observation(a_spec(suspend=True), pods=[succeeded(0), failed(1)]))
    assert indexes(result.status.succeeded_indexes) == [0]
    assert retry_of(result.status, 1) == (1, 1)
    assert result.create == []
    assert len(result.release) == 2


# ------------------------------------------------------------------------ counts and status
def test_counts_progress_and_observed_generation():
    status = a_status(succeeded=[0, 1], failed=[2], skipped=[3], start_time=ago(60))
    pods = [running(4), running(5, deleting=True), unscheduled(6)]
    obs = an_observation(status=status, pods=pods, cursor=10, generation=7)
    result = plan(obs)
    counts = result.status.counts
    assert (counts.total, counts.succeeded, counts.failed, counts.skipped) == (10, 2, 1, 1)
    assert counts.running == 1  # a pod being deleted is not counted as running
    assert counts.pending == 10 - 4 - 1
    assert result.status.progress == "4/10"
    assert result.status.observed_generation == 7
    assert condition(result.status, ConditionType.PROGRESSING).observed_generation == 7


def test_the_input_status_is_left_untouched():
    status = a_status(start_time=ago(60))
    before = status.model_dump()
    plan(an_observation(status=status, pods=[succeeded(0), failed(1)]))
    assert status.model_dump() == before


def test_retry_entries_leave_the_status_when_their_task_is_final():
    status = a_status(retries=[a_retry(0, attempts=1)], start_time=ago(60))
    result = plan(an_observation(status=status, pods=[failed(0, 0), succeeded(0, 1)], cursor=10))
    assert result.status.retries == []
    assert indexes(result.status.succeeded_indexes) == [0]


def test_no_wake_is_requested_when_no_timer_is_pending():
    assert plan(an_observation()).wake_in is None


# ------------------------------------------------------------------------- dispatch order
def test_dispatch_order_walks_untaken_tasks_from_the_cursor():
    order = DispatchOrder(6, [5, 4, 3, 2, 1, 0])
    assert list(order.fresh(1, lambda i: i in {3, 1})) == [(1, 4), (3, 2), (5, 0)]
    assert len(order) == 6
    assert DispatchOrder(3).at(2) == 2


def test_create_lists_task_attempts():
    result = plan(an_observation(total=1))
    assert result.create == [TaskAttempt(0, 0)]
