"""Warm pods, pure: what a leased attempt means to the planner (`core.warmpod`) and how the
fleet of warm pods is sized, leased, answered and ended (`core.warmfleet`)."""

from __future__ import annotations

from typing import Any

import pytest

from gpubatch.api.lease import MAX_LEASE_TASKS, AttemptResult, WarmProgress
from gpubatch.core.outcome import STOP_BATCH_ENDED
from gpubatch.core.planner import Ledger, Plan, TaskAttempt
from gpubatch.core.warmfleet import Fleet, FleetLimits, held, lease_sizes, plan_fleet
from gpubatch.core.warmpod import NOT_RUN, Reported, WarmPodView, lease_attempts
from support.builders import a_pod, a_result, a_retry, a_status

pytestmark = pytest.mark.unit


def a_warm_pod(
    number: int = 0,
    lease: tuple[tuple[int, int], ...] = (),
    seq: int | None = None,
    progress: WarmProgress | None = None,
    **pod: Any,
) -> WarmPodView:
    """Warm pod `number`; its lease (if any) is lease 1 unless `seq` says otherwise."""
    view = a_pod(number, 0, name=f"b-w{number}", **pod)
    if seq is None:
        seq = 1 if lease else 0
    return WarmPodView(view, number, seq, lease, progress)


def limits(**changes: Any) -> FleetLimits:
    fields: dict[str, Any] = {
        "total": 100,
        "parallelism": 4,
        "max_pending": 8,
        "max_creates": 200,
        "suspended": False,
        "keep_failed": False,
    }
    fields.update(changes)
    return FleetLimits(**fields)


# --------------------------------------------------------------------- leased attempts
def test_reported_attempts_carry_their_result_as_a_task_pod_would():
    pod = a_warm_pod(lease=((3, 0), (4, 1)), seq=2)
    bad = a_result(outcome="failed", exit_code=7, reason="NonZeroExit")
    reported = Reported(
        2,
        {
            (3, 0): AttemptResult(index=3, attempt=0, result=a_result()),
            (4, 1): AttemptResult(index=4, attempt=1, result=bad),
        },
        frozenset(),
    )
    good_view, bad_view = lease_attempts(pod, reported)
    assert (good_view.index, good_view.phase, good_view.tracked) == (3, "Succeeded", True)
    assert (bad_view.index, bad_view.attempt, bad_view.phase, bad_view.exit_code) == (
        4,
        1,
        "Failed",
        7,
    )


def test_attempts_a_report_leaves_out_did_not_run_and_are_a_disruption():
    pod = a_warm_pod(lease=((3, 0), (4, 0)), seq=1)
    reported = Reported(
        1, {(3, 0): AttemptResult(index=3, attempt=0, result=a_result())}, frozenset()
    )
    _, left_out = lease_attempts(pod, reported)
    assert (left_out.phase, left_out.disruption) == ("Failed", NOT_RUN)


def test_a_report_about_an_older_lease_says_nothing_about_the_current_one():
    pod = a_warm_pod(lease=((5, 0),), seq=3)
    stale = Reported(2, {(5, 0): AttemptResult(index=5, attempt=0, result=a_result())}, frozenset())
    (view,) = lease_attempts(pod, stale)
    assert view.phase == "Running"


def test_leased_attempts_of_a_live_pod_are_running_with_no_clock_for_the_planner():
    (view,) = lease_attempts(a_warm_pod(lease=((1, 0),)), None)
    assert view.running and view.started_at is None  # the worker enforces the deadline


def test_a_pod_that_failed_mid_lease_fails_the_running_attempt_and_requeues_the_rest():
    progress = WarmProgress(seq=1, done=((1, 0, 0, 2.5),), running=(2, 0))
    pod = a_warm_pod(
        lease=((1, 0), (2, 0), (3, 0)),
        seq=1,
        progress=progress,
        phase="Failed",
        exit_code=137,
        reason="OOMKilled",
    )
    done, crashed, never = lease_attempts(pod, None)
    assert (done.phase, done.finished_at) == ("Succeeded", 2.5)
    assert (crashed.phase, crashed.exit_code, crashed.reason, crashed.disruption) == (
        "Failed",
        137,
        "OOMKilled",
        None,
    )
    assert never.disruption == NOT_RUN


def test_a_pod_taken_away_mid_lease_blames_no_attempt():
    pod = a_warm_pod(
        lease=((1, 0), (2, 0)),
        progress=WarmProgress(seq=1, running=(1, 0)),
        phase="Failed",
        disruption="DeletionByTaintManager",
    )
    assert [v.disruption for v in lease_attempts(pod, None)] == ["DeletionByTaintManager"] * 2


def test_a_pod_that_failed_before_writing_any_record_blames_its_first_attempt():
    pod = a_warm_pod(lease=((8, 0), (9, 0)), phase="Failed", exit_code=1)
    first, second = lease_attempts(pod, None)
    assert (first.exit_code, first.disruption) == (1, None)
    assert second.disruption == NOT_RUN


def test_a_pod_the_operator_stopped_stops_its_attempts_uncounted():
    pod = a_warm_pod(lease=((1, 0),), phase="Failed", stop_reason=STOP_BATCH_ENDED)
    (view,) = lease_attempts(pod, None)
    assert view.stop_reason == STOP_BATCH_ENDED


# --------------------------------------------------------------------------- lease sizes
def test_lease_sizes_are_large_while_much_remains_and_single_tasks_at_the_tail():
    asking = [a_warm_pod(n) for n in range(4)]
    fleet = Fleet(asking, {p.name: 0 for p in asking})
    assert set(lease_sizes(fleet, 10_000).values()) == {MAX_LEASE_TASKS}
    assert list(lease_sizes(fleet, 80).values()) == [10, 9, 8, 7]  # ceil(left / 8)
    assert list(lease_sizes(fleet, 3).values()) == [1, 1, 1]


def test_only_pods_asking_about_their_current_lease_are_offered_work():
    busy = a_warm_pod(0, lease=((1, 0),))
    stale = a_warm_pod(1, lease=((2, 0),), seq=4)
    fleet = Fleet([busy, stale], {stale.name: 3})
    assert lease_sizes(fleet, 100) == {}


def test_an_asking_pods_lease_is_over_and_holds_no_task():
    busy, asking = a_warm_pod(0, lease=((1, 0),)), a_warm_pod(1, lease=((2, 0),))
    fleet = Fleet([busy, asking], {asking.name: 1})
    assert held(fleet, Ledger.of(a_status())) == {1}


# --------------------------------------------------------------------------- the fleet
def test_dispatched_attempts_are_split_over_asking_pods_in_their_sizes():
    a, b = a_warm_pod(0), a_warm_pod(1)
    fleet = Fleet([a, b], {a.name: 0, b.name: 0})
    plan = Plan(status=a_status(), create=[TaskAttempt(i, 0) for i in range(5)])
    out = plan_fleet(fleet, plan, {a.name: 3, b.name: 2}, limits(total=5))
    assert [t.index for t in out.leases[a.name].attempts] == [0, 1, 2]
    assert [t.index for t in out.leases[b.name].attempts] == [3, 4]
    assert out.leases[a.name].seq == 1


def test_a_pod_asking_when_every_unfinished_task_is_held_elsewhere_is_told_done():
    busy, idle = a_warm_pod(0, lease=((0, 0),)), a_warm_pod(1)
    fleet = Fleet([busy, idle], {idle.name: 0})
    status = a_status(succeeded=[1])
    out = plan_fleet(fleet, Plan(status=status), {}, limits(total=2))
    assert out.done == [idle.name]
    assert out.create == []


def test_a_pod_asking_while_a_retry_waits_out_its_backoff_keeps_waiting():
    idle = a_warm_pod(0)
    status = a_status(retries=[a_retry(0)])
    out = plan_fleet(Fleet([idle], {idle.name: 0}), Plan(status=status), {}, limits(total=1))
    assert out.done == [] and out.acknowledged == [idle.name]


def test_new_warm_pods_fill_parallelism_while_work_is_unheld():
    out = plan_fleet(Fleet([], {}), Plan(status=a_status()), {}, limits(parallelism=4))
    assert out.create == [0, 1, 2, 3]
    few = plan_fleet(Fleet([], {}), Plan(status=a_status()), {}, limits(total=2))
    assert few.create == [0, 1]  # no pod without work
    paced = plan_fleet(Fleet([], {}), Plan(status=a_status()), {}, limits(max_pending=3))
    assert paced.create == [0, 1, 2]


def test_a_replacement_pod_gets_a_number_never_used_by_a_pod_still_known():
    gone = a_warm_pod(2, phase="Failed", tracked=True)
    out = plan_fleet(Fleet([gone], {}, frozenset({0})), Plan(status=a_status()), {}, limits())
    assert out.create == [3, 4, 5]


def test_a_suspended_batch_sends_asking_pods_home_and_starts_none():
    idle = a_warm_pod(0)
    out = plan_fleet(
        Fleet([idle], {idle.name: 0}), Plan(status=a_status()), {}, limits(suspended=True)
    )
    assert out.done == [idle.name] and out.create == []


def test_a_finished_batch_stops_pods_that_are_not_asking():
    loading, asking = a_warm_pod(0), a_warm_pod(1)
    plan = Plan(status=a_status(), finished=True)
    out = plan_fleet(Fleet([loading, asking], {asking.name: 0}), plan, {}, limits())
    assert out.stop == [(loading, STOP_BATCH_ENDED)]
    assert out.done == [asking.name]


def test_an_ended_pod_is_released_only_once_every_leased_attempt_is_recorded():
    ended = a_warm_pod(0, lease=((0, 0), (1, 0)), phase="Succeeded")
    half = a_status(succeeded=[0])
    assert plan_fleet(Fleet([ended], {}), Plan(status=half), {}, limits()).release == []
    full = a_status(succeeded=[0], retries=[a_retry(1, failures=0)])
    out = plan_fleet(Fleet([ended], {}), Plan(status=full), {}, limits())
    assert out.release == [ended] and out.delete == [ended]


def test_a_failed_pod_is_kept_when_pod_cleanup_keeps_failed_pods():
    ended = a_warm_pod(0, phase="Failed")
    out = plan_fleet(Fleet([ended], {}), Plan(status=a_status()), {}, limits(keep_failed=True))
    assert out.release == [ended] and out.delete == []
