"""Warm batches on a cluster: warm pods lease their tasks from the operator, and every task keeps
the promises a task pod gives (outcome recorded before anything is acknowledged or released,
never in two places, retries and failures counted per task, a crash mid-lease loses nothing).

The reconcile runs pass by pass against the in-memory client; lease requests go through the
real handler (`controller.warm.WarmLeases`), whose answers come from those passes. Without a
lease endpoint a Warm batch is refused (Failed/InvalidSpec), not run one pod per task.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gpubatch.api.lease import (
    ANNOTATION_LEASE,
    AttemptResult,
    LeaseRequest,
    LeaseResponse,
    WarmProgress,
    parse_lease,
)
from gpubatch.api.result import Outcome, TaskResult
from gpubatch.api.result import Reason as ResultReason
from gpubatch.api.status import ConditionType, GPUBatchStatus, Reason
from gpubatch.controller.leaseserver import PodIdentity
from gpubatch.controller.metrics import Metrics
from gpubatch.controller.reconcile import BatchRuntime, Reconciler
from gpubatch.controller.warm import LeaseRefused, WarmLeases
from gpubatch.core.indexset import IndexSet
from gpubatch.core.planner import WARM_NOT_ON_CLUSTER, Limits
from gpubatch.core.podspec import BatchRef, LeaseEndpoint
from support.builders import a_raw_spec
from support.fakekube import FakeBatch, FakeKube, run_one_pass

pytestmark = pytest.mark.fakeclient

WARM_CONTAINER = {"name": "task", "image": "registry.example.com/task:1", "command": ["serve"]}
ENDPOINT = LeaseEndpoint("https://gpubatch-operator.gpubatch.svc:8443/v1/lease", "PEM")


def ok(seconds: float = 1.0) -> TaskResult:
    return TaskResult(
        outcome=Outcome.SUCCEEDED,
        exit_code=0,
        reason=ResultReason.COMPLETED,
        duration_seconds=seconds,
    )


def failed(code: int = 1) -> TaskResult:
    return TaskResult(
        outcome=Outcome.FAILED,
        exit_code=code,
        reason=ResultReason.NON_ZERO_EXIT,
        duration_seconds=1,
    )


class WarmLoop:
    """One warm batch's reconcile loop, driven pass by pass, and its lease handler."""

    def __init__(self, tasks: int = 10, parallelism: int = 2, **spec: Any) -> None:
        self.kube = FakeKube()
        raw = a_raw_spec(
            tasks={"range": {"param": "shot", "stop": tasks}},
            parallelism=parallelism,
            worker={"mode": "Warm", "wrap": True},
            template={"spec": {"containers": [WARM_CONTAINER]}},
            **spec,
        )
        self.batch = FakeBatch(self.kube, raw)
        limits = Limits(max_pending=100, max_creates_per_pass=100)
        self.reconciler = Reconciler(self.kube, Metrics(), limits, ENDPOINT)
        self.restart()

    def restart(self) -> None:
        """A new operator process: nothing remembered, everything read back from the API."""
        self.runtime = BatchRuntime(ref=BatchRef(self.batch.name, self.batch.namespace, "uid"))
        self.leases = WarmLeases(
            lambda uid: self.runtime if uid == "uid" else None,
            lambda uid: self.batch.warm_pods(),
            long_poll_seconds=0.5,
        )

    def run_pass(self) -> None:
        run_one_pass(self.reconciler, self.runtime, self.batch)

    def ask(self, pod: str, seq: int = 0, **request: Any) -> LeaseResponse:
        """A warm pod's request, answered by the pass it wakes (or by the long poll's end)."""

        async def asked() -> LeaseResponse:
            identity = PodIdentity(self.batch.namespace, pod, "pod-uid")
            message = LeaseRequest(batch_uid="uid", seq=seq, **request)
            answer = asyncio.create_task(self.leases.handle_lease(identity, message))
            await asyncio.sleep(0)
            try:
                await self.reconciler.pass_once(self.runtime, self.batch)
            finally:
                self.runtime.wakeup.cancel()
            return await answer

        return asyncio.run(asked())

    def warm_pods(self) -> list[str]:
        return sorted(v.name for v in self.kube.warm_views())

    def lease_on(self, pod: str) -> tuple[int, tuple[tuple[int, int], ...]]:
        return parse_lease(self.kube.pods[pod]["metadata"]["annotations"].get(ANNOTATION_LEASE))

    def status(self) -> GPUBatchStatus:
        return GPUBatchStatus.model_validate(self.kube.status)

    def started(self) -> list[str]:
        self.run_pass()
        pods = self.warm_pods()
        for name in pods:
            self.kube.schedule(name)
        return pods


def report(lease: LeaseResponse, result: TaskResult | None = None) -> dict[str, Any]:
    return {
        "seq": lease.seq,
        "results": tuple(
            AttemptResult(index=t.index, attempt=t.attempt, result=result or ok())
            for t in lease.tasks
        ),
    }


# ------------------------------------------------------------------------------- warm pods
def test_a_warm_batch_runs_parallelism_warm_pods_and_no_pod_per_task():
    loop = WarmLoop(tasks=10, parallelism=3)
    loop.run_pass()

    assert loop.warm_pods() == ["clips-w0", "clips-w1", "clips-w2"]
    assert loop.kube.views() == []  # no task pod
    pod = loop.kube.pods["clips-w0"]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["gpubatch-worker", "--warm", "--lease", "--", "serve"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GPUBATCH_LEASE_URL"] == ENDPOINT.url
    assert env["GPUBATCH_BATCH_UID"] == "uid"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (volume,) = pod["spec"]["volumes"]
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"]
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_a_warm_batch_without_a_lease_endpoint_is_refused_and_creates_nothing():
    kube = FakeKube()
    raw = a_raw_spec(worker={"mode": "Warm"}, template={"spec": {"containers": [WARM_CONTAINER]}})
    batch = FakeBatch(kube, raw)
    reconciler = Reconciler(kube, Metrics(), Limits(max_pending=100, max_creates_per_pass=100))
    runtime = BatchRuntime(ref=BatchRef(batch.name, batch.namespace, "uid"))

    async def one_pass() -> None:
        try:
            await reconciler.pass_once(runtime, batch)
        finally:
            runtime.wakeup.cancel()

    asyncio.run(one_pass())

    assert kube.called("create_pod") == []
    status = GPUBatchStatus.model_validate(kube.status)
    failed_condition = next(c for c in status.conditions if c.type == ConditionType.FAILED)
    assert (failed_condition.status, failed_condition.reason) == ("True", Reason.INVALID_SPEC)
    assert failed_condition.message == WARM_NOT_ON_CLUSTER
    assert [(e.type, e.reason) for e in batch.events] == [("Warning", "InvalidSpec")]


# ------------------------------------------------------------------------------- leases
def test_a_lease_is_recorded_on_the_pod_before_the_pod_is_told_and_shrinks_as_work_drains():
    loop = WarmLoop(tasks=10, parallelism=2)
    first, _ = loop.started()

    lease = loop.ask(first)

    assert lease.seq == 1
    assert [t.index for t in lease.tasks] == [0, 1, 2]  # ceil(10 / (2 x 2 pods))
    assert lease.tasks[0].environ["GPUBATCH_TASK_INDEX"] == "0"
    assert loop.lease_on(first) == (1, ((0, 0), (1, 0), (2, 0)))
    loop.run_pass()  # the pod index now shows the lease
    assert loop.status().counts.running == 3


def test_reported_results_are_recorded_before_the_next_lease_is_answered():
    loop = WarmLoop(tasks=4, parallelism=1)
    (pod,) = loop.started()
    lease = loop.ask(pod)
    assert [t.index for t in lease.tasks] == [0, 1]

    following = loop.ask(pod, **report(lease))

    status = loop.status()
    assert IndexSet.parse(status.succeeded_indexes) == IndexSet.parse("0-1")
    assert [t.index for t in following.tasks] == [2, 3]
    write = loop.kube.called("patch_batch_status")[-1]
    annotate = loop.kube.called("annotate_pod")[-1]
    assert write.ended is not None and annotate.began > write.ended


def test_a_batch_whose_every_task_finished_tells_its_pods_done_and_releases_them():
    loop = WarmLoop(tasks=2, parallelism=1)
    (pod,) = loop.started()
    first = loop.ask(pod)
    last = loop.ask(pod, **report(first))
    end = loop.ask(pod, **report(last))

    assert [len(first.tasks), len(last.tasks)] == [1, 1]
    assert end.done
    assert condition(loop.status(), ConditionType.COMPLETE) == ("True", Reason.ALL_TASKS_FINISHED)
    loop.kube.finish(pod)
    loop.run_pass()
    assert not loop.kube.tracked(pod)


def test_a_repeated_request_about_an_older_lease_gets_the_lease_recorded_on_the_pod():
    loop = WarmLoop(tasks=10, parallelism=1)
    (pod,) = loop.started()
    lease = loop.ask(pod)

    again = loop.ask(pod, seq=0)  # the first answer was lost on the way

    assert again.seq == lease.seq
    assert [t.index for t in again.tasks] == [t.index for t in lease.tasks]
    assert loop.lease_on(pod)[0] == lease.seq


def test_a_failed_task_in_a_lease_is_retried_alone_and_counted_against_its_retry_limit():
    loop = WarmLoop(tasks=4, parallelism=1, retry={"limit": 1, "backoffSeconds": 0})
    (pod,) = loop.started()
    lease = loop.ask(pod)
    results = (
        AttemptResult(index=0, attempt=0, result=failed(3)),
        AttemptResult(index=1, attempt=0, result=ok()),
    )

    retry = loop.ask(pod, seq=lease.seq, results=results)

    status = loop.status()
    assert IndexSet.parse(status.succeeded_indexes) == IndexSet.parse("1")
    assert [(r.index, r.attempts, r.failures) for r in status.retries] == [(0, 1, 1)]
    assert next((t.index, t.attempt) for t in retry.tasks) == (0, 1)  # retries first


def test_attempts_that_did_not_run_go_back_uncounted():
    loop = WarmLoop(tasks=3, parallelism=1)
    (pod,) = loop.started()
    lease = loop.ask(pod)
    assert len(lease.tasks) == 2

    again = loop.ask(
        pod,
        seq=lease.seq,
        results=(AttemptResult(index=0, attempt=0, result=failed(137)),),
        unrun=((1, 0),),
    )

    retries = {r.index: (r.attempts, r.failures) for r in loop.status().retries}
    assert retries == {0: (1, 1), 1: (1, 0)}
    assert {(t.index, t.attempt) for t in again.tasks} >= {(1, 1)}


# ------------------------------------------------------------------------- crashes, restarts
def test_a_pod_that_dies_mid_lease_keeps_its_finished_tasks_and_fails_only_the_running_one():
    loop = WarmLoop(tasks=10, parallelism=1, retry={"limit": 3, "backoffSeconds": 0})
    (pod,) = loop.started()
    lease = loop.ask(pod)
    keys = [(t.index, t.attempt) for t in lease.tasks]
    assert len(keys) >= 3
    progress = WarmProgress(seq=lease.seq, done=((*keys[0], 0, 1.5),), running=keys[1])

    loop.kube.finish(pod, exit_code=137, message=progress.encode())
    loop.run_pass()

    status = loop.status()
    assert keys[0][0] in IndexSet.parse(status.succeeded_indexes)
    retries = {r.index: (r.attempts, r.failures) for r in status.retries}
    assert retries[keys[1][0]] == (1, 1)  # the running one: counted
    assert all(retries[index] == (1, 0) for index, _ in keys[2:])  # never reached: uncounted
    assert not loop.kube.tracked(pod)  # every leased attempt recorded: released
    assert "clips-w1" in loop.warm_pods()  # work remains: a fresh warm pod


def test_a_restarted_operator_holds_leased_tasks_as_running_and_records_a_repeated_report_once():
    loop = WarmLoop(tasks=6, parallelism=1)
    (pod,) = loop.started()
    lease = loop.ask(pod)

    loop.restart()
    loop.run_pass()
    assert loop.status().counts.running == len(lease.tasks)
    assert loop.kube.views() == [] and loop.warm_pods() == [pod]

    following = loop.ask(pod, **report(lease))
    loop.restart()
    repeated = loop.ask(pod, **report(lease))  # the answer was lost: the same report again

    assert IndexSet.parse(loop.status().succeeded_indexes) == IndexSet(t.index for t in lease.tasks)
    assert repeated.seq == following.seq
    assert [t.index for t in repeated.tasks] == [t.index for t in following.tasks]
    done = {t.index for t in lease.tasks}
    assert not done & {t.index for t in following.tasks}


def test_results_are_not_acknowledged_while_the_status_cannot_be_written():
    loop = WarmLoop(tasks=4, parallelism=1)
    (pod,) = loop.started()
    lease = loop.ask(pod)
    loop.kube.refuse("patch_batch_status", 500)

    with pytest.raises((LeaseRefused, Exception)) as refused:
        loop.ask(pod, **report(lease))

    assert not isinstance(refused.value, AssertionError)
    assert IndexSet.parse(loop.status().succeeded_indexes) == IndexSet()
    assert loop.lease_on(pod)[0] == lease.seq  # no new lease was handed out


def condition(status: GPUBatchStatus, type_: str) -> tuple[str, str] | None:
    found = next((c for c in status.conditions if c.type == type_), None)
    return None if found is None else (found.status, found.reason)


# ------------------------------------------------------------------------------ stuck pods
def test_warm_pods_stuck_on_a_bad_image_are_reported_given_up_and_counted():
    loop = WarmLoop(tasks=10, parallelism=3, stuck={"giveUpSeconds": 60, "maxAttempts": 3})
    loop.run_pass()
    pods = loop.warm_pods()
    for name in pods:
        loop.kube.wait_on(name, "ErrImagePull", "pull access denied")
    loop.run_pass()

    stuck = next(c for c in loop.status().conditions if c.type == ConditionType.TASKS_STUCK)
    assert (stuck.status, stuck.reason) == ("True", "ErrImagePull")
    assert ("Warning", "TasksStuck") in [(e.type, e.reason) for e in loop.batch.events]
    assert loop.warm_pods() == pods  # no more pods start while they are stuck

    for name in pods:
        loop.kube.wait_on(name, "ErrImagePull", "pull access denied", age=120)
    loop.run_pass()
    stopped = {c.name for c in loop.kube.called("annotate_pod")}
    assert stopped == set(pods)
    for name in pods:
        loop.kube.finish(name, exit_code=137)
    loop.run_pass()

    status = loop.status()
    assert status.stuck is not None and status.stuck.given_up == 3
    failed_condition = next(c for c in status.conditions if c.type == ConditionType.FAILED)
    assert (failed_condition.status, failed_condition.reason) == ("True", Reason.TASKS_STUCK)
    assert not any(loop.kube.tracked(name) for name in pods)


def test_a_pod_being_deleted_has_its_report_recorded_and_is_told_done():
    loop = WarmLoop(tasks=10, parallelism=1)
    (pod,) = loop.started()
    lease = loop.ask(pod)
    loop.kube.pods[pod]["metadata"]["deletionTimestamp"] = "2026-11-30T00:00:00Z"

    answer = loop.ask(pod, **report(lease))

    assert answer.done
    succeeded = IndexSet.parse(loop.status().succeeded_indexes)
    assert succeeded == IndexSet(t.index for t in lease.tasks)
