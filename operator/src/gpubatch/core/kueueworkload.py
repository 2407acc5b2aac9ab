"""A batch admitted whole by one Kueue Workload: the MultiKueue route.

A queued batch's pods are admitted one by one (docs/kueue.md), but MultiKueue mirrors objects,
not pods: on the manager cluster a Workload owned by the batch reserves quota for the batch as
one unit (`parallelism` task pods), MultiKueue copies the Workload to worker clusters, and the
one whose Kueue admits it gets a copy of the batch, labelled with the Workload's name
(kueue.x-k8s.io/prebuilt-workload-name), which that cluster's gpubatch operator runs. The rules
of that contract, as pure functions:

- the manager's Workload asks for `parallelism` pods shaped like the batch's task pods
  (`batch_workload`), so the quota it reserves is what the batch will use;
- on the worker the batch runs at most as many pods as its Workload was admitted for, and none
  before it is admitted (`admitted_pods`): the quota is never exceeded, and the pods are not
  queued again one by one, which would count the same GPUs twice;
- when the batch ends, the worker marks its Workload Finished (`finished_condition`): that
  releases the worker's quota, and MultiKueue then copies the final status to the manager's
  batch and finishes the manager's Workload, releasing the quota there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from gpubatch.api.names import (
    API_VERSION,
    KIND,
    LABEL_KUEUE_PREBUILT_WORKLOAD,
    LABEL_KUEUE_QUEUE,
    MANAGED_BY_MULTIKUEUE,
)
from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.status import ConditionType, GPUBatchStatus
from gpubatch.core.podspec import label_value, pod_shape

WORKLOAD_API_VERSION: Final = "kueue.x-k8s.io/v1beta2"
#: The one pod set of a batch's Workload: every task pod has the same shape.
POD_SET: Final = "main"
#: Kueue's condition (and its reasons) that ends a Workload and releases its quota.
FINISHED: Final = "Finished"


PARALLELISM_REQUIRED: Final = (
    "spec.parallelism is required for a batch admitted as one Kueue Workload (MultiKueue): "
    "the Workload reserves quota for that many task pods at once; set spec.parallelism"
)


class WorkloadError(ValueError):
    """A batch that cannot be admitted as one Workload; the message says what to change."""


@dataclass(frozen=True)
class WorkloadFinish:
    """How a finished batch ends its Workload: Kueue's reason, and the batch's own words."""

    reason: Literal["Succeeded", "Failed"]
    message: str


def workload_name(batch: str) -> str:
    """The Workload's default name: the batch's, prefixed so it is recognisably ours, and
    shortened with a hash to fit a label value (the batch's prebuilt-workload label names it)."""
    return label_value(f"gpubatch-{batch}")


@dataclass(frozen=True)
class MultiKueueSubmission:
    """A batch document ready for a MultiKueue manager cluster, and its Workload's queue and
    name (the batch's prebuilt-workload label names the Workload)."""

    document: dict[str, Any]
    queue: str
    workload: str


def for_multikueue(document: Mapping[str, Any]) -> MultiKueueSubmission:
    """The batch labelled with its Workload's name (kept when the file names one already).

    Refused before anything is applied when the Workload could not be made. The queue label is
    required: it names the manager's LocalQueue, whose ClusterQueue has the
    MultiKueue admission check; without it no Workload could be queued."""
    if not (document.get("spec") or {}).get("parallelism"):
        raise WorkloadError(PARALLELISM_REQUIRED)
    metadata = dict(document.get("metadata") or {})
    labels = dict(metadata.get("labels") or {})
    queue = labels.get(LABEL_KUEUE_QUEUE)
    if not queue:
        raise WorkloadError(
            f"a batch with spec.managedBy {MANAGED_BY_MULTIKUEUE} needs the label "
            f"{LABEL_KUEUE_QUEUE} naming the manager cluster's LocalQueue (whose ClusterQueue "
            "has the MultiKueue admission check); add it under metadata.labels"
        )
    workload = labels.get(LABEL_KUEUE_PREBUILT_WORKLOAD) or workload_name(str(metadata["name"]))
    labels[LABEL_KUEUE_PREBUILT_WORKLOAD] = workload
    metadata["labels"] = labels
    return MultiKueueSubmission({**document, "metadata": metadata}, str(queue), str(workload))


def batch_workload(
    batch: Mapping[str, Any], spec: GPUBatchSpec, queue: str, name: str
) -> dict[str, Any]:
    """The Workload that admits `batch` (as stored: it needs the uid) as one unit.

    Its controller owner reference is what MultiKueue follows from the Workload to the batch
    (and the API server's garbage collector deletes it with the batch)."""
    if spec.parallelism is None:
        raise WorkloadError(PARALLELISM_REQUIRED)
    metadata = batch.get("metadata") or {}
    if not metadata.get("uid"):
        raise WorkloadError("the batch has no uid yet: create it before its Workload")
    return {
        "apiVersion": WORKLOAD_API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": name,
            "namespace": metadata.get("namespace") or "default",
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "queueName": queue,
            "podSets": [{"name": POD_SET, "count": spec.parallelism, "template": pod_shape(spec)}],
        },
    }


def admitted_pods(workload: Mapping[str, Any]) -> int | None:
    """How many pods the Workload is admitted for; None while it is not admitted."""
    status = workload.get("status") or {}
    admitted = any(
        c.get("type") == "Admitted" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    admission = status.get("admission") or {}
    if not admitted or not admission:
        return None
    return sum(int(p.get("count") or 0) for p in admission.get("podSetAssignments") or [])


def workload_finish(status: GPUBatchStatus) -> WorkloadFinish | None:
    """The Workload's ending once the batch has ended (Complete or Failed); else None."""
    for condition in status.conditions:
        if condition.status != "True":
            continue
        if condition.type == ConditionType.COMPLETE:
            return WorkloadFinish("Succeeded", condition.message)
        if condition.type == ConditionType.FAILED:
            return WorkloadFinish("Failed", condition.message)
    return None


def finished_condition(finish: WorkloadFinish, now: datetime) -> dict[str, Any]:
    """Kueue's Finished condition, as applied to the Workload's status."""
    return {
        "type": FINISHED,
        "status": "True",
        "reason": finish.reason,
        "message": finish.message[:32768] or finish.reason,
        "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
