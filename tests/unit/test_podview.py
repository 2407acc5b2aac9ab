"""`pod_view`: a task pod from the API reduced to what the planner reads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gpubatch.api.names import (
    ANNOTATION_STOP_REASON,
    FINALIZER_TRACKING,
    LABEL_ATTEMPT,
    LABEL_BATCH_UID,
    LABEL_KUEUE_QUEUE,
    LABEL_TASK_INDEX,
)
from gpubatch.core.podview import PodView, pod_view
from support.builders import BATCH_UID, NAMESPACE, a_pod, a_pod_object, terminated_status

pytestmark = pytest.mark.unit


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def view(task_container: str | None = None, **kwargs: Any) -> PodView:
    """The view of a pod built by `a_pod_object(**kwargs)`, which must be one of ours."""
    result = pod_view(a_pod_object(**kwargs), task_container)
    assert result is not None
    return result


# ---------------------------------------------------------------------------- identity
def test_labels_give_the_task_index_attempt_and_batch():
    pod = view(index=41, attempt=2)
    assert (pod.index, pod.attempt, pod.batch_uid) == (41, 2, BATCH_UID)
    assert (pod.name, pod.namespace) == ("clips-41-2", NAMESPACE)
    assert pod.key == (41, 2)


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {LABEL_TASK_INDEX: "1", LABEL_ATTEMPT: "0"},
        {LABEL_BATCH_UID: "u", LABEL_ATTEMPT: "0"},
        {LABEL_BATCH_UID: "u", LABEL_TASK_INDEX: "one", LABEL_ATTEMPT: "0"},
        {LABEL_BATCH_UID: "u", LABEL_TASK_INDEX: "1", LABEL_ATTEMPT: ""},
    ],
    ids=["no-labels", "no-uid", "no-index", "index-not-a-number", "attempt-empty"],
)
def test_a_pod_without_our_labels_is_not_ours(labels):
    assert pod_view(a_pod_object(labels=labels)) is None


def test_a_pod_with_no_metadata_at_all_is_not_ours():
    assert pod_view({}) is None


def test_creation_time_is_read():
    assert view().created_at == at("2025-03-01T11:58:00")


# ----------------------------------------------------------------------- phase and node
def test_a_pod_without_a_phase_yet_is_pending():
    pod_object = a_pod_object(node=None)
    del pod_object["status"]["phase"]
    pod = pod_view(pod_object)
    assert pod is not None
    assert pod.phase == "Pending"
    assert pod.node is None
    assert not pod.scheduled
    assert not pod.terminal


def test_a_bound_running_pod_is_scheduled_running_and_not_terminal():
    pod = view(phase="Running", node="gpu-7")
    assert (pod.node, pod.scheduled, pod.running, pod.terminal) == ("gpu-7", True, True, False)


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_succeeded_and_failed_pods_are_terminal(phase):
    assert view(phase=phase).terminal


def test_a_pod_deleted_before_any_node_ran_it_is_terminal():
    # It stays Pending forever while our finalizer holds it: no kubelet will ever end it.
    pod = view(phase="Pending", node=None, deleting=True)
    assert pod.deleting
    assert pod.terminal


def test_a_pod_deleted_while_it_runs_is_not_terminal_until_the_kubelet_ends_it():
    pod = view(phase="Running", deleting=True)
    assert pod.deleting
    assert not pod.terminal
    assert not pod.running


def test_the_tracking_finalizer_is_detected():
    assert view().tracked
    assert not view(finalizers=()).tracked
    assert not view(finalizers=("example.com/other",)).tracked
    assert view(finalizers=("example.com/other", FINALIZER_TRACKING)).tracked


# ------------------------------------------------------------------ the task container
def test_the_task_containers_terminated_state_is_read():
    statuses = [
        terminated_status(
            exit_code=3,
            reason="Error",
            message='{"outcome":"failed"}',
            started="2025-03-01T11:58:30Z",
            finished="2025-03-01T11:59:40Z",
        )
    ]
    pod = view(phase="Failed", container_statuses=statuses)
    assert (pod.exit_code, pod.reason, pod.message) == (3, "Error", '{"outcome":"failed"}')
    assert pod.started_at == at("2025-03-01T11:58:30")
    assert pod.finished_at == at("2025-03-01T11:59:40")


def test_the_named_task_container_is_read_not_a_sidecar():
    statuses = [
        terminated_status("sidecar", exit_code=0, reason="Completed"),
        terminated_status("task", exit_code=7, reason="Error"),
    ]
    pod = {"phase": "Failed", "containers": ("sidecar", "task"), "container_statuses": statuses}
    assert view("task", **pod).exit_code == 7
    # Unnamed, the task container is the first container of the pod spec.
    assert view(**pod).exit_code == 0


def test_the_first_container_in_the_spec_is_found_whatever_the_status_order():
    statuses = [
        terminated_status("sidecar", exit_code=0),
        terminated_status("task", exit_code=4, reason="Error"),
    ]
    pod = view(phase="Failed", containers=("task", "sidecar"), container_statuses=statuses)
    assert pod.exit_code == 4


def test_a_running_pod_has_no_exit_code_and_starts_when_its_task_container_started():
    # the pod started at :20, the image pull took until :40: the task deadline counts from :40
    running_status = {"name": "task", "state": {"running": {"startedAt": "2025-03-01T11:58:40Z"}}}
    pod = view(container_statuses=[running_status], start_time="2025-03-01T11:58:20Z")
    assert pod.exit_code is None
    assert pod.message == ""
    assert pod.started_at == at("2025-03-01T11:58:40")
    assert pod.finished_at is None


def test_without_a_container_start_the_pod_start_time_is_used():
    waiting = {"name": "task", "state": {"waiting": {"reason": "ContainerCreating"}}}
    pod = view(container_statuses=[waiting], start_time="2025-03-01T11:58:20Z")
    assert pod.started_at == at("2025-03-01T11:58:20")


def test_without_a_terminated_reason_the_pods_own_reason_is_used():
    pod = view(phase="Failed", reason="DeadlineExceeded")
    assert pod.reason == "DeadlineExceeded"
    assert pod.exit_code is None


# ------------------------------------------------------------------------ disruptions
def test_a_true_disruption_target_condition_names_the_disruption():
    condition = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}
    pod = view(phase="Failed", conditions=[condition])
    assert pod.disruption == "DeletionByTaintManager"


def test_a_disruption_target_without_a_reason_is_still_a_disruption():
    pod = view(phase="Failed", conditions=[{"type": "DisruptionTarget", "status": "True"}])
    assert pod.disruption == "Disrupted"


def test_a_false_disruption_target_condition_is_no_disruption():
    condition = {"type": "DisruptionTarget", "status": "False", "reason": "PreemptionByScheduler"}
    ready = {"type": "Ready", "status": "False", "reason": "PodFailed"}
    assert view(phase="Failed", conditions=[ready, condition]).disruption is None


@pytest.mark.parametrize("reason", ["Evicted", "NodeLost", "Preempting", "NodeShutdown"])
def test_a_pod_failed_for_a_disruption_reason_is_disrupted(reason):
    assert view(phase="Failed", reason=reason).disruption == reason


def test_an_ordinary_failure_is_no_disruption():
    statuses = [terminated_status(exit_code=1, reason="Error")]
    assert view(phase="Failed", container_statuses=statuses).disruption is None


def test_the_condition_wins_over_the_pod_reason():
    condition = {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}
    assert view(phase="Failed", reason="Evicted", conditions=[condition]).disruption == (
        "TerminationByKubelet"
    )


def test_the_operators_stop_reason_annotation_is_read():
    assert view().stop_reason is None
    pod = view(deleting=True, annotations={ANNOTATION_STOP_REASON: "DeadlineExceeded"})
    assert pod.stop_reason == "DeadlineExceeded"


def test_builder_and_extraction_agree_on_a_running_pod():
    """The planner tests build PodViews directly; they must look like extracted ones."""
    extracted = view(index=3, attempt=1)
    built = a_pod(3, 1)
    assert (extracted.phase, extracted.node, extracted.tracked, extracted.deleting) == (
        built.phase,
        built.node,
        built.tracked,
        built.deleting,
    )


def test_outcome_is_read_from_the_annotated_task_container_not_the_first():
    from gpubatch.api.names import ANNOTATION_TASK_CONTAINER

    pod = {
        "metadata": {
            "name": "b-0-0",
            "namespace": "ns",
            "labels": {
                "gpubatch.io/batch-uid": "u",
                "gpubatch.io/task-index": "0",
                "gpubatch.io/attempt": "0",
            },
            "annotations": {ANNOTATION_TASK_CONTAINER: "main"},
        },
        "spec": {"containers": [{"name": "sidecar"}, {"name": "main"}]},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": "sidecar", "state": {"terminated": {"exitCode": 0}}},
                {"name": "main", "state": {"terminated": {"exitCode": 7}}},
            ],
        },
    }
    view = pod_view(pod)
    assert view is not None and view.exit_code == 7


def test_kueues_termination_target_on_a_preempted_pod_is_a_disruption():
    condition = {"type": "TerminationTarget", "status": "True", "reason": "Preempted"}
    pod = view(phase="Running", deleting=True, conditions=[condition])
    assert pod.disruption == "Preempted"


# ------------------------------------------------------------------------------ Kueue gates
def _gated(queue: str | None, gate: str = "kueue.x-k8s.io/admission") -> PodView:
    labels = {LABEL_BATCH_UID: BATCH_UID, LABEL_TASK_INDEX: "0", LABEL_ATTEMPT: "0"}
    if queue is not None:
        labels[LABEL_KUEUE_QUEUE] = queue
    obj = a_pod_object(phase="Pending", node=None, start_time=None, labels=labels)
    obj["spec"]["schedulingGates"] = [{"name": gate}]
    result = pod_view(obj)
    assert result is not None
    return result


def test_a_pod_behind_kueues_admission_gate_awaits_admission_in_its_queue():
    assert _gated("team-a").awaiting_admission == "team-a"


def test_another_scheduling_gate_is_not_kueue_admission():
    assert _gated("team-a", gate="example.com/other").awaiting_admission is None


def test_an_ungated_pod_awaits_no_admission():
    assert view(phase="Pending", node=None).awaiting_admission is None
