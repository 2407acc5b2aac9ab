"""`gpubatch report` and the end of `gpubatch run`: how the work went, per GPU model and per GPU.

The per-model table (tasks, mean/p95/max duration, share of the work, speed-up against the
slowest model) comes from the status, which the operator - or the local run's planner - keeps
up to date in bounded space, so it covers every task even when pods are long gone. Local runs
add a per-slot table from their attempt records: the seeds' per-GPU statistics (tasks, busy
time, mean, utilisation) and the speed-up of the whole run over a single slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from gpubatch.api.status import GPUBatchStatus
from gpubatch.cli.statusview import failures_table, model_table, summary_line
from gpubatch.cli.table import format_duration, format_table
from gpubatch.local.journal import AttemptRecord, LocalState, SlotRecord

SLOT_HEADERS = ["slot", "device", "tasks", "failed", "busy", "mean", "utilisation"]


def wall_seconds(records: Sequence[AttemptRecord]) -> float:
    """From the first attempt's start to the last one's end."""
    if not records:
        return 0.0
    return max(r.end for r in records) - min(r.start for r in records)


def slot_table(
    records: Sequence[AttemptRecord], slots: Sequence[SlotRecord], wall: float | None = None
) -> str:
    """Per slot: tasks succeeded, attempts failed, busy time, mean task time, utilisation;
    then the run's speed-up over one slot (total busy time / wall time) and its efficiency."""
    wall = wall_seconds(records) if wall is None else wall
    rows = []
    total_busy = 0.0
    for slot in slots:
        mine = [r for r in records if r.slot == slot.name]
        ok = [r for r in mine if r.outcome == "succeeded"]
        busy = sum(_busy(r) for r in mine)
        total_busy += busy
        durations = [r.result.duration_seconds for r in ok if r.result is not None]
        mean = sum(durations) / len(durations) if durations else None
        rows.append(
            [
                slot.name,
                slot.model,
                len(ok),
                sum(1 for r in mine if r.outcome == "failed"),
                format_duration(busy),
                format_duration(mean),
                f"{busy / wall:.0%}" if wall > 0 else "-",
            ]
        )
    table = format_table(SLOT_HEADERS, rows)
    if wall > 0 and total_busy > 0 and slots:
        speedup = total_busy / wall
        table += (
            f"\nspeed-up over one slot: {speedup:.2f}x with {len(slots)} slot(s) "
            f"(efficiency {speedup / len(slots):.0%}; wall time {format_duration(wall)})"
        )
    return table


def _busy(record: AttemptRecord) -> float:
    """The attempt's own time (from its result), not the runner's bookkeeping around it."""
    return (
        record.result.duration_seconds if record.result is not None else record.end - record.start
    )


RUN_HEADERS = ["run", "started", "attempts", "succeeded", "skipped", "failed", "stopped", "wall"]


def runs_table(records: Sequence[AttemptRecord]) -> str:
    """One row per run of the batch (oldest first): what each run did. A run that found every
    task done has no attempts and no row; the status says it skipped them."""
    by_run: dict[str, list[AttemptRecord]] = {}
    for record in records:
        by_run.setdefault(record.run, []).append(record)
    rows = []
    for run, mine in sorted(by_run.items(), key=lambda item: min(r.start for r in item[1])):
        outcomes = [r.outcome for r in mine]
        started = datetime.fromtimestamp(min(r.start for r in mine), UTC)
        rows.append(
            [
                run,
                started.strftime("%Y-%m-%d %H:%M:%S"),
                len(mine),
                outcomes.count("succeeded"),
                outcomes.count("skipped"),
                outcomes.count("failed"),
                outcomes.count("stopped"),
                format_duration(wall_seconds(mine)),
            ]
        )
    return format_table(RUN_HEADERS, rows)


def batch_report(title: str, status: GPUBatchStatus, *, failures: int = 20) -> str:
    """The per-GPU-model table and the recent failures, as `report` prints them."""
    parts = [
        title,
        f"  {summary_line(status)}",
        "",
        "per GPU model (succeeded tasks; speed-up is against the slowest model's mean):",
        model_table(status, indent="  "),
    ]
    if status.recent_failures:
        shown = min(failures, len(status.recent_failures))
        parts += ["", f"recent failures ({shown}, newest last):"]
        parts.append(failures_table(status, limit=failures, indent="  "))
    else:
        parts += ["", "no failures."]
    return "\n".join(parts)


def local_report(state: LocalState, records: Sequence[AttemptRecord]) -> str:
    """`report --local`: the latest run's batch report, then the batch's history: every run
    recorded in the state folder, and the per-slot table over all of them (a re-run that only
    skips finished tasks must not hide the work the earlier runs did)."""
    note = " (interrupted)" if state.interrupted else ""
    text = batch_report(f"latest local run {state.run} of batch {state.name}{note}", state.status)
    if records:
        runs = len({r.run for r in records})
        text += f"\n\nruns with attempts ({runs}, oldest first):\n" + _indent(runs_table(records))
        text += f"\n\nper slot (all {runs} run(s)):\n" + _indent(slot_table(records, state.slots))
    return text


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
