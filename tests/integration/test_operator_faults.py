"""The operator survives being killed, and a task survives losing its node."""

from __future__ import annotations

import contextlib
import random
import time
import uuid

import pytest

from support.batches import Batches, PodMonitor, batch, pods_with_finalizer
from support.operator_process import OperatorProcess
from support.waiting import wait_for
from testbed import GpuNodePool, Testbed

pytestmark = pytest.mark.integration


@pytest.fixture
def batches(testbed: Testbed, namespace: str, running_operator: OperatorProcess) -> Batches:
    return Batches(testbed, namespace)


def test_sigkilled_operator_loses_nothing_and_never_runs_a_task_twice(
    batches: Batches, running_operator: OperatorProcess
):
    rng = random.Random(7)
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(
            batch("sturdy", tasks={"range": {"stop": 300}}, duration="300ms", parallelism=16)
        )
        for _ in range(5):
            time.sleep(rng.uniform(0.5, 2.5))
            running_operator.kill()
            time.sleep(rng.uniform(0.0, 1.0))
            running_operator.start()
        batches.wait_condition("sturdy", "Complete", timeout=240)
    status = batches.status("sturdy")
    assert status["counts"]["succeeded"] == 300
    assert status["succeededIndexes"] == "0-299"
    assert status["failedIndexes"] == "" and status["recentFailures"] == []
    assert monitor.violations == []
    # Every task ran exactly once: one attempt-0 pod per task, never a second attempt.
    assert monitor.created == {f"sturdy-{i}-0" for i in range(300)}
    wait_for(lambda: not pods_with_finalizer(batches), timeout=60, what="finalizers released")
    wait_for(lambda: not batches.pods(), timeout=60, what="succeeded pods cleaned up")


def test_node_deleted_mid_task_is_retried_without_counting(batches: Batches):
    model = f"LOSSY-{uuid.uuid4().hex[:6]}"
    pool = GpuNodePool(name=model.lower(), count=2, gpus=2, model=model)
    nodes = batches.testbed.create_nodes([pool])
    try:
        with PodMonitor(batches.testbed, batches.namespace) as monitor:
            # Long enough that the pod garbage collector (about 40-60 s after the node goes,
            # over 75 s seen on a busy machine) acts before the simulated task would have
            # finished on the vanished node.
            batches.create(
                batch(
                    "survivor",
                    tasks={"range": {"stop": 2}},
                    duration="150s",
                    gpuModels=[model],
                    retry={"limit": 0},
                )
            )
            running = wait_for(
                lambda: [p for p in batches.pods() if p.status.phase == "Running"] or None,
                timeout=60,
                what="a task running",
            )
            lost_node = running[0].spec.node_name
            running = [p for p in running if p.spec.node_name == lost_node]
            batches.testbed.delete_node(lost_node)
            batches.wait_condition("survivor", "Complete", timeout=420)
        status = batches.status("survivor")
        # retry.limit is 0: had the lost attempt counted, the task would have failed.
        assert status["counts"]["succeeded"] == 2 and status["counts"]["failed"] == 0
        lost = {int(p.metadata.labels["gpubatch.io/task-index"]) for p in running}
        assert lost and lost <= {f["index"] for f in status["recentFailures"]}
        assert all(
            f["reason"] not in ("Error", "DeadlineExceeded") for f in status["recentFailures"]
        )
        assert monitor.violations == []
        assert {f"survivor-{i}-1" for i in lost} <= monitor.created
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):  # one of them is already gone
                batches.testbed.delete_node(node)
