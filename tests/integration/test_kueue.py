"""Admission through Kueue's plain-pod integration, with Kueue's real manager on the test bed:
quota is never exceeded, the batch shows where it waits, and Kueue's eviction of a task pod is a
disruption (retried, not counted). A batch without a queue label is untouched by Kueue."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from gpubatch.api.names import LABEL_KUEUE_QUEUE
from support.batches import Batches, PodMonitor, batch, warm_batch
from support.operator_process import OperatorProcess
from support.waiting import wait_for
from testbed import Testbed
from testbed.kueue import ADMISSION_GATE, Kueue, Queue
from testbed.warmsim import WarmFleet

pytestmark = pytest.mark.integration

QUOTA = 3  # GPUs in the ClusterQueue; the test bed's nodes have 16


@pytest.fixture
def batches(testbed: Testbed, namespace: str, running_operator: OperatorProcess) -> Batches:
    return Batches(testbed, namespace)


@pytest.fixture
def queue(kueue: Kueue, namespace: str) -> Queue:
    """A ClusterQueue of its own per test (quota is cluster-wide) and its LocalQueue here."""
    made = Queue(name=f"q-{uuid.uuid4().hex[:6]}", gpus=QUOTA)
    kueue.create_queue(made, namespace)
    return made


def queued(name: str, queue: Queue, **spec: Any) -> dict[str, Any]:
    body = batch(name, **spec)
    body["metadata"]["labels"] = {LABEL_KUEUE_QUEUE: queue.name}
    return body


def wait_for_admission(batches: Batches, name: str) -> dict[str, Any]:
    """Wait until batch `name` shows TasksStuck=False/WaitingForAdmission; return the batch."""
    return batches.wait_until(
        name,
        lambda obj: any(
            c["type"] == "TasksStuck" and c["reason"] == "WaitingForAdmission"
            for c in (obj.get("status") or {}).get("conditions") or []
        ),
        what="the batch shown waiting for admission",
        timeout=60,
    )


def test_a_batch_larger_than_its_quota_never_runs_more_than_the_quota(
    batches: Batches, queue: Queue
):
    tasks = 4 * QUOTA
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(queued("quota", queue, tasks={"range": {"stop": tasks}}, duration="2s"))
        waiting = wait_for_admission(batches, "quota")
        batches.wait_condition("quota", "Complete", timeout=180)
    conditions = waiting["status"]["conditions"]
    message = next(c for c in conditions if c["type"] == "TasksStuck")["message"]
    assert f"LocalQueue {queue.name}" in message
    assert batches.status("quota")["counts"]["succeeded"] == tasks
    assert monitor.max_running <= QUOTA
    assert monitor.violations == []
    assert len(monitor.created) == tasks  # admission waits are not attempts
    stalled = batches.condition("quota", "Stalled")
    assert stalled is not None and stalled["status"] == "False"


def test_warm_pods_are_admitted_by_kueue_and_never_exceed_the_quota(batches: Batches, queue: Queue):
    """Warm pods hold their GPU while they lease tasks, so Kueue admits the pods, not tasks:
    with parallelism above the quota, the pods past it wait gated and the batch still ends."""
    body = warm_batch("warmq", tasks={"range": {"stop": 30}}, parallelism=2 * QUOTA)
    body["metadata"]["labels"] = {LABEL_KUEUE_QUEUE: queue.name}
    with (
        WarmFleet(batches.testbed) as fleet,
        PodMonitor(batches.testbed, batches.namespace) as monitor,
    ):
        batches.create(body)
        waiting = wait_for_admission(batches, "warmq")
        batches.wait_condition("warmq", "Complete", timeout=300)
        uid = waiting["metadata"]["uid"]
        assert fleet.log.acknowledged_successes(uid) == dict.fromkeys(range(30), 1)
        assert fleet.log.concurrent_runs(uid) == []
    assert batches.status("warmq")["counts"]["succeeded"] == 30
    assert 0 < monitor.max_warm_running <= QUOTA


def test_a_batch_without_a_queue_label_is_not_gated(batches: Batches, queue: Queue):
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(batch("free", tasks={"range": {"stop": 8}}, duration="3s"))
        batches.wait_condition("free", "Complete", timeout=120)
    assert monitor.max_running > QUOTA  # the queue's quota does not apply to it
    assert batches.condition("free", "TasksStuck") is None


def test_a_task_pod_evicted_by_kueue_is_retried_without_counting_a_failure(
    batches: Batches, queue: Queue
):
    body = queued("evicted", queue, tasks={"range": {"stop": 2}}, duration="15s")
    body["spec"]["retry"] = {"limit": 0}  # a counted failure would fail the task at once
    batches.create(body)
    first = wait_for(lambda: _running_pod(batches, 0), timeout=60, what="task 0 running")
    # Deactivating the pod's Workload makes Kueue evict it: the same Stop path as preemption
    # (Kueue marks the pod TerminationTarget, then deletes it).
    workload = _workload_of(batches, first)
    batches.testbed.kubectl(
        "patch",
        "workload",
        workload,
        "-n",
        batches.namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"active": False}}),
    )
    wait_for(lambda: _running_pod(batches, 0, not_named=first), timeout=60, what="a retry")
    batches.wait_finished("evicted", timeout=120)
    complete = batches.condition("evicted", "Complete")
    assert complete is not None and complete["status"] == "True"
    # retry.limit 0: had the eviction counted as a failure, task 0 would have failed for good.
    assert batches.status("evicted")["counts"] == {
        "total": 2,
        "pending": 0,
        "running": 0,
        "succeeded": 2,
        "failed": 0,
        "skipped": 0,
    }


def _running_pod(batches: Batches, index: int, not_named: str | None = None) -> str | None:
    for pod in batches.pods():
        labels = pod.metadata.labels or {}
        gated = ADMISSION_GATE in {g.name for g in pod.spec.scheduling_gates or []}
        if (
            labels.get("gpubatch.io/task-index") == str(index)
            and pod.metadata.name != not_named
            and pod.status.phase == "Running"
            and not gated
            and pod.metadata.deletion_timestamp is None
        ):
            return str(pod.metadata.name)
    return None


def _workload_of(batches: Batches, pod: str) -> str:
    out = batches.testbed.kubectl("get", "workloads", "-n", batches.namespace, "-o", "json")
    for item in json.loads(out.stdout)["items"]:
        owners = item["metadata"].get("ownerReferences") or []
        if any(o["kind"] == "Pod" and o["name"] == pod for o in owners):
            return str(item["metadata"]["name"])
    raise AssertionError(f"no Workload owned by pod {pod}")


def test_the_default_queue_admits_a_batch_that_names_none(
    testbed: Testbed,
    namespace: str,
    kueue: Kueue,
    queue: Queue,
    no_operator: None,
    tmp_path: Path,
):
    """--default-queue-name (the chart's kueue.defaultQueueName): an operator of its own,
    the session one paused, so only this one reconciles."""
    operator = OperatorProcess(
        testbed=testbed,
        log_path=tmp_path / "operator.log",
        extra_args=[f"--default-queue-name={queue.name}"],
    )
    operator.start()
    try:
        batches = Batches(testbed, namespace)
        with PodMonitor(testbed, namespace) as monitor:
            batches.create(batch("unlabelled", tasks={"range": {"stop": 8}}, duration="2s"))
            batches.wait_condition("unlabelled", "Complete", timeout=120)
    finally:
        operator.stop()
    # Unqueued, 8 tasks run at once on the test bed's 16 GPUs (the test above shows it).
    assert monitor.max_running <= QUOTA
    assert batches.status("unlabelled")["counts"]["succeeded"] == 8
