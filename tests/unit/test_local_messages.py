"""The lines `gpubatch run` prints about attempts that did not succeed (pure: records in)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpubatch.api.result import ExitCode, Outcome, Reason, TaskResult
from gpubatch.api.status import GPUBatchStatus, RetryState
from gpubatch.local.journal import AttemptRecord
from gpubatch.local.messages import MESSAGE_SHOWN_CHARS, ended_lines

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def a_failure(message: str, index: int = 7) -> AttemptRecord:
    result = TaskResult(
        outcome=Outcome.FAILED,
        exit_code=ExitCode.WORKER_ERROR,
        reason=Reason.NON_ZERO_EXIT,
        duration_seconds=0.7,
        message=message,
    )
    return AttemptRecord(
        run="r1",
        index=index,
        attempt=0,
        slot="cpu0",
        model="CPU",
        start=100.0,
        end=100.7,
        exit_code=1,
        result=result,
        log="task-7.log",
    )


def test_a_retried_task_says_which_attempt_comes_and_after_what_backoff() -> None:
    retry = RetryState(index=7, attempts=1, failures=1, not_before=NOW + timedelta(seconds=4))
    (line,) = ended_lines([a_failure("boom")], GPUBatchStatus(retries=[retry]), NOW, verbose=False)
    assert "failed after 0.7s, will be retried as attempt 1 after a backoff of 4.0s" in line


def test_a_long_message_keeps_its_start_and_is_marked_as_cut() -> None:
    message = "the command exited with code 1; " + "x" * 1000
    (line,) = ended_lines([a_failure(message)], GPUBatchStatus(), NOW, verbose=False)
    assert "NonZeroExit: the command exited with code 1; xxx" in line
    shown = line.split("NonZeroExit: ")[1].split(" (log:")[0]
    assert len(shown) == MESSAGE_SHOWN_CHARS and shown.endswith("...")


def test_a_task_failed_for_good_says_so() -> None:
    status = GPUBatchStatus(failed_indexes="7")
    (line,) = ended_lines([a_failure("boom")], status, NOW, verbose=False)
    assert "failed for good - NonZeroExit: boom (log: task-7.log)" in line
