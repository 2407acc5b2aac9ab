"""The MultiKueue contract's pure rules: the Workload a batch is admitted by, how many pods an
admission allows, how a finished batch ends its Workload, and which pods are queued again."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from gpubatch.api.names import LABEL_KUEUE_PREBUILT_WORKLOAD, LABEL_KUEUE_QUEUE
from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.status import GPUBatchStatus
from gpubatch.core.conditions import set_condition
from gpubatch.core.kueueworkload import (
    WorkloadError,
    WorkloadFinish,
    admitted_pods,
    batch_workload,
    finished_condition,
    for_multikueue,
    workload_finish,
    workload_name,
)
from gpubatch.core.podspec import batch_ref
from support.builders import a_raw_spec

NOW = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def a_document(labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gpubatch.io/v1alpha1",
        "kind": "GPUBatch",
        "metadata": {"name": "clips", "labels": labels or {}},
        "spec": a_raw_spec(**spec),
    }


def stored(document: dict[str, Any]) -> dict[str, Any]:
    """The batch as the API server returns it after creating it."""
    return {**document, "metadata": {**document["metadata"], "namespace": "team", "uid": "u-1"}}


# ------------------------------------------------------------------------ the manager's Workload
def test_a_workload_reserves_parallelism_gpu_pods_and_is_owned_by_its_batch():
    spec = GPUBatchSpec.model_validate(a_raw_spec(parallelism=6, gpusPerTask=2))
    workload = batch_workload(stored(a_document()), spec, "gpus", "gpubatch-clips")

    (pod_set,) = workload["spec"]["podSets"]
    assert workload["spec"]["queueName"] == "gpus"
    assert pod_set["count"] == 6
    (container,) = pod_set["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    (owner,) = workload["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "GPUBatch",
        "clips",
        "u-1",
        True,
    )
    assert workload["metadata"]["namespace"] == "team"


def test_a_workload_needs_parallelism_and_the_stored_batch():
    unbounded = GPUBatchSpec.model_validate(a_raw_spec())
    with pytest.raises(WorkloadError, match=r"set spec\.parallelism"):
        batch_workload(stored(a_document()), unbounded, "gpus", "w")
    bounded = GPUBatchSpec.model_validate(a_raw_spec(parallelism=2))
    with pytest.raises(WorkloadError, match="no uid"):
        batch_workload(a_document(), bounded, "gpus", "w")


def test_a_multikueue_submission_is_labelled_with_its_workload_name():
    submission = for_multikueue(a_document({LABEL_KUEUE_QUEUE: "gpus"}, parallelism=2))

    assert submission.queue == "gpus"
    assert submission.workload == workload_name("clips") == "gpubatch-clips"
    labels = submission.document["metadata"]["labels"]
    assert labels[LABEL_KUEUE_PREBUILT_WORKLOAD] == "gpubatch-clips"


def test_a_long_batch_name_gives_a_workload_name_that_fits_a_label_value():
    long = "shots-" + "x" * 100
    name = workload_name(long)
    assert len(name) <= 63
    assert name.startswith("gpubatch-shots-")
    assert name != workload_name(long + "y")


def test_a_workload_name_in_the_file_is_kept():
    labels = {LABEL_KUEUE_QUEUE: "gpus", LABEL_KUEUE_PREBUILT_WORKLOAD: "mine"}
    assert for_multikueue(a_document(labels, parallelism=2)).workload == "mine"


@pytest.mark.parametrize(
    ("labels", "spec", "says"),
    [
        ({}, {"parallelism": 2}, "needs the label kueue.x-k8s.io/queue-name"),
        ({LABEL_KUEUE_QUEUE: "gpus"}, {}, "set spec.parallelism"),
    ],
)
def test_a_multikueue_submission_is_refused_before_anything_is_applied(labels, spec, says):
    with pytest.raises(WorkloadError, match=re.escape(says)):
        for_multikueue(a_document(labels, **spec))


# ------------------------------------------------------------------------ the worker's admission
def admitted(*counts: int, admitted: str = "True") -> dict[str, Any]:
    return {
        "status": {
            "conditions": [{"type": "Admitted", "status": admitted}],
            "admission": {"podSetAssignments": [{"name": "main", "count": c} for c in counts]},
        }
    }


def test_an_admitted_workload_allows_the_pods_of_its_pod_sets():
    assert admitted_pods(admitted(3)) == 3
    assert admitted_pods(admitted(2, 1)) == 3


@pytest.mark.parametrize(
    "workload",
    [{}, {"status": {}}, admitted(3, admitted="False"), {"status": {"conditions": []}}],
)
def test_a_workload_not_admitted_allows_nothing(workload):
    assert admitted_pods(workload) is None


def test_a_batch_with_a_prebuilt_workload_is_not_queued_pod_by_pod():
    labels = {LABEL_KUEUE_QUEUE: "gpus", LABEL_KUEUE_PREBUILT_WORKLOAD: "w"}
    ref = batch_ref("clips", "team", "u-1", labels, default_queue="fallback")
    assert (ref.queue, ref.workload) == (None, "w")


def test_a_queued_batch_is_admitted_pod_by_pod_through_its_queue_or_the_default():
    assert batch_ref("c", "t", "u", {LABEL_KUEUE_QUEUE: "gpus"}, "fallback").queue == "gpus"
    assert batch_ref("c", "t", "u", {}, "fallback").queue == "fallback"
    assert batch_ref("c", "t", "u", {}).queue is None


# ------------------------------------------------------------------------ the end of the batch
def ended(type_: str, message: str) -> GPUBatchStatus:
    status = GPUBatchStatus()
    set_condition(status, "Progressing", "False", "Done", "", NOW, 1)
    set_condition(status, type_, "True", "Because", message, NOW, 1)
    return status


def test_a_complete_batch_finishes_its_workload_as_succeeded():
    assert workload_finish(ended("Complete", "8/8 tasks")) == WorkloadFinish(
        "Succeeded", "8/8 tasks"
    )


def test_a_failed_batch_finishes_its_workload_as_failed():
    assert workload_finish(ended("Failed", "3 tasks failed")) == WorkloadFinish(
        "Failed", "3 tasks failed"
    )


def test_a_running_batch_leaves_its_workload_alone():
    status = GPUBatchStatus()
    set_condition(status, "Complete", "False", "Dispatching", "", NOW, 1)
    assert workload_finish(status) is None


def test_the_finished_condition_is_kueues():
    condition = finished_condition(WorkloadFinish("Succeeded", ""), NOW)
    assert condition == {
        "type": "Finished",
        "status": "True",
        "reason": "Succeeded",
        "message": "Succeeded",
        "lastTransitionTime": "2026-11-30T06:00:00Z",
    }
