"""Builders for the planner's inputs: specs, pod views, pod objects, statuses and observations.

Each builder gives a typical object and takes only the fields a test is about as overrides, so a
test reads as the situation it describes ("a failed pod of task 3, attempt 1, exit code 2").
Every time is relative to one fixed `NOW`: the planner has no clock of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from gpubatch.api.names import (
    FINALIZER_TRACKING,
    LABEL_ATTEMPT,
    LABEL_BATCH_UID,
    LABEL_TASK_INDEX,
)
from gpubatch.api.result import GpuIdentity, Outcome, Reason, TaskResult
from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.status import Condition, GPUBatchStatus, RetryState
from gpubatch.core.indexset import IndexSet
from gpubatch.core.planner import DispatchOrder, Limits, Observation
from gpubatch.core.podview import PodView
from gpubatch.core.stuck import NodeCapacity

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
BATCH = "clips"
BATCH_UID = "0b7f-uid"
NAMESPACE = "work"


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def ts(moment: datetime) -> float:
    return moment.timestamp()


# ------------------------------------------------------------------------------------ specs
def deep_merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with nested mappings in `changes` merged in (other values replace)."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def a_raw_spec(**changes: Any) -> dict[str, Any]:
    """A spec as written on the wire (camelCase); nested mappings in `changes` are merged."""
    raw: dict[str, Any] = {
        "tasks": {"range": {"param": "shot", "stop": 10}},
        "outputs": ["/out/{shot}.npy"],
        "retry": {"limit": 3, "backoffSeconds": 0, "maxBackoffSeconds": 0},
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "task",
                        "image": "registry.example.com/task:1",
                        "command": ["python", "run.py", "--shot", "{shot}", "{outputs[0]}"],
                    }
                ]
            }
        },
    }
    return deep_merge(raw, changes)


def a_spec(**changes: Any) -> GPUBatchSpec:
    """A validated spec; retries have no backoff unless a test asks for one."""
    return GPUBatchSpec.model_validate(a_raw_spec(**changes))


# ------------------------------------------------------------------------------- pod views
def a_pod(index: int = 0, attempt: int = 0, **changes: Any) -> PodView:
    """A running, scheduled, tracked pod of task `index`, attempt `attempt`."""
    fields: dict[str, Any] = {
        "name": f"{BATCH}-{index}-{attempt}",
        "namespace": NAMESPACE,
        "batch_uid": BATCH_UID,
        "index": index,
        "attempt": attempt,
        "phase": "Running",
        "node": "gpu-node-1",
        "deleting": False,
        "tracked": True,
        "exit_code": None,
        "message": "",
        "reason": "",
        "disruption": None,
        "stop_reason": None,
        "created_at": ts(ago(120)),
        "started_at": ts(ago(100)),
        "finished_at": None,
    }
    fields.update(changes)
    return PodView(**fields)


def running(index: int = 0, attempt: int = 0, **changes: Any) -> PodView:
    return a_pod(index, attempt, **changes)


def unscheduled(index: int = 0, attempt: int = 0, **changes: Any) -> PodView:
    """Pending, not bound to a node yet."""
    return a_pod(
        index, attempt, **{"phase": "Pending", "node": None, "started_at": None, **changes}
    )


def succeeded(index: int = 0, attempt: int = 0, **changes: Any) -> PodView:
    fields: dict[str, Any] = {
        "phase": "Succeeded",
        "exit_code": 0,
        "reason": "Completed",
        "started_at": ts(ago(100)),
        "finished_at": ts(ago(10)),
    }
    fields.update(changes)
    return a_pod(index, attempt, **fields)


def failed(index: int = 0, attempt: int = 0, exit_code: int | None = 1, **changes: Any) -> PodView:
    fields: dict[str, Any] = {
        "phase": "Failed",
        "exit_code": exit_code,
        "reason": "Error",
        "started_at": ts(ago(100)),
        "finished_at": ts(ago(10)),
    }
    fields.update(changes)
    return a_pod(index, attempt, **fields)


def a_result(**changes: Any) -> TaskResult:
    """The worker's result record (what it writes to the termination message)."""
    fields: dict[str, Any] = {
        "outcome": Outcome.SUCCEEDED,
        "exit_code": 0,
        "reason": Reason.COMPLETED,
        "duration_seconds": 42.0,
        "gpus": (GpuIdentity(model="NVIDIA-A100", uuid="GPU-1"),),
        "node": "gpu-node-1",
        "message": "",
    }
    fields.update(changes)
    return TaskResult.model_validate(fields)


# ------------------------------------------------------------------------------ pod objects
def a_pod_object(
    index: int = 0,
    attempt: int = 0,
    *,
    phase: str = "Running",
    node: str | None = "gpu-node-1",
    finalizers: Sequence[str] = (FINALIZER_TRACKING,),
    deleting: bool = False,
    annotations: Mapping[str, str] | None = None,
    containers: Sequence[str] = ("task",),
    container_statuses: Sequence[Mapping[str, Any]] = (),
    conditions: Sequence[Mapping[str, Any]] = (),
    reason: str | None = None,
    start_time: str | None = "2025-03-01T11:58:20Z",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A task pod as the API server returns it (only the fields pod_view reads)."""
    metadata: dict[str, Any] = {
        "name": f"{BATCH}-{index}-{attempt}",
        "namespace": NAMESPACE,
        "creationTimestamp": "2025-03-01T11:58:00Z",
        "labels": dict(
            labels
            if labels is not None
            else {
                LABEL_BATCH_UID: BATCH_UID,
                LABEL_TASK_INDEX: str(index),
                LABEL_ATTEMPT: str(attempt),
            }
        ),
        "finalizers": list(finalizers),
        "annotations": dict(annotations or {}),
    }
    if deleting:
        metadata["deletionTimestamp"] = "2025-03-01T11:59:50Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [dict(c) for c in conditions],
        "containerStatuses": [dict(s) for s in container_statuses],
    }
    if start_time is not None:
        status["startTime"] = start_time
    if reason is not None:
        status["reason"] = reason
    spec: dict[str, Any] = {"containers": [{"name": name} for name in containers]}
    if node is not None:
        spec["nodeName"] = node
    return {"metadata": metadata, "spec": spec, "status": status}


def terminated_status(
    name: str = "task",
    *,
    exit_code: int = 0,
    reason: str = "Completed",
    message: str = "",
    started: str = "2025-03-01T11:58:30Z",
    finished: str = "2025-03-01T11:59:40Z",
) -> dict[str, Any]:
    return {
        "name": name,
        "state": {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "message": message,
                "startedAt": started,
                "finishedAt": finished,
            }
        },
    }


# ----------------------------------------------------------------------------- observations
def a_status(
    *,
    succeeded: Iterable[int] = (),
    failed: Iterable[int] = (),
    skipped: Iterable[int] = (),
    retries: Iterable[RetryState] = (),
    conditions: Iterable[Condition] = (),
    **changes: Any,
) -> GPUBatchStatus:
    status = GPUBatchStatus(
        succeeded_indexes=IndexSet(succeeded).format(),
        failed_indexes=IndexSet(failed).format(),
        skipped_indexes=IndexSet(skipped).format(),
        retries=list(retries),
        conditions=list(conditions),
    )
    return status.model_copy(update=changes)


def a_retry(index: int, attempts: int = 1, failures: int = 1, **changes: Any) -> RetryState:
    return RetryState(index=index, attempts=attempts, failures=failures, **changes)


def an_observation(
    spec: GPUBatchSpec | None = None,
    *,
    total: int = 10,
    status: GPUBatchStatus | None = None,
    pods: Sequence[PodView] = (),
    order: DispatchOrder | None = None,
    limits: Limits | None = None,
    now: datetime = NOW,
    generation: int = 1,
    **changes: Any,
) -> Observation:
    """A pass over a 10-task batch, nothing dispatched yet, unless told otherwise."""
    return Observation(
        spec=spec or a_spec(),
        generation=generation,
        now=now,
        total=total,
        status=status or GPUBatchStatus(),
        pods=list(pods),
        order=order or DispatchOrder(total),
        limits=limits or Limits(max_pending=1000, max_creates_per_pass=1000),
        **changes,
    )


# ------------------------------------------------------------------------ stuck before Running
def stuck(
    index: int = 0,
    attempt: int = 0,
    reason: str = "ImagePullBackOff",
    *,
    created_seconds_ago: float = 30,
    **changes: Any,
) -> PodView:
    """A pod bound to a node whose container waits on `reason` (e.g. a bad image)."""
    fields: dict[str, Any] = {
        "phase": "Pending",
        "started_at": None,
        "created_at": ts(ago(created_seconds_ago)),
        "waiting_reason": reason,
        "waiting_message": 'Back-off pulling image "acme/encdoer:1"'
        if "Image" in reason
        else "runtime said no",
    }
    fields.update(changes)
    return a_pod(index, attempt, **fields)


def unschedulable(
    index: int = 0,
    attempt: int = 0,
    message: str = "0/8 nodes are available: 8 Insufficient nvidia.com/gpu.",
    **changes: Any,
) -> PodView:
    """Pending, not bound: the scheduler said PodScheduled=False/Unschedulable."""
    return unscheduled(index, attempt, **{"unschedulable": message, **changes})


def a_node(name: str = "gpu-node-1", model: str = "NVIDIA-A100", gpus: int = 8) -> NodeCapacity:
    """A GPU node: its model label (the default gpuModelLabel) and allocatable GPUs."""
    return NodeCapacity(
        name=name,
        labels={"nvidia.com/gpu.product": model},
        allocatable={"nvidia.com/gpu": str(gpus), "cpu": "64"},
    )
