"""Render one task attempt's pod from the batch's pod template.

What gpubatch adds to the user's template, and why:
- `<gpuResource>: <gpusPerTask>` as limit (and request) on the task container, so the device
  plugin gives the pod its own GPU(s) and pins them. gpubatch never sets CUDA_VISIBLE_DEVICES.
- labels (batch name and uid, task index, attempt) so the operator watches only its own pods
  through a server-side label selector, and an owner reference so pods die with the batch;
- the tracking finalizer, removed only once the attempt's outcome is in the batch status;
- a deterministic name, so a create repeated after a crash is a harmless 409;
- the task environment (GPUBATCH_*), and with `worker.wrap` the `gpubatch-worker --` prefix;
- node affinity for `gpuModels` (required set, preferred order);
- restricted-profile security defaults where the template leaves them unset (non-root,
  no privilege escalation, all capabilities dropped, RuntimeDefault seccomp).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gpubatch.api.lease import (
    ENV_BATCH_UID,
    ENV_LEASE_CA,
    ENV_LEASE_TOKEN_FILE,
    ENV_LEASE_URL,
    LABEL_WARM_SLOT,
    LEASE_AUDIENCE,
)
from gpubatch.api.names import (
    ANNOTATION_TASK_CONTAINER,
    FINALIZER_TRACKING,
    LABEL_ATTEMPT,
    LABEL_BATCH_NAME,
    LABEL_BATCH_UID,
    LABEL_KUEUE_PREBUILT_WORKLOAD,
    LABEL_KUEUE_QUEUE,
    LABEL_TASK_INDEX,
)
from gpubatch.api.spec import GPUBatchSpec
from gpubatch.core.invocation import task_invocation
from gpubatch.core.taskrender import RenderedTask

WORKER_COMMAND: Final = ("gpubatch-worker", "--")
WARM_WORKER_COMMAND: Final = ("gpubatch-worker", "--warm", "--lease", "--")
MAX_NAME: Final = 63
#: Extra seconds the kubelet grants beyond taskDeadlineSeconds before it kills the pod itself;
#: the worker and the operator stop the task first, this is the backstop when both cannot.
#: Generous because the kubelet counts from the pod's start, image pull included, while
#: taskDeadlineSeconds counts from the task container's start (a pull can take minutes).
KUBELET_DEADLINE_GRACE: Final = 900


@dataclass(frozen=True)
class BatchRef:
    """The owning batch, as needed for names, labels and the owner reference."""

    name: str
    namespace: str
    uid: str
    api_version: str = "gpubatch.io/v1alpha1"
    kind: str = "GPUBatch"
    #: The Kueue LocalQueue named by the batch's kueue.x-k8s.io/queue-name label: every pod of
    #: the batch (task and warm) carries it, so Kueue gates each until its quota admits it.
    queue: str | None = None
    #: The Kueue Workload that admitted the whole batch (kueue.x-k8s.io/prebuilt-workload-name,
    #: MultiKueue's copy on a worker cluster): its pods are admitted already and carry no
    #: queue label, or Kueue would gate them and count the same GPUs twice.
    workload: str | None = None


def batch_ref(
    name: str,
    namespace: str,
    uid: str,
    labels: Mapping[str, str],
    default_queue: str | None = None,
) -> BatchRef:
    """The batch as its pods refer to it, with how Kueue admits it: whole, by the Workload its
    kueue.x-k8s.io/prebuilt-workload-name label names (MultiKueue), or pod by pod through the
    LocalQueue its kueue.x-k8s.io/queue-name label (or the operator's default) names."""
    workload = labels.get(LABEL_KUEUE_PREBUILT_WORKLOAD) or None
    queue = None if workload else labels.get(LABEL_KUEUE_QUEUE) or default_queue
    return BatchRef(name, namespace, uid, queue=queue, workload=workload)


def pod_name(batch: str, index: int, attempt: int) -> str:
    """`<batch>-<index>-<attempt>`, shortened with a hash of the batch name to fit 63 chars."""
    suffix = f"-{index}-{attempt}"
    name = batch + suffix
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(batch.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(suffix) - len(digest) - 1
    return f"{batch[:keep].rstrip('-.')}-{digest}{suffix}"


def label_value(text: str) -> str:
    """A valid label value (<= 63 chars, alphanumeric ends) standing for `text`."""
    if len(text) <= MAX_NAME and re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[: MAX_NAME - 9].strip("-_.")
    return f"{cleaned}-{digest}" if cleaned else digest


def task_selector(batch_uid: str) -> str:
    return f"{LABEL_BATCH_UID}={batch_uid}"


def render_pod(
    batch: BatchRef,
    spec: GPUBatchSpec,
    task: RenderedTask,
    attempt: int,
) -> dict[str, Any]:
    """The complete pod manifest for one attempt of one task."""
    template = spec.template.model_dump(mode="json", by_alias=True, exclude_none=True)
    pod_spec: dict[str, Any] = copy.deepcopy(template["spec"])
    position = spec.task_container_index()

    # The task container: rendered argv/env, the worker prefix, the task env, the GPU limit.
    invocation = task_invocation(batch.name, spec, task, attempt)
    container = task.apply(pod_spec["containers"][position])
    if spec.worker.wrap:  # TaskRenderer refused a wrapped container without a command
        container["command"] = [*WORKER_COMMAND, *invocation.argv]
        container.pop("args", None)
    ours = invocation.task.to_env()
    names = {entry["name"] for entry in ours}
    container["env"] = [e for e in container.get("env") or [] if e.get("name") not in names] + ours
    _container_with_gpus(spec, container)
    pod_spec["containers"][position] = container
    _restrict_pod(pod_spec, position)
    if spec.task_deadline_seconds is not None:
        pod_spec.setdefault(
            "activeDeadlineSeconds", spec.task_deadline_seconds + KUBELET_DEADLINE_GRACE
        )
    labels = {LABEL_TASK_INDEX: str(task.index), LABEL_ATTEMPT: str(attempt)}
    name = pod_name(batch.name, task.index, attempt)
    return _manifest(batch, spec, name, labels, pod_spec, container["name"])


@dataclass(frozen=True)
class LeaseEndpoint:
    """Where a warm pod asks for its leases, and the certificate authority that vouches for
    the operator there (PEM, carried in the pod's env: no Secret to mount in every namespace)."""

    url: str
    ca_pem: str


#: Where a warm pod's projected lease token is mounted.
LEASE_TOKEN_DIR: Final = "/var/run/secrets/gpubatch.io/lease"  # noqa: S105 (a path)
LEASE_TOKEN_VOLUME: Final = "gpubatch-lease-token"  # noqa: S105 (a volume name)
#: Lifetime asked for the lease token; the kubelet renews it at 80% of that.
LEASE_TOKEN_SECONDS: Final = 3600


def warm_pod_name(batch: str, number: int) -> str:
    """`<batch>-w<number>`, shortened like task pod names."""
    return pod_name(batch, number, 0).removesuffix(f"-{number}-0") + f"-w{number}"


def render_warm_pod(
    batch: BatchRef, spec: GPUBatchSpec, number: int, endpoint: LeaseEndpoint
) -> dict[str, Any]:
    """Warm pod `number`: the program started once behind `gpubatch-worker --warm --lease`,
    which asks `endpoint` for leases with a projected token only the operator accepts.

    No task is rendered into it (the program gets its tasks from the leases), so the pod
    has no deadline of its own: the worker enforces each task's."""
    template = spec.template.model_dump(mode="json", by_alias=True, exclude_none=True)
    pod_spec: dict[str, Any] = copy.deepcopy(template["spec"])
    position = spec.task_container_index()
    container = pod_spec["containers"][position]
    argv = [*(container.get("command") or ()), *(container.get("args") or ())]
    container["command"] = [*WARM_WORKER_COMMAND, *argv]
    container.pop("args", None)
    ours = [
        {"name": ENV_LEASE_URL, "value": endpoint.url},
        {"name": ENV_LEASE_CA, "value": endpoint.ca_pem},
        {"name": ENV_LEASE_TOKEN_FILE, "value": f"{LEASE_TOKEN_DIR}/token"},
        {"name": ENV_BATCH_UID, "value": batch.uid},
    ]
    names = {entry["name"] for entry in ours}
    container["env"] = [e for e in container.get("env") or [] if e.get("name") not in names] + ours
    container.setdefault("volumeMounts", []).append(
        {"name": LEASE_TOKEN_VOLUME, "mountPath": LEASE_TOKEN_DIR, "readOnly": True}
    )
    _container_with_gpus(spec, container)
    pod_spec["containers"][position] = container
    _restrict_pod(pod_spec, position)
    pod_spec.setdefault("volumes", []).append(
        {
            "name": LEASE_TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": LEASE_AUDIENCE,
                            "expirationSeconds": LEASE_TOKEN_SECONDS,
                            "path": "token",
                        }
                    }
                ]
            },
        }
    )
    # The lease token is the only credential a warm pod needs: no API token unless asked.
    pod_spec.setdefault("automountServiceAccountToken", False)
    labels = {LABEL_WARM_SLOT: str(number)}
    name = warm_pod_name(batch.name, number)
    return _manifest(batch, spec, name, labels, pod_spec, container["name"])


def pod_shape(spec: GPUBatchSpec) -> dict[str, Any]:
    """What every task pod of the batch asks of the cluster (the template with the GPU limit),
    as a pod template: what a Kueue Workload needs to reserve quota for the batch's pods."""
    template = spec.template.model_dump(mode="json", by_alias=True, exclude_none=True)
    pod_spec: dict[str, Any] = copy.deepcopy(template["spec"])
    position = spec.task_container_index()
    _container_with_gpus(spec, pod_spec["containers"][position])
    _restrict_pod(pod_spec, position)
    pod_spec["restartPolicy"] = "Never"
    if spec.gpu_models:
        _add_gpu_model_affinity(pod_spec, spec.gpu_model_label, spec.gpu_models)
    return {"spec": pod_spec}


def _container_with_gpus(spec: GPUBatchSpec, container: dict[str, Any]) -> None:
    """The GPU limit (and request) and the restricted defaults on the task container."""
    resources = container.setdefault("resources", {})
    gpus = str(spec.gpus_per_task)
    resources.setdefault("limits", {})[spec.gpu_resource] = gpus
    resources.setdefault("requests", {})[spec.gpu_resource] = gpus
    container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
    _restrict_container(container)


def _restrict_pod(pod_spec: dict[str, Any], position: int) -> None:
    for other in pod_spec.get("initContainers") or []:
        _restrict_container(other)
    for index, other in enumerate(pod_spec["containers"]):
        if index != position:
            _restrict_container(other)


def _manifest(
    batch: BatchRef,
    spec: GPUBatchSpec,
    name: str,
    own_labels: dict[str, str],
    pod_spec: dict[str, Any],
    task_container: str,
) -> dict[str, Any]:
    """A pod of the batch: our labels, the tracking finalizer, the owner reference, and the
    pod-level defaults (never restarted, non-root, GPU model affinity)."""
    metadata = (
        spec.template.model_dump(mode="json", by_alias=True, exclude_none=True).get("metadata")
        or {}
    )
    pod_spec["restartPolicy"] = "Never"
    security = pod_spec.setdefault("securityContext", {})
    security.setdefault("runAsNonRoot", True)
    security.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    if spec.gpu_models:
        _add_gpu_model_affinity(pod_spec, spec.gpu_model_label, spec.gpu_models)
    labels = {
        **(metadata.get("labels") or {}),
        LABEL_BATCH_NAME: label_value(batch.name),
        LABEL_BATCH_UID: batch.uid,
        **own_labels,
    }
    if batch.workload is not None:
        labels.pop(LABEL_KUEUE_QUEUE, None)
    elif batch.queue is not None:  # the batch's label wins over one in the pod template
        labels[LABEL_KUEUE_QUEUE] = batch.queue
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": batch.namespace,
            "labels": labels,
            "annotations": {
                **(metadata.get("annotations") or {}),
                ANNOTATION_TASK_CONTAINER: task_container,
            },
            "finalizers": [FINALIZER_TRACKING],
            "ownerReferences": [
                {
                    "apiVersion": batch.api_version,
                    "kind": batch.kind,
                    "name": batch.name,
                    "uid": batch.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }


def _restrict_container(container: dict[str, Any]) -> None:
    """Restricted Pod Security defaults, only where the template says nothing."""
    security = container.setdefault("securityContext", {})
    security.setdefault("allowPrivilegeEscalation", False)
    security.setdefault("capabilities", {"drop": ["ALL"]})


def _add_gpu_model_affinity(pod_spec: dict[str, Any], label: str, models: list[str]) -> None:
    """Only these models (required), earlier ones preferred (weights 100, 99, ...)."""
    requirement = {"key": label, "operator": "In", "values": list(models)}
    node_affinity = pod_spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = node_affinity.setdefault(
        "requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": []}
    )
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({"matchExpressions": []})
    for term in terms:  # terms are ORed: the model requirement must hold in each
        term.setdefault("matchExpressions", []).append(requirement)
    if len(models) > 1:
        preferred = node_affinity.setdefault("preferredDuringSchedulingIgnoredDuringExecution", [])
        for rank, model in enumerate(models):
            preferred.append(
                {
                    "weight": max(1, 100 - rank),
                    "preference": {
                        "matchExpressions": [{"key": label, "operator": "In", "values": [model]}]
                    },
                }
            )
