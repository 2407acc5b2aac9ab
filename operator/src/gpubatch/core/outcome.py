"""What one finished task pod means for its task: success, skip, retry, or final failure.

Pure classification, kept apart from the planner so each rule (disruptions do not count, some
exit codes are final, backoff doubles) is one small tested function.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from gpubatch.api.result import Outcome, TaskResult, describe_exit_code
from gpubatch.api.spec import Retry
from gpubatch.api.status import FailureReason
from gpubatch.core.podview import PodView

#: Stop reasons the operator writes on a pod before deleting it on purpose.
STOP_TASK_DEADLINE: Final = FailureReason.DEADLINE_EXCEEDED.value
STOP_BATCH_ENDED: Final = "BatchStopped"


class Verdict(StrEnum):
    SUCCEEDED = "Succeeded"
    SKIPPED = "Skipped"
    RETRY = "Retry"  # try again (after `delay_seconds`)
    FAILED = "Failed"  # final: no more attempts
    STOPPED = "Stopped"  # the batch ended; neither counted nor retried


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """The verdict on one attempt, with what the status records about it."""

    verdict: Verdict
    counted: bool  # does this attempt count against the retry limit?
    reason: str
    message: str
    exit_code: int | None
    duration_seconds: float | None
    gpu_model: str | None
    delay_seconds: float = 0.0


def backoff_seconds(retry: Retry, failures: int) -> float:
    """Delay before the retry that follows the `failures`-th counted failure (1-based)."""
    if failures <= 0:
        return 0.0
    delay = retry.backoff_seconds * (2 ** min(failures - 1, 30))
    return float(min(delay, retry.max_backoff_seconds))


def _duration(pod: PodView, result: TaskResult | None) -> float | None:
    if result is not None:
        return result.duration_seconds
    if pod.started_at is not None and pod.finished_at is not None:
        return max(0.0, pod.finished_at - pod.started_at)
    return None


def classify(
    pod: PodView,
    *,
    retry: Retry,
    failures_before: int,
    node_model: str | None,
) -> AttemptOutcome:
    """Judge a terminal pod. `failures_before` counts earlier counted failures of its task."""
    result = TaskResult.try_decode(pod.message)
    model = (result.gpu_model if result is not None else None) or node_model
    duration = _duration(pod, result)
    exit_code = result.exit_code if result is not None else pod.exit_code

    def outcome(
        verdict: Verdict, counted: bool, reason: str, message: str, delay: float = 0.0
    ) -> AttemptOutcome:
        return AttemptOutcome(verdict, counted, reason, message, exit_code, duration, model, delay)

    if pod.phase == "Succeeded":
        if result is not None and result.outcome is Outcome.SKIPPED:
            return outcome(Verdict.SKIPPED, False, result.reason, "outputs already existed")
        return outcome(Verdict.SUCCEEDED, False, "Completed", "")

    # The pod failed. Why?
    if pod.stop_reason == STOP_BATCH_ENDED:
        return outcome(Verdict.STOPPED, False, STOP_BATCH_ENDED, "stopped because the batch ended")
    if pod.disruption is not None or (pod.deleting and pod.stop_reason is None):
        # Taken away (node lost, eviction, preemption, deleted by someone): not the task's fault.
        why = pod.disruption or "PodDeleted"
        return outcome(Verdict.RETRY, False, why, f"pod disrupted ({why}); retried, not counted")

    if pod.stop_reason == STOP_TASK_DEADLINE or pod.reason == "DeadlineExceeded":
        reason, message = STOP_TASK_DEADLINE, "the attempt ran past taskDeadlineSeconds"
    elif result is not None:
        reason = str(result.reason)
        message = result.message or describe_exit_code(result.exit_code)
    else:
        reason = pod.reason or "Error"
        message = describe_exit_code(exit_code) if exit_code is not None else "pod failed"

    if exit_code is not None and exit_code in retry.non_retriable_exit_codes:
        return outcome(
            Verdict.FAILED,
            True,
            FailureReason.NON_RETRIABLE_EXIT,
            f"{reason}: {message} (exit code {exit_code} is listed as non-retriable in "
            "retry.nonRetriableExitCodes)",
        )
    failures = failures_before + 1
    if failures > retry.limit:
        return outcome(Verdict.FAILED, True, reason, message)
    return outcome(Verdict.RETRY, True, reason, message, backoff_seconds(retry, failures))
