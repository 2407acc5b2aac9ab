"""Pydantic models of the GPUBatch status, written by the operator and read by people and tools.

The status must stay small at any batch size (well under 64 KiB at 100k tasks), so it holds
counts, compressed index sets ("0-99,150"), a bounded list of recent failures and fixed-size
per-GPU-model histograms: nothing grows with the number of tasks except the index sets, whose
size grows with the number of *runs* of consecutive indexes.

Every field is declared in the CRD too, which is generated from these models: the API server
silently prunes status fields its schema does not declare.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: Most entries kept in status.recentFailures (newest last).
RECENT_FAILURES_LIMIT: Final = 20
#: Longest message kept per failure (a tail of the termination message or pod reason).
FAILURE_MESSAGE_LIMIT: Final = 256
#: Longest condition message.
CONDITION_MESSAGE_LIMIT: Final = 1024
#: Buckets per duration histogram; see `gpubatch.core.histogram` for the bucket bounds.
HISTOGRAM_BUCKETS: Final = 90
#: Model name used when a task's GPU model is unknown (no label, no worker report).
UNKNOWN_GPU_MODEL: Final = "unknown"


def list_map(key: str) -> dict[str, Any]:
    """`json_schema_extra` of a list the API server merges by `key` (server-side apply)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


class ConditionType(StrEnum):
    """Condition types, so `kubectl wait --for=condition=Complete gpubatch/x` works."""

    PROGRESSING = "Progressing"
    COMPLETE = "Complete"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    #: Task pods are stuck before Running on a configuration error (True), or only wait for
    #: capacity (False, reason WaitingForCapacity) or for Kueue's admission (False, reason
    #: WaitingForAdmission, naming the queue). Set once a pod has been stuck or waiting.
    TASKS_STUCK = "TasksStuck"
    #: kstatus's generic conditions: Reconciling True while the batch works toward its end,
    #: Stalled True while it cannot (Failed, or stuck on a configuration error).
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class Reason(StrEnum):
    """Condition reasons (CamelCase, as Kubernetes conventions ask)."""

    INVALID_SPEC = "InvalidSpec"
    DISPATCHING = "Dispatching"
    ALL_TASKS_FINISHED = "AllTasksFinished"
    TOO_MANY_FAILED_TASKS = "TooManyFailedTasks"
    TASKS_FAILED = "TasksFailed"  # every task finished, at least one of them failed
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    TASK_LIST_CHANGED = "TaskListChanged"
    TASKS_STUCK = "TasksStuck"
    WAITING_FOR_CAPACITY = "WaitingForCapacity"
    WAITING_FOR_ADMISSION = "WaitingForAdmission"  # Kueue's quota holds task pods back
    NOT_STUCK = "NotStuck"
    FINISHED = "Finished"


class FailureReason(StrEnum):
    """`recentFailures[].reason` values the operator itself decides (the others come from the
    pod or the worker: Error, OOMKilled, NoGPU, Evicted, ...)."""

    INVALID_TASK = "InvalidTask"  # the task cannot be rendered; it failed without a pod
    NON_RETRIABLE_EXIT = "NonRetriableExit"  # exit code in retry.nonRetriableExitCodes
    DEADLINE_EXCEEDED = "DeadlineExceeded"  # the attempt ran past taskDeadlineSeconds


class _StatusModel(BaseModel):
    """Base of status models: camelCase on the wire, unknown fields ignored.

    Ignored rather than refused: a status written by a newer operator must still load in an
    older one during an upgrade.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
    )


class Condition(_StatusModel):
    """A condition, following the Kubernetes convention (metav1.Condition)."""

    type: str = Field(
        min_length=1,
        max_length=316,
        description="Progressing, Complete, Failed, Suspended, TasksStuck, Reconciling or Stalled.",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        description="One CamelCase word for machines, e.g. InvalidSpec or TooManyFailedTasks.",
    )
    message: str = Field(
        "",
        max_length=CONDITION_MESSAGE_LIMIT,
        description="What happened, for people; for InvalidSpec, what to change.",
    )
    last_transition_time: datetime = Field(
        description="When status last changed from one value to another."
    )
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was computed from."
    )


class TaskCounts(_StatusModel):
    """Tasks by state; total = pending + running + succeeded + failed + skipped."""

    total: int = Field(0, ge=0, description="Tasks in the batch.")
    pending: int = Field(
        0,
        ge=0,
        description="Tasks not running yet: not dispatched, waiting to be scheduled, or "
        "waiting out a retry backoff.",
    )
    running: int = Field(0, ge=0, description="Tasks whose pod is running.")
    succeeded: int = Field(0, ge=0, description="Tasks that ran and succeeded.")
    failed: int = Field(0, ge=0, description="Tasks that failed after their retries.")
    skipped: int = Field(
        0, ge=0, description="Tasks skipped because all their outputs already existed."
    )

    def finished(self) -> int:
        """Tasks in a final state: succeeded, failed or skipped."""
        return self.succeeded + self.failed + self.skipped

    def progress(self) -> str:
        """The `progress` printer column: finished tasks over total, e.g. 150/200."""
        return f"{self.finished()}/{self.total}"


class TaskFailure(_StatusModel):
    """One failed task attempt, kept so people see why without reading pod logs."""

    index: int = Field(ge=0, description="Task index.")
    attempt: int = Field(ge=0, description="Attempt number, 0 for the first.")
    exit_code: int | None = Field(None, description="Exit code of the task container.")
    reason: str = Field(
        max_length=128,
        description=(
            "Short cause: InvalidTask, NonRetriableExit or DeadlineExceeded (decided by the "
            "operator), else the pod's or worker's, e.g. Error, OOMKilled, NoGPU, Evicted."
        ),
    )
    message: str = Field(
        "",
        max_length=FAILURE_MESSAGE_LIMIT,
        description="Tail of the termination message or pod status message.",
    )
    node: str | None = Field(None, max_length=253, description="Node the attempt ran on.")
    gpu_model: str | None = Field(None, max_length=253, description="GPU model it ran on.")
    time: datetime = Field(description="When the attempt ended.")


class GpuModelStats(_StatusModel):
    """Per-GPU-model aggregates, so fast and slow cards can be compared without logs.

    Durations are those of succeeded tasks only: failed attempts often die early and would make
    a model look faster than it is. The histogram has fixed log-spaced buckets so p95 can be
    updated incrementally in bounded space (see `gpubatch.core.histogram`).
    """

    model: str = Field(
        min_length=1,
        max_length=253,
        description="GPU model, e.g. NVIDIA-A100-SXM4-80GB, or unknown.",
    )
    succeeded: int = Field(0, ge=0, description="Tasks that succeeded on this model.")
    failed: int = Field(0, ge=0, description="Task attempts that failed on this model.")
    total_seconds: float = Field(
        0.0, ge=0, description="Sum of the run times of succeeded tasks, in seconds."
    )
    mean_seconds: float | None = Field(
        None, ge=0, description="Mean run time of succeeded tasks, in seconds."
    )
    p95_seconds: float | None = Field(
        None,
        ge=0,
        description="95th percentile run time of succeeded tasks, in seconds (estimated from "
        "the histogram, within about 20%).",
    )
    max_seconds: float | None = Field(
        None, ge=0, description="Longest run time of a succeeded task, in seconds."
    )
    histogram: list[Annotated[int, Field(description="Tasks in this bucket.")]] = Field(
        default_factory=list,
        max_length=HISTOGRAM_BUCKETS,
        description="Counts of succeeded tasks per run-time bucket: bucket 0 is under 1 s, "
        "bucket i covers 2^((i-1)/4) to 2^(i/4) s, the last bucket everything longer. "
        "Trailing empty buckets are omitted.",
    )


class RetryState(_StatusModel):
    """Attempt bookkeeping of one task that has been retried and is not final yet.

    Kept in the status (not in operator memory) so a restarted operator knows which attempt
    comes next and how many failures count against retry.limit. Entries leave the list when the
    task becomes final, so its length is bounded by the tasks in flight, not the batch size.
    """

    index: int = Field(ge=0, description="Task index.")
    attempts: int = Field(
        ge=0, description="Attempts made so far; the next attempt has this number."
    )
    failures: int = Field(
        0, ge=0, description="Failed attempts that count against retry.limit (not disruptions)."
    )
    not_before: datetime | None = Field(
        None, description="Earliest time of the next attempt (retry backoff)."
    )


class StuckState(_StatusModel):
    """Task attempts given up stuck before Running, in one spec generation.

    Kept in the status so the count toward stuck.maxAttempts survives an operator restart; a
    new spec generation starts it afresh (the spec was fixed)."""

    generation: int = Field(ge=0, description="Spec generation the count belongs to.")
    given_up: int = Field(0, ge=0, description="Attempts given up stuck in this generation.")
    reason: str = Field(
        "", max_length=128, description="Waiting reason of the last given-up attempt."
    )
    message: str = Field(
        "",
        max_length=CONDITION_MESSAGE_LIMIT,
        description="What the last given-up attempt waited on, and the fix.",
    )


class GPUBatchStatus(_StatusModel):
    """What has happened to the batch, kept small at any number of tasks."""

    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation of the spec this status reflects."
    )
    counts: TaskCounts = Field(default_factory=TaskCounts, description="Tasks by state.")
    progress: str = Field(
        "",
        max_length=64,
        description="Finished (succeeded, failed or skipped) over total tasks, e.g. 150/200.",
    )
    succeeded_indexes: str = Field(
        "",
        description="Indexes of succeeded tasks as compressed ranges, e.g. 0-99,150,200-201.",
    )
    failed_indexes: str = Field("", description="Indexes of failed tasks as compressed ranges.")
    skipped_indexes: str = Field(
        "",
        description="Indexes of tasks skipped because their outputs existed, as compressed ranges.",
    )
    recent_failures: list[Annotated[TaskFailure, Field(description="One failed attempt.")]] = Field(
        default_factory=list,
        max_length=RECENT_FAILURES_LIMIT,
        description="The most recent failed attempts (at most 20, newest last).",
    )
    gpu_models: list[
        Annotated[GpuModelStats, Field(description="Statistics of one GPU model.")]
    ] = Field(
        default_factory=list,
        description="Statistics per GPU model, sorted by model.",
        json_schema_extra=list_map("model"),
    )
    retries: list[Annotated[RetryState, Field(description="Retry state of one task.")]] = Field(
        default_factory=list,
        json_schema_extra=list_map("index"),
        description="Tasks being retried: attempt numbers and counted failures, so a restarted "
        "operator continues where it stopped. Final tasks leave this list.",
    )
    tasks_fingerprint: str | None = Field(
        None,
        max_length=128,
        description="Digest of the expanded task list (file lists and manifest contents "
        "included); a change means the index -> task mapping changed under a running batch.",
    )
    stuck: StuckState | None = Field(
        None,
        description="Task attempts given up stuck before Running on a configuration error, "
        "counted toward spec.stuck.maxAttempts.",
    )
    start_time: datetime | None = Field(None, description="When the first task was dispatched.")
    completion_time: datetime | None = Field(
        None, description="When the batch became Complete or Failed."
    )
    suspended_seconds: float = Field(
        0.0,
        ge=0,
        description="Seconds the batch spent suspended after it started (ended suspensions); "
        "activeDeadlineSeconds does not count them.",
    )
    suspended_since: datetime | None = Field(
        None, description="When the current suspension began, while spec.suspend is true."
    )
    conditions: list[Annotated[Condition, Field(description="One condition.")]] = Field(
        default_factory=list,
        json_schema_extra=list_map("type"),
        description="Progressing, Complete, Failed, Suspended, TasksStuck, Reconciling and "
        "Stalled, one entry per type.",
    )
