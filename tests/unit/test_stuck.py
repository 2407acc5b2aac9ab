"""Pods stuck before Running: what the pod says (`pod_view`) and what it means (`diagnose`).

A configuration error (bad image, missing Secret, a GPU request no node can ever hold) is told
apart from waiting for capacity, which is normal queueing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gpubatch.core.podview import PodView, pod_view
from gpubatch.core.stuck import diagnose, fitting_nodes
from support.builders import (
    a_node,
    a_pod_object,
    a_spec,
    running,
    stuck,
    unschedulable,
    unscheduled,
)

pytestmark = pytest.mark.unit

IMAGE_PULL = {
    "name": "task",
    "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling "x:1"'}},
}


def view(**kwargs: object) -> PodView:
    result = pod_view(a_pod_object(**kwargs))  # type: ignore[arg-type]
    assert result is not None
    return result


# ------------------------------------------------------------------------------- pod_view
def test_the_task_containers_waiting_reason_and_message_are_read():
    pod = view(phase="Pending", container_statuses=[IMAGE_PULL])
    assert (pod.waiting_reason, pod.waiting_message) == (
        "ImagePullBackOff",
        'Back-off pulling "x:1"',
    )


def test_a_sidecar_stuck_on_its_image_holds_the_task_back_too():
    creating = {"name": "task", "state": {"waiting": {"reason": "ContainerCreating"}}}
    sidecar = {**IMAGE_PULL, "name": "sidecar"}
    pod = view(
        phase="Pending", containers=("task", "sidecar"), container_statuses=[creating, sidecar]
    )
    assert pod.waiting_reason == "ImagePullBackOff"


def test_the_schedulers_unschedulable_message_is_kept():
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/8 nodes are available: 8 Insufficient nvidia.com/gpu.",
    }
    pod = view(phase="Pending", node=None, conditions=[condition])
    assert pod.unschedulable == "0/8 nodes are available: 8 Insufficient nvidia.com/gpu."


def test_a_running_pod_waits_on_nothing():
    pod = view()
    assert (pod.waiting_reason, pod.unschedulable) == (None, None)


# ------------------------------------------------------------------------------- diagnose
@pytest.mark.parametrize(
    ("reason", "fix"),
    [
        ("ErrImagePull", "imagePullSecrets"),
        ("ImagePullBackOff", "image name and tag"),
        ("InvalidImageName", "not a valid reference"),
        ("CreateContainerConfigError", "runAsNonRoot"),
        ("CreateContainerError", "container runtime"),
    ],
)
def test_a_waiting_reason_no_wait_can_fix_is_a_configuration_error(reason: str, fix: str):
    found = diagnose(stuck(3, reason=reason), a_spec(), nodes=[a_node()])
    assert found is not None and found.config
    assert found.reason == reason
    assert "task 3 (pod clips-3-0)" in found.message and fix in found.message


def test_a_pod_still_creating_its_container_is_not_stuck():
    assert diagnose(stuck(reason="ContainerCreating"), a_spec(), nodes=None) is None


def test_running_finished_and_deleting_pods_are_not_stuck():
    spec = a_spec()
    assert diagnose(running(), spec, None) is None
    assert diagnose(stuck(deleting=True), spec, None) is None


def test_unschedulable_while_a_fitting_node_exists_is_waiting_for_capacity():
    found = diagnose(unschedulable(), a_spec(), nodes=[a_node(gpus=8)])
    assert found is not None and not found.config
    assert "0/8 nodes are available: 8 Insufficient nvidia.com/gpu." in found.message
    assert "waits for one to free up" in found.message


def test_a_gpu_model_no_node_has_can_never_be_scheduled():
    spec = a_spec(gpuModels=["NVIDIA-H100"])
    found = diagnose(unschedulable(), spec, nodes=[a_node(model="NVIDIA-A100")])
    assert found is not None and found.config and found.reason == "Unschedulable"
    assert "no node in the cluster can ever hold 1 nvidia.com/gpu" in found.message
    assert "NVIDIA-H100" in found.message and "spec.gpuModels" in found.message


def test_more_gpus_than_any_node_has_can_never_be_scheduled():
    found = diagnose(unschedulable(), a_spec(gpusPerTask=16), nodes=[a_node(gpus=8)])
    assert found is not None and found.config


def test_unknown_nodes_mean_waiting_not_an_error():
    found = diagnose(unschedulable(), a_spec(gpusPerTask=16), nodes=None)
    assert found is not None and not found.config


def test_a_node_fits_by_model_and_allocatable_of_the_requested_resource():
    nodes = [
        a_node("a100-small", "NVIDIA-A100", gpus=2),
        a_node("a100-big", "NVIDIA-A100", gpus=8),
        a_node("l4", "NVIDIA-L4", gpus=8),
    ]
    spec = a_spec(gpuModels=["NVIDIA-A100"], gpusPerTask=4)
    assert fitting_nodes(spec, nodes) == ["a100-big"]
    assert fitting_nodes(a_spec(gpuResource="nvidia.com/mig-1g.10gb"), nodes) == []


# ------------------------------------------------------------------------------ spec.stuck
def test_spec_stuck_defaults_and_bounds():
    assert (a_spec().stuck.give_up_seconds, a_spec().stuck.max_attempts) == (120, 3)
    with pytest.raises(ValidationError, match="giveUpSeconds"):
        a_spec(stuck={"giveUpSeconds": 5})
    with pytest.raises(ValidationError, match="maxAttempts"):
        a_spec(stuck={"maxAttempts": 0})


def test_a_pod_held_by_kueues_admission_gate_waits_for_admission_not_capacity():
    found = diagnose(unscheduled(awaiting_admission="team-a"), a_spec(), nodes=[])
    assert found is not None and not found.config
    assert found.reason == "WaitingForAdmission"
    assert "LocalQueue team-a" in found.message
