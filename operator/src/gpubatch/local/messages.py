"""The lines `gpubatch run` prints about attempts that ended, once the planner has judged them.

A line is written after the pass that recorded the attempt, so it can say what happens next:
failed for good, or retried as which attempt after which backoff (not the attempt's own run
time, which is what a reader of "will be retried after 0.7s" took it for). A long failure
message keeps its start, where it says what failed, and is marked as cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

from gpubatch.api.status import GPUBatchStatus, RetryState
from gpubatch.core.indexset import IndexSet
from gpubatch.local.journal import AttemptRecord

#: How much of a failure message a line shows (the whole one is in the records).
MESSAGE_SHOWN_CHARS: Final = 300


def ended_lines(
    records: list[AttemptRecord], status: GPUBatchStatus, now: datetime, *, verbose: bool
) -> list[str]:
    """One line per attempt that did not succeed (and, with `verbose`, per success or skip)."""
    failed = IndexSet.parse(status.failed_indexes)
    retrying = {r.index: r for r in status.retries}
    lines = []
    for record in records:
        took = f"{record.end - record.start:.1f}s"
        outcome = record.outcome
        if outcome in ("succeeded", "skipped"):
            if verbose:
                lines.append(f"task {record.index} {outcome} on {record.slot} in {took}")
            continue
        result = record.result
        why = (
            f"{result.reason}: {clip(' '.join(result.message.split()))}"
            if result is not None
            else f"the attempt ended with code {record.exit_code} and left no result"
        )
        lines.append(
            f"task {record.index} attempt {record.attempt} on {record.slot} failed after "
            f"{took}, {verdict(record.index, outcome, failed, retrying, now)} - {why} "
            f"(log: {record.log})"
        )
    return lines


def verdict(
    index: int,
    outcome: str,
    failed: IndexSet,
    retrying: Mapping[int, RetryState],
    now: datetime,
) -> str:
    """What happens next to a task whose attempt did not succeed."""
    if outcome == "stopped":
        return "stopped by the run"
    if index in failed:
        return "failed for good"
    retry = retrying.get(index)
    if retry is None:
        return "not retried"
    when = ""
    if retry.not_before is not None:
        wait = (retry.not_before - now).total_seconds()
        when = f" after a backoff of {max(0.0, wait):.1f}s"
    return f"will be retried as attempt {retry.attempts}{when}"


def clip(message: str) -> str:
    """The start of a long message (where it says what failed), marked as cut."""
    if len(message) <= MESSAGE_SHOWN_CHARS:
        return message
    return message[: MESSAGE_SHOWN_CHARS - 3] + "..."
