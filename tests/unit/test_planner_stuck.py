"""The planner on pods stuck before Running: report it, hold dispatch, give attempts up
without counting them, fail after spec.stuck.maxAttempts, resume on a fixed spec; and the
kstatus conditions (Reconciling, Stalled) that follow from it all."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gpubatch.api.status import ConditionType, GPUBatchStatus, StuckState
from gpubatch.core.planner import STOP_STUCK, Observation, Plan, plan
from support.builders import (
    a_node,
    a_spec,
    an_observation,
    failed,
    running,
    stuck,
    succeeded,
    unschedulable,
    unscheduled,
)

pytestmark = pytest.mark.unit


def condition_of(status: GPUBatchStatus, type_: str) -> tuple[str, str] | None:
    found = next((c for c in status.conditions if c.type == type_), None)
    return None if found is None else (found.status, found.reason)


def message_of(status: GPUBatchStatus, type_: str) -> str:
    return next(c.message for c in status.conditions if c.type == type_)


def again(previous: Plan, obs: Observation, **changes: Any) -> Plan:
    """The next pass, fed the status the previous one wrote."""
    return plan(replace(obs, status=previous.status, **changes))


# ------------------------------------------------------------------------------ reporting
def test_a_pod_stuck_on_its_image_is_reported_at_once_with_task_reason_and_fix():
    result = plan(an_observation(pods=[stuck(4, reason="ImagePullBackOff", created_seconds_ago=5)]))
    assert condition_of(result.status, ConditionType.TASKS_STUCK) == ("True", "ImagePullBackOff")
    message = message_of(result.status, ConditionType.TASKS_STUCK)
    assert "task 4 (pod clips-4-0): ImagePullBackOff" in message
    assert "check the image name and tag" in message
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "TasksStuck")]


def test_the_warning_is_posted_once_not_on_every_pass():
    obs = an_observation(pods=[stuck(created_seconds_ago=5)])
    assert [e.reason for e in again(plan(obs), obs).events] == []


def test_a_new_waiting_reason_is_news():
    obs = an_observation(pods=[stuck(reason="ErrImagePull", created_seconds_ago=5)])
    first = plan(obs)
    second = again(first, obs, pods=[stuck(reason="CreateContainerConfigError")])
    assert [e.reason for e in second.events] == ["TasksStuck"]


def test_a_pull_retried_by_the_kubelet_is_not_news():
    obs = an_observation(pods=[stuck(reason="ErrImagePull", created_seconds_ago=5)])
    second = again(plan(obs), obs, pods=[stuck(reason="ImagePullBackOff")])
    assert second.events == []
    assert condition_of(second.status, ConditionType.TASKS_STUCK) == ("True", "ImagePullBackOff")


def test_waiting_for_capacity_is_information_not_a_failure():
    obs = an_observation(pods=[unschedulable(0)], nodes=[a_node(gpus=8)])
    result = plan(obs)
    assert condition_of(result.status, ConditionType.TASKS_STUCK) == (
        "False",
        "WaitingForCapacity",
    )
    assert "0/8 nodes are available" in message_of(result.status, ConditionType.TASKS_STUCK)
    assert condition_of(result.status, ConditionType.STALLED) == ("False", "NotStuck")
    assert result.events == [] and result.stop == []


def test_pods_held_by_kueue_show_the_batch_queued_and_where_not_stalled():
    gated = [unscheduled(i, awaiting_admission="team-a") for i in range(2)]
    obs = an_observation(pods=[*gated, unschedulable(2)], nodes=[a_node(gpus=8)])
    result = plan(obs)
    assert condition_of(result.status, ConditionType.TASKS_STUCK) == (
        "False",
        "WaitingForAdmission",
    )
    message = message_of(result.status, ConditionType.TASKS_STUCK)
    assert "2 task pods waiting for admission by Kueue in LocalQueue team-a" in message
    assert condition_of(result.status, ConditionType.STALLED) == ("False", "NotStuck")
    assert result.events == [] and result.stop == []


def test_pods_held_by_kueue_count_against_max_pending():
    gated = [unscheduled(i, awaiting_admission="team-a") for i in range(3)]
    obs = an_observation(total=10, pods=gated, cursor=3, spec=a_spec(maxPending=3))
    assert plan(obs).create == []


def test_a_batch_that_never_got_stuck_carries_no_tasks_stuck_condition():
    result = plan(an_observation(pods=[running(0)]))
    assert condition_of(result.status, ConditionType.TASKS_STUCK) is None


def test_the_condition_clears_once_nothing_is_stuck():
    obs = an_observation(pods=[stuck(created_seconds_ago=5)])
    cleared = again(plan(obs), obs, pods=[running(0)])
    assert condition_of(cleared.status, ConditionType.TASKS_STUCK) == ("False", "NotStuck")


# --------------------------------------------------------------------------- dispatch hold
def test_nothing_new_is_dispatched_while_a_pod_is_stuck_on_a_configuration_error():
    result = plan(an_observation(total=10, pods=[stuck(0, created_seconds_ago=5)], cursor=1))
    assert result.create == []


def test_waiting_for_capacity_does_not_hold_dispatch_back():
    obs = an_observation(total=3, pods=[unschedulable(0)], nodes=[a_node()], cursor=1)
    assert [c.index for c in plan(obs).create] == [1, 2]


def test_after_a_give_up_one_pod_at_a_time_probes_the_error():
    status = GPUBatchStatus(stuck=StuckState(generation=1, given_up=1, reason="ErrImagePull"))
    assert [c.index for c in plan(an_observation(total=10, status=status)).create] == [0]
    busy = an_observation(total=10, status=status, pods=[running(0, phase="Pending")], cursor=1)
    assert plan(busy).create == []


def test_a_pod_that_runs_ends_the_probing():
    status = GPUBatchStatus(stuck=StuckState(generation=1, given_up=1, reason="ErrImagePull"))
    result = plan(an_observation(total=4, status=status, pods=[running(0)], cursor=1))
    assert result.status.stuck is None
    assert [c.index for c in result.create] == [1, 2, 3]


def test_a_short_task_that_finished_unseen_running_ends_the_probing_too():
    status = GPUBatchStatus(stuck=StuckState(generation=1, given_up=1, reason="ErrImagePull"))
    result = plan(an_observation(total=4, status=status, pods=[succeeded(0)], cursor=1))
    assert result.status.stuck is None
    assert [c.index for c in result.create] == [1, 2, 3]


def test_a_given_up_pod_killed_on_deletion_does_not_end_the_probing():
    status = GPUBatchStatus(stuck=StuckState(generation=1, given_up=0, reason="ErrImagePull"))
    killed = failed(0, exit_code=137, stop_reason=STOP_STUCK + "ErrImagePull", deleting=True)
    result = plan(an_observation(total=4, status=status, pods=[killed], cursor=1))
    assert result.status.stuck is not None and result.status.stuck.given_up == 1
    assert [c.index for c in result.create] == [0]  # one probe: the given-up task again


# ------------------------------------------------------------------------------- give up
def test_a_pod_stuck_past_give_up_seconds_is_stopped_and_a_wake_set_before():
    young = plan(an_observation(pods=[stuck(0, created_seconds_ago=30)]))
    assert young.stop == [] and young.wake_in == pytest.approx(90)
    old_pod = stuck(0, created_seconds_ago=121)
    old = plan(an_observation(pods=[old_pod]))
    assert old.stop == [(old_pod, STOP_STUCK + "ImagePullBackOff")]
    assert old.status.stuck is not None and "task 0" in old.status.stuck.message


def test_give_up_seconds_is_the_specs():
    spec = a_spec(stuck={"giveUpSeconds": 20})
    assert plan(an_observation(spec, pods=[stuck(created_seconds_ago=25)])).stop != []


def test_a_given_up_attempt_is_retried_without_counting_a_failure():
    gone = failed(2, 0, exit_code=137, stop_reason=STOP_STUCK + "ErrImagePull", deleting=True)
    result = plan(an_observation(pods=[gone]))
    retry = next(r for r in result.status.retries if r.index == 2)
    assert (retry.attempts, retry.failures) == (1, 0)
    assert result.status.counts.failed == 0
    assert result.status.stuck == StuckState(
        generation=1, given_up=1, reason="ErrImagePull", message=""
    )
    assert result.status.recent_failures[-1].reason == "ErrImagePull"
    assert result.release == [gone]


def test_a_given_up_attempt_is_counted_once_across_passes():
    gone = failed(2, 0, exit_code=137, stop_reason=STOP_STUCK + "ErrImagePull", deleting=True)
    obs = an_observation(pods=[gone])
    second = again(plan(obs), obs)
    assert second.status.stuck is not None and second.status.stuck.given_up == 1


# ------------------------------------------------------------------------- fail and resume
def stuck_out(given_up: int = 3, generation: int = 1) -> GPUBatchStatus:
    return GPUBatchStatus(
        stuck=StuckState(
            generation=generation,
            given_up=given_up,
            reason="ImagePullBackOff",
            message="task 0 (pod clips-0-0): ImagePullBackOff; check the image",
        )
    )


def test_max_attempts_given_up_fail_the_batch_so_kubectl_wait_returns():
    result = plan(an_observation(status=stuck_out(3), pods=[stuck(5)]))
    assert condition_of(result.status, ConditionType.FAILED) == ("True", "TasksStuck")
    message = message_of(result.status, ConditionType.FAILED)
    assert "3 task attempts were given up" in message and "maxAttempts is 3" in message
    assert "ImagePullBackOff" in message
    assert condition_of(result.status, ConditionType.STALLED) == ("True", "TasksStuck")
    assert result.create == [] and [p.index for p, _ in result.stop] == [5]


def test_fewer_given_up_attempts_than_the_limit_keep_the_batch_going():
    result = plan(an_observation(status=stuck_out(2)))
    assert condition_of(result.status, ConditionType.FAILED) == ("False", "Dispatching")


def test_a_fixed_spec_resumes_a_batch_failed_on_stuck_tasks():
    obs = an_observation(status=stuck_out(3))
    failed_plan = plan(obs)
    fixed = again(failed_plan, obs, generation=2)
    assert condition_of(fixed.status, ConditionType.FAILED) == ("False", "Dispatching")
    assert fixed.status.stuck is None
    assert fixed.create != []
    assert condition_of(fixed.status, ConditionType.RECONCILING) == ("True", "Dispatching")


def test_the_same_spec_stays_failed():
    obs = an_observation(status=stuck_out(3))
    assert condition_of(again(plan(obs), obs).status, ConditionType.FAILED) == (
        "True",
        "TasksStuck",
    )


def test_a_gpu_request_no_node_can_hold_is_given_up_like_a_bad_image():
    spec = a_spec(gpuModels=["NVIDIA-H100"])
    pod = unschedulable(0, created_at=stuck(created_seconds_ago=200).created_at)
    result = plan(an_observation(spec, pods=[pod], nodes=[a_node(model="NVIDIA-A100")]))
    assert condition_of(result.status, ConditionType.TASKS_STUCK) == ("True", "Unschedulable")
    assert result.stop == [(pod, STOP_STUCK + "Unschedulable")]


# ------------------------------------------------------------------------------- kstatus
def test_a_running_batch_is_reconciling_and_not_stalled():
    result = plan(an_observation(pods=[running(0)]))
    assert condition_of(result.status, ConditionType.RECONCILING) == ("True", "Dispatching")
    assert condition_of(result.status, ConditionType.STALLED) == ("False", "NotStuck")


def test_a_stuck_batch_is_stalled_and_not_reconciling_while_it_waits():
    result = plan(an_observation(pods=[stuck(created_seconds_ago=5)]))
    assert condition_of(result.status, ConditionType.STALLED) == ("True", "ImagePullBackOff")
    # kstatus reads Reconciling first: it must not hide Stalled.
    assert condition_of(result.status, ConditionType.RECONCILING) == ("False", "ImagePullBackOff")


def test_a_complete_batch_is_neither_reconciling_nor_stalled():
    result = plan(an_observation(total=1, pods=[succeeded(0)]))
    assert condition_of(result.status, ConditionType.RECONCILING) == ("False", "Finished")
    assert condition_of(result.status, ConditionType.STALLED) == ("False", "NotStuck")


def test_a_suspended_batch_is_not_reconciling():
    result = plan(an_observation(a_spec(suspend=True)))
    assert condition_of(result.status, ConditionType.RECONCILING) == ("False", "Suspended")


def test_a_failed_batch_is_stalled_and_not_reconciling():
    spec_retry = a_spec(maxFailedTasks=0, retry={"limit": 0})
    result = plan(an_observation(spec_retry, pods=[failed(0)]))
    assert condition_of(result.status, ConditionType.STALLED) == ("True", "TooManyFailedTasks")
    assert condition_of(result.status, ConditionType.RECONCILING) == (
        "False",
        "TooManyFailedTasks",
    )
