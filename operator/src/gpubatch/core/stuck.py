"""Why a task pod is stuck before Running, and whether that is a configuration error.

A pod that waits on ErrImagePull or CreateContainerConfigError, or that no node in the cluster
could ever hold, will wait forever: no kubelet or scheduler ends it. These are configuration
errors of the batch (every task pod is rendered from the same template), not task failures, so
the planner reports them, stops dispatching, and gives the attempt up without counting it.

A pod the scheduler cannot place *now*, while some node could hold it once it frees up, is
normal queueing: reported as information (WaitingForCapacity), never as a failure. So is a pod
that Kueue's admission gate holds back until its queue's quota admits it (WaitingForAdmission).

What the pod alone cannot show: a volume that cannot mount (FailedMount) leaves the container
waiting as ContainerCreating, exactly like a slow image pull; only the pod's Events say which.
The operator does not watch Events, so that case is not detected here (documented in
docs/operator.md).

Pure: pods and nodes in, diagnoses out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from gpubatch.api.spec import GPUBatchSpec
from gpubatch.core.podview import PodView

_IMAGE_FIX: Final = (
    "check the image name and tag in spec.template, and for a private registry the pod's "
    "imagePullSecrets"
)
#: Container waiting reasons that no amount of waiting fixes, with what to change.
CONFIG_ERRORS: Final[Mapping[str, str]] = {
    "ErrImagePull": _IMAGE_FIX,
    "ImagePullBackOff": _IMAGE_FIX,
    "InvalidImageName": "the image name is not a valid reference: fix it in spec.template",
    "ErrImageNeverPull": "imagePullPolicy is Never and the image is not on the node: "
    "change imagePullPolicy or the image",
    "CreateContainerConfigError": "create the Secret or ConfigMap the container refers to, "
    "or, for an image that runs as root under runAsNonRoot, set "
    "template.spec.securityContext.runAsUser or use a non-root image",
    "CreateContainerError": "the container runtime cannot create the container: check "
    "command, volumeMounts and securityContext in spec.template",
}
UNSCHEDULABLE: Final = "Unschedulable"
#: Kueue's admission gate holds the pod back from the scheduler until its quota admits it.
WAITING_FOR_ADMISSION: Final = "WaitingForAdmission"
_UNFIT_FIX: Final = (
    "change spec.gpuModels, spec.gpusPerTask or spec.gpuResource to what the cluster's "
    "nodes offer, or add such a node"
)


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """What the scheduler could ever give on one node: its labels and allocatable resources."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Why one pod is stuck. `config` is True for a configuration error (stop, give up, fail
    after spec.stuck.maxAttempts), False for waiting on capacity (information only)."""

    pod: PodView
    reason: str
    detail: str  # what the kubelet or scheduler said
    fix: str
    config: bool

    @property
    def message(self) -> str:
        pod = self.pod
        text = f"task {pod.index} (pod {pod.name}): {self.reason}"
        if self.detail:
            text += f": {self.detail}"
        return f"{text}; {self.fix}"


def same_error(one: str, other: str) -> bool:
    """Two waiting reasons are the same error when they ask for the same fix (ErrImagePull and
    ImagePullBackOff are one failing pull, retried)."""
    return one == other or (
        one in CONFIG_ERRORS and CONFIG_ERRORS.get(one) == CONFIG_ERRORS.get(other)
    )


def _gpu_count(value: str | None) -> int:
    """GPUs in an allocatable quantity; extended resources are whole numbers."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


def fitting_nodes(spec: GPUBatchSpec, nodes: Sequence[NodeCapacity]) -> list[str]:
    """Nodes that could ever hold one task pod: an accepted GPU model (when gpuModels is set)
    and at least gpusPerTask of gpuResource allocatable, whatever runs on them now."""
    models = set(spec.gpu_models or ())
    return [
        node.name
        for node in nodes
        if (not models or node.labels.get(spec.gpu_model_label) in models)
        and _gpu_count(node.allocatable.get(spec.gpu_resource)) >= spec.gpus_per_task
    ]


def _request(spec: GPUBatchSpec) -> str:
    text = f"{spec.gpus_per_task} {spec.gpu_resource}"
    if spec.gpu_models:
        text += f" on a node labelled {spec.gpu_model_label} in {', '.join(spec.gpu_models)}"
    return text


def diagnose(
    pod: PodView, spec: GPUBatchSpec, nodes: Sequence[NodeCapacity] | None
) -> Diagnosis | None:
    """Why this pod is stuck before Running, or None when it is not (running, finished,
    being deleted, or just starting). `nodes` None: the cluster's nodes are unknown, so an
    unschedulable pod counts as waiting for capacity."""
    if pod.terminal or pod.deleting or pod.phase != "Pending":
        return None
    reason = pod.waiting_reason
    if reason is not None and reason in CONFIG_ERRORS:
        return Diagnosis(pod, reason, pod.waiting_message, CONFIG_ERRORS[reason], config=True)
    if pod.awaiting_admission is not None and not pod.scheduled:
        queue = pod.awaiting_admission or "(no queue label)"
        fix = f"Kueue admits it when LocalQueue {queue} has quota for it"
        return Diagnosis(pod, WAITING_FOR_ADMISSION, "", fix, config=False)
    if pod.unschedulable is None or pod.scheduled:
        return None
    if nodes is not None and not fitting_nodes(spec, nodes):
        fix = f"no node in the cluster can ever hold {_request(spec)}: {_UNFIT_FIX}"
        return Diagnosis(pod, UNSCHEDULABLE, pod.unschedulable, fix, config=True)
    fix = f"nodes that can hold {_request(spec)} exist, so it waits for one to free up"
    return Diagnosis(pod, UNSCHEDULABLE, pod.unschedulable, fix, config=False)


__all__ = [
    "CONFIG_ERRORS",
    "UNSCHEDULABLE",
    "WAITING_FOR_ADMISSION",
    "Diagnosis",
    "NodeCapacity",
    "diagnose",
    "fitting_nodes",
    "same_error",
]
