"""A batch admitted whole by a Kueue Workload (MultiKueue's copy on a worker cluster), against
the in-memory client: nothing starts before the Workload is admitted, never more pods than it
was admitted for, its pods are not queued again, and the Workload is marked Finished only
after the batch's final status is written (so MultiKueue copies a final status back).
"""

from __future__ import annotations

from typing import Any

import pytest

from gpubatch.api.names import LABEL_KUEUE_PREBUILT_WORKLOAD, LABEL_KUEUE_QUEUE
from gpubatch.api.status import ConditionType
from gpubatch.controller.metrics import Metrics
from gpubatch.controller.reconcile import BatchRuntime, Reconciler
from gpubatch.core.planner import Limits
from gpubatch.core.podspec import batch_ref
from gpubatch.edges.kube import ApiError
from support.builders import a_raw_spec
from support.fakekube import FakeBatch, FakeKube, run_one_pass

pytestmark = pytest.mark.fakeclient

WORKLOAD = "gpubatch-clips"
LABELS = {LABEL_KUEUE_PREBUILT_WORKLOAD: WORKLOAD, LABEL_KUEUE_QUEUE: "gpus"}


class Loop:
    """One MultiKueue-admitted batch's reconcile loop, driven pass by pass."""

    def __init__(self, tasks: int = 6, **spec: Any) -> None:
        self.kube = FakeKube()
        raw = a_raw_spec(tasks={"range": {"param": "shot", "stop": tasks}}, **spec)
        self.batch = FakeBatch(self.kube, raw)
        self.reconciler = Reconciler(
            self.kube, Metrics(), Limits(max_pending=100, max_creates_per_pass=100)
        )
        self.restart()

    def restart(self) -> None:
        ref = batch_ref(self.batch.name, self.batch.namespace, self.batch.uid, LABELS, "default")
        self.runtime = BatchRuntime(ref=ref)

    def run_pass(self) -> None:
        run_one_pass(self.reconciler, self.runtime, self.batch)

    def finish_all(self, exit_code: int = 0) -> None:
        for view in self.kube.views():
            if not view.terminal:
                self.kube.finish(view.name, exit_code=exit_code)

    def finished_condition(self) -> dict[str, Any] | None:
        conditions = self.kube.workloads[WORKLOAD].get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Finished"), None)


def test_nothing_starts_until_the_workload_is_admitted():
    loop = Loop(parallelism=4)
    loop.run_pass()
    loop.kube.workloads[WORKLOAD] = {"metadata": {"name": WORKLOAD}, "status": {}}
    loop.run_pass()

    assert loop.kube.called("create_pod") == []
    assert len(loop.kube.called("get_workload")) == 2  # looked again: not admitted yet

    loop.kube.admit_workload(WORKLOAD, pods=4)
    loop.run_pass()
    assert len(loop.kube.called("create_pod")) == 4


def test_never_more_pods_than_the_workload_was_admitted_for():
    loop = Loop(tasks=10, parallelism=8)
    loop.kube.admit_workload(WORKLOAD, pods=3)
    loop.run_pass()
    assert len(loop.kube.views()) == 3

    loop.finish_all()
    loop.run_pass()
    running = [v for v in loop.kube.views() if not v.terminal]
    assert len(running) == 3
    assert len(loop.kube.called("get_workload")) == 1  # an admission is read once


def test_its_pods_carry_no_queue_label_so_kueue_does_not_admit_them_again():
    in_template = {"metadata": {"labels": {LABEL_KUEUE_QUEUE: "gpus"}}}
    loop = Loop(tasks=2, parallelism=2, template=in_template)
    loop.kube.admit_workload(WORKLOAD, pods=2)
    loop.run_pass()

    labels = [p["metadata"]["labels"] for p in loop.kube.pods.values()]
    assert len(labels) == 2
    assert all(LABEL_KUEUE_QUEUE not in pod_labels for pod_labels in labels)


def test_the_workload_is_finished_after_the_final_status_is_written():
    loop = Loop(tasks=2, parallelism=2)
    loop.kube.admit_workload(WORKLOAD, pods=2)
    loop.run_pass()
    assert loop.finished_condition() is None

    loop.finish_all()
    loop.run_pass()

    finished = loop.finished_condition()
    assert finished is not None
    assert (finished["status"], finished["reason"]) == ("True", "Succeeded")
    (apply,) = loop.kube.called("apply_workload_condition")
    last_write = loop.kube.called("patch_batch_status")[-1]
    assert apply.began > (last_write.ended or 0)
    assert any(
        c["type"] == ConditionType.COMPLETE and c["status"] == "True"
        for c in loop.kube.status["conditions"]
    )
    loop.run_pass()
    assert len(loop.kube.called("apply_workload_condition")) == 1  # once


def test_a_failed_batch_finishes_its_workload_as_failed_with_the_batch_message():
    loop = Loop(tasks=1, parallelism=1, retry={"limit": 0})
    loop.kube.admit_workload(WORKLOAD, pods=1)
    loop.run_pass()
    loop.finish_all(exit_code=3)
    loop.run_pass()

    finished = loop.finished_condition()
    assert finished is not None
    assert finished["reason"] == "Failed"
    failed = next(c for c in loop.kube.status["conditions"] if c["type"] == ConditionType.FAILED)
    assert finished["message"] == failed["message"]


def test_a_refused_finish_warns_once_and_is_retried_until_it_goes_through():
    loop = Loop(tasks=1, parallelism=1)
    loop.kube.admit_workload(WORKLOAD, pods=1)
    loop.run_pass()
    loop.finish_all()
    loop.kube.refuse("apply_workload_condition", 403, times=2, message="forbidden")

    for _ in range(2):
        with pytest.raises(ApiError):
            loop.run_pass()
    warnings = [e for e in loop.batch.events if e.reason == "WorkloadNotFinished"]
    assert len(warnings) == 1
    assert "workloads/status" in warnings[0].message
    assert loop.finished_condition() is None

    loop.run_pass()
    assert loop.finished_condition() is not None


def test_ttl_after_finished_leaves_a_mirrored_batch_for_multikueue_to_delete():
    loop = Loop(tasks=1, parallelism=1, ttlSecondsAfterFinished=0)
    loop.kube.admit_workload(WORKLOAD, pods=1)
    loop.run_pass()
    loop.finish_all()
    for _ in range(3):
        loop.run_pass()

    assert loop.finished_condition() is not None
    assert not loop.kube.batch_deleted
    assert loop.kube.called("delete_batch") == []


def test_a_restarted_operator_reads_the_admission_again_and_finishes_the_workload():
    loop = Loop(tasks=2, parallelism=2)
    loop.kube.admit_workload(WORKLOAD, pods=2)
    loop.run_pass()
    loop.finish_all()
    loop.restart()
    loop.run_pass()

    assert len(loop.kube.called("get_workload")) == 2
    finished = loop.finished_condition()
    assert finished is not None and finished["reason"] == "Succeeded"
