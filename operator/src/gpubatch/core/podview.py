"""A task pod reduced to what the planner needs, extracted once per pod event.

The operator keeps one of these per task pod in its in-memory index instead of whole pod objects:
a pod is ~5 KiB of JSON, a PodView a few hundred bytes, and the planner reads only these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from gpubatch.api.names import (
    ANNOTATION_STOP_REASON,
    ANNOTATION_TASK_CONTAINER,
    FINALIZER_TRACKING,
    LABEL_ATTEMPT,
    LABEL_BATCH_UID,
    LABEL_KUEUE_QUEUE,
    LABEL_TASK_INDEX,
)

TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})
#: Pod conditions that mark a pod as disrupted: Kubernetes' own (preemption, eviction, node
#: loss) and Kueue's, which it sets on a plain pod it evicts or preempts before deleting it.
DISRUPTION_CONDITIONS: Final = frozenset({"DisruptionTarget", "TerminationTarget"})
#: The scheduling gate Kueue's pod webhook puts on each pod until its workload is admitted.
KUEUE_ADMISSION_GATE: Final = "kueue.x-k8s.io/admission"
#: Pod status reasons that mean the pod was taken away, not that the task failed.
DISRUPTION_REASONS: Final = frozenset(
    {
        "Evicted",
        "Preempting",
        "Preempted",
        "NodeLost",
        "NodeShutdown",
        "Terminated",
        "UnexpectedAdmissionError",
        "DeletionByPodGC",
        "DeletionByTaintManager",
        "TerminationByKubelet",
    }
)


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class PodView:
    """One attempt of one task, as last seen in the API."""

    name: str
    namespace: str
    batch_uid: str
    index: int
    attempt: int
    phase: str
    node: str | None
    deleting: bool
    tracked: bool  # still carries our tracking finalizer
    exit_code: int | None
    message: str  # termination message of the task container (the worker's result record)
    reason: str  # container or pod reason, e.g. Error, OOMKilled, Evicted, DeadlineExceeded
    disruption: str | None  # why the pod was disrupted (DisruptionTarget condition), if it was
    stop_reason: str | None  # set by the operator before it deletes a running pod on purpose
    created_at: float | None
    started_at: float | None
    finished_at: float | None
    #: Why a container waits before it runs (ErrImagePull, CreateContainerConfigError, ...):
    #: the task container's, else the first other container reporting one. None when none waits.
    waiting_reason: str | None = None
    waiting_message: str = ""
    #: The scheduler's PodScheduled=False message of an unschedulable pod, None otherwise.
    unschedulable: str | None = None
    #: The Kueue LocalQueue a pod waits on while Kueue's admission gate holds it back from the
    #: scheduler (PodScheduled False, reason SchedulingGated); None when not gated by Kueue.
    awaiting_admission: str | None = None

    @property
    def terminal(self) -> bool:
        """Finished for good: Succeeded/Failed, or deleted before any node ran it (such a pod
        stays Pending forever while a finalizer holds it, since no kubelet will ever end it)."""
        return self.phase in TERMINAL_PHASES or (self.deleting and self.node is None)

    @property
    def scheduled(self) -> bool:
        return self.node is not None

    @property
    def running(self) -> bool:
        return self.phase == "Running" and not self.deleting

    @property
    def key(self) -> tuple[int, int]:
        return (self.index, self.attempt)


def pod_view(pod: dict[str, Any], task_container: str | None = None) -> PodView | None:
    """Extract the PodView of a task pod; None for a pod that lacks our labels (not ours)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    try:
        index = int(labels[LABEL_TASK_INDEX])
        attempt = int(labels[LABEL_ATTEMPT])
        batch_uid = str(labels[LABEL_BATCH_UID])
    except (KeyError, ValueError):
        return None
    return pod_state(pod, batch_uid, index, attempt, task_container)


def pod_state(
    pod: dict[str, Any],
    batch_uid: str,
    index: int,
    attempt: int,
    task_container: str | None = None,
) -> PodView:
    """The PodView of any pod of ours, with the task identity given (a warm pod has none of
    its own: `core.warmpod` keeps its number there)."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    annotations = metadata.get("annotations") or {}

    statuses = status.get("containerStatuses") or []
    wanted = (
        task_container
        or annotations.get(ANNOTATION_TASK_CONTAINER)
        or (spec.get("containers") or [{}])[0].get("name")
    )
    container = next(
        (s for s in statuses if s.get("name") == wanted), statuses[0] if statuses else {}
    )
    terminated = (container.get("state") or {}).get("terminated") or {}
    running = (container.get("state") or {}).get("running") or {}

    disruption, unschedulable = None, None
    for condition in status.get("conditions") or []:
        if condition.get("type") in DISRUPTION_CONDITIONS and condition.get("status") == "True":
            disruption = str(condition.get("reason") or "Disrupted")
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            unschedulable = str(condition.get("message") or "Unschedulable")
    waiting = _waiting(container, [*(status.get("initContainerStatuses") or []), *statuses])
    pod_reason = str(status.get("reason") or "")
    if disruption is None and pod_reason in DISRUPTION_REASONS:
        disruption = pod_reason

    return PodView(
        name=str(metadata.get("name")),
        namespace=str(metadata.get("namespace")),
        batch_uid=batch_uid,
        index=index,
        attempt=attempt,
        phase=str(status.get("phase") or "Pending"),
        node=spec.get("nodeName") or None,
        deleting=metadata.get("deletionTimestamp") is not None,
        tracked=FINALIZER_TRACKING in (metadata.get("finalizers") or []),
        exit_code=terminated.get("exitCode"),
        message=str(terminated.get("message") or ""),
        reason=str(terminated.get("reason") or pod_reason or ""),
        disruption=disruption,
        stop_reason=annotations.get(ANNOTATION_STOP_REASON),
        created_at=_timestamp(metadata.get("creationTimestamp")),
        # The task container's start, not the pod's: an image pull can take minutes on a GPU
        # node, and taskDeadlineSeconds must not count it.
        started_at=_timestamp(
            terminated.get("startedAt") or running.get("startedAt") or status.get("startTime")
        ),
        finished_at=_timestamp(terminated.get("finishedAt")),
        waiting_reason=str(waiting.get("reason")) if waiting.get("reason") else None,
        waiting_message=str(waiting.get("message") or ""),
        unschedulable=unschedulable,
        awaiting_admission=_awaiting_admission(metadata, spec),
    )


def _awaiting_admission(metadata: dict[str, Any], spec: dict[str, Any]) -> str | None:
    """The queue a pod waits on while Kueue's admission gate is on it (Kueue removes the gate
    when the pod's workload is admitted, and the scheduler then sees the pod)."""
    gates = {gate.get("name") for gate in spec.get("schedulingGates") or []}
    if KUEUE_ADMISSION_GATE not in gates:
        return None
    return str(((metadata.get("labels") or {}).get(LABEL_KUEUE_QUEUE)) or "")


def _waiting(task: dict[str, Any], others: list[dict[str, Any]]) -> dict[str, Any]:
    """The task container's waiting state, else the first other container's that has a
    reason other than the routine ContainerCreating/PodInitializing (an init container whose
    image cannot be pulled holds the task back just the same)."""
    own = (task.get("state") or {}).get("waiting") or {}
    if own.get("reason") not in (None, "", "ContainerCreating", "PodInitializing"):
        return dict(own)
    for other in others:
        waiting = (other.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") not in (None, "", "ContainerCreating", "PodInitializing"):
            return dict(waiting)
    return dict(own)
