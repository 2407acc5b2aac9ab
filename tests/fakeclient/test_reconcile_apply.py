"""The reconcile's promises, against an in-memory client that can refuse, time out or be slow.

The planner decides; these tests check that `Reconciler.pass_once` carries a plan out in the
order that keeps those decisions safe when the API server misbehaves: nothing starts before
the operator has shown it can record outcomes, no outcome loses its pod before it is recorded,
a refused pod fails the batch with a message that says what to fix, and a failed pass loses no
task. Each test runs passes one by one (no timers), so it takes milliseconds.
"""

from __future__ import annotations

from typing import Any

import pytest

from gpubatch.api.status import ConditionType, GPUBatchStatus, Reason
from gpubatch.controller.metrics import Metrics
from gpubatch.controller.reconcile import BatchRuntime, Reconciler
from gpubatch.core.indexset import IndexSet
from gpubatch.core.planner import Limits, Plan
from gpubatch.core.podspec import BatchRef
from gpubatch.edges.kube import ApiError
from support.builders import a_raw_spec
from support.fakekube import FakeBatch, FakeKube, Fault, run_one_pass

pytestmark = pytest.mark.fakeclient


class Loop:
    """One batch's reconcile loop, driven pass by pass."""

    def __init__(self, tasks: int = 4, max_creates: int = 100, **spec: Any) -> None:
        self.kube = FakeKube()
        raw = a_raw_spec(tasks={"range": {"param": "shot", "stop": tasks}}, **spec)
        self.batch = FakeBatch(self.kube, raw)
        self.reconciler = Reconciler(
            self.kube, Metrics(), Limits(max_pending=100, max_creates_per_pass=max_creates)
        )
        self.restart()

    def restart(self) -> None:
        """A new operator process: nothing remembered, everything read back from the API."""
        self.runtime = BatchRuntime(ref=BatchRef(self.batch.name, self.batch.namespace, "uid"))

    def run_pass(self) -> Plan | None:
        return run_one_pass(self.reconciler, self.runtime, self.batch)

    def status(self) -> GPUBatchStatus:
        return GPUBatchStatus.model_validate(self.kube.status)

    def pods_of_tasks(self) -> set[int]:
        return {v.index for v in self.kube.views()}


def condition(status: GPUBatchStatus, type_: str) -> tuple[str, str] | None:
    found = next((c for c in status.conditions if c.type == type_), None)
    return None if found is None else (found.status, found.reason)


# ------------------------------------------------------------------- first write gates creates
def test_a_fresh_loop_writes_the_status_before_it_creates_any_pod():
    loop = Loop()
    loop.run_pass()

    first_write = loop.kube.called("patch_batch_status")[0]
    creates = loop.kube.called("create_pod")
    assert len(creates) == 4
    assert first_write.ended is not None
    assert all(c.began > first_write.ended for c in creates)


@pytest.mark.parametrize("fault", [Fault(status=403), Fault(status=503), Fault(timeout=True)])
def test_a_loop_whose_status_write_fails_creates_nothing_until_a_write_goes_through(fault):
    loop = Loop()
    loop.kube.inject("patch_batch_status", fault)

    with pytest.raises((ApiError, TimeoutError)):
        loop.run_pass()
    assert loop.kube.called("create_pod") == []

    loop.run_pass()
    assert loop.pods_of_tasks() == {0, 1, 2, 3}


def test_after_a_refused_write_the_next_pass_writes_before_it_creates_again():
    loop = Loop(tasks=6, max_creates=2)
    loop.run_pass()  # tasks 0, 1
    loop.kube.refuse("patch_batch_status", 500)
    loop.kube.finish(loop.kube.views()[0].name)
    with pytest.raises(ApiError):
        loop.run_pass()
    created_before = len(loop.kube.called("create_pod"))

    loop.run_pass()
    write = loop.kube.called("patch_batch_status")[-1]
    later_creates = loop.kube.called("create_pod")[created_before:]
    assert later_creates
    assert all(c.began > (write.ended or 0) for c in later_creates)


# ------------------------------------------------------------ outcomes recorded before release
def test_a_finished_pod_keeps_its_finalizer_until_a_status_write_records_it():
    loop = Loop(tasks=1)
    loop.run_pass()
    (pod,) = loop.kube.views()
    loop.kube.finish(pod.name)
    loop.kube.refuse("patch_batch_status", 500)

    with pytest.raises(ApiError):
        loop.run_pass()
    assert loop.kube.tracked(pod.name)
    assert IndexSet.parse(loop.status().succeeded_indexes) == IndexSet()

    loop.run_pass()
    write = loop.kube.called("patch_batch_status")[-1]
    (release,) = loop.kube.called("remove_pod_finalizer")
    assert release.began > (write.ended or 0)
    assert list(IndexSet.parse(loop.status().succeeded_indexes)) == [0]
    assert pod.name not in loop.kube.pods  # released, then cleaned up (podCleanup: Delete)


def test_a_slow_status_write_delays_releases_but_not_the_next_creates():
    loop = Loop(tasks=3, max_creates=1)
    loop.run_pass()  # task 0; the status is now known to be writable
    (pod,) = loop.kube.views()
    loop.kube.finish(pod.name)
    loop.kube.inject("patch_batch_status", Fault(delay=0.2))

    loop.run_pass()
    write = loop.kube.called("patch_batch_status")[-1]
    create = loop.kube.called("create_pod")[-1]
    (release,) = loop.kube.called("remove_pod_finalizer")
    assert create.began < (write.ended or 0)  # task 1 did not wait for the slow write
    assert release.began > (write.ended or 0)


# --------------------------------------------------------------------- refused pods, lost tasks
def test_a_pod_the_api_server_refuses_fails_the_batch_as_invalid_spec():
    loop = Loop()
    message = 'Pod "clips-0-0" is invalid: spec.containers[0].image: Required value'
    loop.kube.refuse("create_pod", 422, times=4, message=message)

    loop.run_pass()  # the refusal is an answer, not a failed pass
    loop.run_pass()

    status = loop.status()
    assert condition(status, ConditionType.FAILED) == ("True", Reason.INVALID_SPEC)
    failed = next(c for c in status.conditions if c.type == ConditionType.FAILED)
    assert failed.message == f"the API server refused the task pod: {message}; fix spec.template"
    assert [e.reason for e in loop.batch.events] == ["Started", Reason.INVALID_SPEC]
    assert loop.kube.pods == {}
    assert len(loop.kube.called("create_pod")) == 4  # and no more after the refusal


def test_a_quota_refusal_is_a_failed_pass_not_an_invalid_spec():
    loop = Loop(tasks=1)
    loop.kube.refuse("create_pod", 403, message="exceeded quota: gpu, requested: 1")

    with pytest.raises(ApiError):
        loop.run_pass()
    loop.run_pass()

    assert loop.pods_of_tasks() == {0}
    assert condition(loop.status(), ConditionType.FAILED) == ("False", Reason.DISPATCHING)


@pytest.mark.parametrize("fault", [Fault(status=500), Fault(timeout=True)])
def test_a_failed_create_loses_no_task_the_cursor_had_passed(fault):
    loop = Loop(tasks=6, max_creates=3)
    loop.run_pass()  # tasks 0, 1, 2
    loop.kube.inject("create_pod", fault)  # the first create of the next pass fails
    with pytest.raises((ApiError, TimeoutError)):
        loop.run_pass()  # meant 3, 4, 5; 3 was not created
    assert loop.pods_of_tasks() == {0, 1, 2, 4, 5}

    loop.run_pass()
    assert loop.pods_of_tasks() == {0, 1, 2, 3, 4, 5}


def test_a_restarted_operator_creates_pods_it_cannot_see_yet_again_harmlessly():
    loop = Loop(tasks=2)
    loop.run_pass()
    loop.restart()
    loop.batch.hidden = set(loop.kube.pods)  # the new process's pod index is still empty

    loop.run_pass()  # both creates answer 409 AlreadyExists: not an error
    assert len(loop.kube.pods) == 2
    assert len(loop.kube.called("create_pod")) == 4


# ------------------------------------------------------------------------ the rest of the plan
def test_a_spec_that_does_not_parse_fails_the_batch_and_creates_nothing():
    loop = Loop()
    loop.batch.spec = {"tasks": {"range": {"param": "shot", "stop": 3}}}  # no template

    loop.run_pass()

    assert condition(loop.status(), ConditionType.FAILED) == ("True", Reason.INVALID_SPEC)
    assert [e.reason for e in loop.batch.events] == [Reason.INVALID_SPEC]
    assert loop.kube.called("create_pod") == []


def test_colliding_outputs_fail_the_batch_as_invalid_spec_and_create_nothing():
    loop = Loop()
    axes = {"shot": {"range": {"stop": 3}}, "scale": {"values": ["1x", "2x"]}}
    loop.batch.spec = {**a_raw_spec(), "tasks": {"matrix": axes}}  # outputs name only {shot}

    loop.run_pass()

    status = loop.status()
    assert condition(status, ConditionType.FAILED) == ("True", Reason.INVALID_SPEC)
    failed = next(c for c in status.conditions if c.type == ConditionType.FAILED)
    assert "tasks 0 and 3 both write output '/out/0.npy'" in failed.message
    assert [e.reason for e in loop.batch.events] == [Reason.INVALID_SPEC]
    assert loop.kube.called("create_pod") == []


def test_a_batch_with_a_failed_task_ends_failed_and_still_honours_its_ttl():
    loop = Loop(tasks=1, ttlSecondsAfterFinished=0, retry={"limit": 0})
    loop.run_pass()
    loop.kube.finish(loop.kube.views()[0].name, exit_code=3)

    loop.run_pass()

    assert condition(loop.status(), ConditionType.FAILED) == ("True", Reason.TASKS_FAILED)
    assert loop.kube.batch_deleted


def test_a_finished_batch_past_its_ttl_deletes_itself():
    loop = Loop(tasks=1, ttlSecondsAfterFinished=0)
    loop.run_pass()
    loop.kube.finish(loop.kube.views()[0].name)

    loop.run_pass()

    assert condition(loop.status(), ConditionType.COMPLETE) == ("True", Reason.ALL_TASKS_FINISHED)
    assert loop.kube.batch_deleted
    (write_done,) = [c for c in loop.kube.called("patch_batch_status") if c.ended][-1:]
    assert loop.kube.called("delete_batch")[0].began > (write_done.ended or 0)


def test_a_running_pod_past_its_deadline_is_annotated_with_why_before_it_is_deleted():
    loop = Loop(tasks=1, taskDeadlineSeconds=1)
    loop.run_pass()
    (pod,) = loop.kube.views()
    loop.kube.schedule(pod.name)
    loop.kube.pods[pod.name]["status"]["startTime"] = "2020-01-01T00:00:00Z"

    loop.run_pass()

    (annotate,) = loop.kube.called("annotate_pod")
    (delete,) = loop.kube.called("delete_pod")
    assert delete.began > (annotate.ended or 0)
    assert loop.kube.pods[pod.name]["metadata"]["deletionTimestamp"]


def test_a_batch_being_deleted_is_left_to_the_delete_handler():
    loop = Loop()
    loop.batch.deleting = True

    assert loop.run_pass() is None
    assert loop.kube.calls == []
