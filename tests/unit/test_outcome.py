"""What one finished attempt means for its task: `classify` and the retry backoff."""

from __future__ import annotations

import pytest

from gpubatch.api.result import ExitCode, GpuIdentity, Outcome, Reason
from gpubatch.api.spec import Retry
from gpubatch.core.outcome import (
    STOP_BATCH_ENDED,
    STOP_TASK_DEADLINE,
    AttemptOutcome,
    Verdict,
    backoff_seconds,
    classify,
)
from gpubatch.core.podview import PodView
from support.builders import a_pod, a_result, failed, succeeded, unscheduled

pytestmark = pytest.mark.unit


def a_retry_policy(**changes: object) -> Retry:
    fields: dict[str, object] = {"limit": 3, "backoffSeconds": 10, "maxBackoffSeconds": 600}
    fields.update(changes)
    return Retry.model_validate(fields)


def judge(
    pod: PodView,
    *,
    failures_before: int = 0,
    node_model: str | None = None,
    **retry: object,
) -> AttemptOutcome:
    return classify(
        pod,
        retry=a_retry_policy(**retry),
        failures_before=failures_before,
        node_model=node_model,
    )


# ----------------------------------------------------------------------------------- backoff
def test_no_counted_failure_means_no_delay():
    assert backoff_seconds(a_retry_policy(), 0) == 0.0
    assert backoff_seconds(a_retry_policy(), -1) == 0.0


def test_backoff_starts_at_backoff_seconds_and_doubles():
    retry = a_retry_policy(backoffSeconds=10)
    assert [backoff_seconds(retry, n) for n in (1, 2, 3, 4)] == [10.0, 20.0, 40.0, 80.0]


def test_backoff_is_capped_even_after_very_many_failures():
    retry = a_retry_policy(backoffSeconds=10, maxBackoffSeconds=60)
    assert backoff_seconds(retry, 4) == 60.0
    assert backoff_seconds(retry, 10_000) == 60.0


def test_zero_backoff_retries_at_once():
    retry = a_retry_policy(backoffSeconds=0, maxBackoffSeconds=0)
    assert backoff_seconds(retry, 5) == 0.0


# --------------------------------------------------------------------------------- success
def test_a_succeeded_pod_is_a_success_with_the_workers_duration_and_gpu():
    verdict = judge(succeeded(message=a_result(duration_seconds=12.5).encode()), node_model="L4")
    assert verdict.verdict is Verdict.SUCCEEDED
    assert not verdict.counted
    assert (verdict.duration_seconds, verdict.gpu_model, verdict.exit_code) == (
        12.5,
        "NVIDIA-A100",
        0,
    )


def test_without_a_worker_result_duration_comes_from_the_container_and_model_from_the_node():
    verdict = judge(succeeded(started_at=1000.0, finished_at=1030.5), node_model="L4")
    assert verdict.verdict is Verdict.SUCCEEDED
    assert (verdict.duration_seconds, verdict.gpu_model) == (30.5, "L4")


def test_unknown_times_give_no_duration():
    verdict = judge(succeeded(started_at=None, finished_at=None))
    assert verdict.duration_seconds is None
    assert verdict.gpu_model is None


def test_a_mixed_multi_gpu_task_reports_both_models():
    gpus = (GpuIdentity(model="B", uuid="GPU-2"), GpuIdentity(model="A", uuid="GPU-1"))
    verdict = judge(succeeded(message=a_result(gpus=gpus).encode()), node_model="L4")
    assert verdict.gpu_model == "A+B"


def test_a_skipped_result_is_a_skip_not_a_success():
    message = a_result(outcome=Outcome.SKIPPED, reason=Reason.OUTPUTS_EXIST).encode()
    verdict = judge(succeeded(message=message))
    assert verdict.verdict is Verdict.SKIPPED
    assert verdict.reason == "OutputsExist"
    assert not verdict.counted


# ---------------------------------------------------------------------------------- failure
def test_an_ordinary_failure_is_retried_counted_after_the_backoff():
    verdict = judge(failed(exit_code=3), failures_before=1)
    assert verdict.verdict is Verdict.RETRY
    assert verdict.counted
    assert verdict.delay_seconds == 20.0  # the second counted failure
    assert (verdict.reason, verdict.message, verdict.exit_code) == (
        "Error",
        "command exited with code 3",
        3,
    )


def test_the_workers_result_explains_the_failure():
    message = a_result(
        outcome=Outcome.FAILED,
        exit_code=ExitCode.NO_GPU,
        reason=Reason.NO_GPU,
        message="NVML: no devices",
    ).encode()
    verdict = judge(failed(exit_code=80, message=message, reason="Error"))
    assert (verdict.reason, verdict.message, verdict.exit_code) == ("NoGPU", "NVML: no devices", 80)
    assert verdict.gpu_model == "NVIDIA-A100"


def test_a_result_without_a_message_is_described_by_its_exit_code():
    message = a_result(
        outcome=Outcome.FAILED, exit_code=137, reason=Reason.SIGNALED, message=""
    ).encode()
    verdict = judge(failed(exit_code=137, message=message))
    assert verdict.message == "killed by SIGKILL"


def test_an_oom_killed_container_keeps_the_kubelets_reason():
    verdict = judge(failed(exit_code=137, reason="OOMKilled"))
    assert (verdict.reason, verdict.message) == ("OOMKilled", "killed by SIGKILL")


def test_a_failed_pod_without_any_exit_code_still_gets_a_reason():
    verdict = judge(failed(exit_code=None, reason=""))
    assert (verdict.reason, verdict.message, verdict.exit_code) == ("Error", "pod failed", None)


def test_a_non_retriable_exit_code_fails_the_task_at_once():
    verdict = judge(failed(exit_code=2), nonRetriableExitCodes=[2, 5])
    assert verdict.verdict is Verdict.FAILED
    assert verdict.counted
    assert "exit code 2 is listed as non-retriable" in verdict.message


def test_a_non_retriable_exit_has_its_own_reason_and_keeps_the_pods_reason_in_the_message():
    verdict = judge(failed(exit_code=2), nonRetriableExitCodes=[2])
    assert verdict.reason == "NonRetriableExit"
    assert verdict.message.startswith("Error: command exited with code 2 (exit code 2 is")


def test_non_retriable_codes_are_read_from_the_workers_result_first():
    message = a_result(outcome=Outcome.FAILED, exit_code=5, reason=Reason.NON_ZERO_EXIT).encode()
    verdict = judge(failed(exit_code=1, message=message), nonRetriableExitCodes=[5])
    assert verdict.verdict is Verdict.FAILED
    assert verdict.exit_code == 5


def test_the_failure_that_exceeds_the_limit_is_final():
    assert judge(failed(), failures_before=2, limit=3).verdict is Verdict.RETRY
    assert judge(failed(), failures_before=3, limit=3).verdict is Verdict.FAILED


def test_limit_zero_means_the_first_failure_is_final():
    verdict = judge(failed(), failures_before=0, limit=0)
    assert verdict.verdict is Verdict.FAILED
    assert verdict.delay_seconds == 0.0


# ------------------------------------------------------------------------------ disruptions
@pytest.mark.parametrize(
    "pod",
    [
        failed(exit_code=137, disruption="DeletionByTaintManager"),
        failed(exit_code=143, disruption="PreemptionByScheduler", deleting=True),
        failed(exit_code=None, reason="Evicted", disruption="Evicted"),
        unscheduled(deleting=True),
        failed(exit_code=143, deleting=True),  # deleted by someone, no reason given
    ],
    ids=["taint-manager", "preempted", "evicted", "deleted-unscheduled", "deleted-running"],
)
def test_a_disrupted_attempt_is_retried_at_once_without_counting(pod: PodView):
    verdict = judge(pod, failures_before=3, limit=3)
    assert verdict.verdict is Verdict.RETRY
    assert not verdict.counted
    assert verdict.delay_seconds == 0.0
    assert "retried, not counted" in verdict.message


def test_a_disruption_is_named_after_its_cause():
    assert judge(failed(disruption="DeletionByPodGC")).reason == "DeletionByPodGC"
    assert judge(unscheduled(deleting=True)).reason == "PodDeleted"


def test_a_disruption_is_not_mistaken_for_a_non_retriable_exit_code():
    verdict = judge(failed(exit_code=137, disruption="Evicted"), nonRetriableExitCodes=[137])
    assert verdict.verdict is Verdict.RETRY
    assert not verdict.counted


# ------------------------------------------------------------------------ stops on purpose
def test_an_attempt_stopped_for_its_task_deadline_is_a_counted_failure():
    pod = failed(exit_code=143, deleting=True, stop_reason=STOP_TASK_DEADLINE)
    verdict = judge(pod)
    assert verdict.verdict is Verdict.RETRY
    assert verdict.counted
    assert (verdict.reason, verdict.message) == (
        "DeadlineExceeded",
        "the attempt ran past taskDeadlineSeconds",
    )


def test_the_kubelets_own_deadline_counts_like_the_task_deadline():
    verdict = judge(failed(exit_code=None, reason="DeadlineExceeded"))
    assert (verdict.reason, verdict.counted) == ("DeadlineExceeded", True)
    assert verdict.message == "the attempt ran past taskDeadlineSeconds"


def test_a_deadline_attempt_can_exhaust_the_retries():
    pod = failed(exit_code=143, deleting=True, stop_reason=STOP_TASK_DEADLINE)
    assert judge(pod, failures_before=1, limit=1).verdict is Verdict.FAILED


@pytest.mark.parametrize("pod_phase", ["Failed", "Pending"])
def test_an_attempt_stopped_because_the_batch_ended_is_neither_counted_nor_retried(pod_phase):
    node = "gpu-node-1" if pod_phase == "Failed" else None
    pod = a_pod(
        phase=pod_phase, node=node, exit_code=143, deleting=True, stop_reason=STOP_BATCH_ENDED
    )
    verdict = judge(pod)
    assert verdict.verdict is Verdict.STOPPED
    assert not verdict.counted
    assert verdict.reason == STOP_BATCH_ENDED


def test_a_task_that_finished_before_its_stop_took_effect_still_succeeded():
    pod = succeeded(deleting=True, stop_reason=STOP_BATCH_ENDED)
    assert judge(pod).verdict is Verdict.SUCCEEDED
