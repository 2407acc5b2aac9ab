"""A GPUBatch status as people read it: state, counts, conditions, GPU models, failures.

One renderer for every place a status is shown - `status`, the end of `watch`, `report`, and the
end of a local `run` (whose status is computed by the same planner as the operator's) - so a
batch reads the same on a cluster and on a workstation.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gpubatch.api.status import ConditionType, GPUBatchStatus, GpuModelStats, Reason
from gpubatch.cli.table import format_duration, format_table
from gpubatch.core.indexset import IndexSet

#: Index sets longer than this are cut in the status view (the full set is in the object).
INDEXES_SHOWN = 120


def condition_true(status: GPUBatchStatus, type_: ConditionType) -> bool:
    return any(c.type == type_ and c.status == "True" for c in status.conditions)


def batch_state(status: GPUBatchStatus | None) -> str:
    """One word: Complete, Failed, Suspended, Stuck (task pods stuck before Running on a
    configuration error), Running, or Pending (no status written yet)."""
    if status is None or not status.conditions:
        return "Pending"
    for type_ in (ConditionType.FAILED, ConditionType.COMPLETE, ConditionType.SUSPENDED):
        if condition_true(status, type_):
            return str(type_)
    if condition_true(status, ConditionType.TASKS_STUCK):
        return "Stuck"
    return "Running"


def stuck_note(status: GPUBatchStatus) -> str | None:
    """Why task pods are not running, when they are stuck or wait for capacity: the
    TasksStuck condition's reason and message (task, kubelet or scheduler words, the fix)."""
    found = next((c for c in status.conditions if c.type == ConditionType.TASKS_STUCK), None)
    if found is None or (found.status != "True" and found.reason != Reason.WAITING_FOR_CAPACITY):
        return None
    label = "stuck" if found.status == "True" else "waiting"
    return f"{label} ({found.reason}): {found.message}"


def finished(status: GPUBatchStatus) -> bool:
    """The batch reached an end: Complete or Failed."""
    return condition_true(status, ConditionType.COMPLETE) or condition_true(
        status, ConditionType.FAILED
    )


def all_succeeded(status: GPUBatchStatus) -> bool:
    """Every task succeeded or was skipped: the test for exit code 0."""
    counts = status.counts
    return (
        not condition_true(status, ConditionType.FAILED)
        and counts.failed == 0
        and counts.succeeded + counts.skipped == counts.total
    )


def elapsed(status: GPUBatchStatus, now: datetime | None = None) -> float | None:
    """Seconds from the first dispatch to completion (or to now while running)."""
    if status.start_time is None:
        return None
    end = status.completion_time or now or datetime.now(UTC)
    return max(0.0, (end - status.start_time).total_seconds())


def summary_line(status: GPUBatchStatus, now: datetime | None = None) -> str:
    """`240 tasks: 238 succeeded, 2 failed, 0 skipped in 1m40s`."""
    c = status.counts
    line = f"{c.total} tasks: {c.succeeded} succeeded, {c.failed} failed, {c.skipped} skipped"
    if c.running or c.pending:
        line += f", {c.running} running, {c.pending} pending"
    took = elapsed(status, now)
    return line + (f" in {format_duration(took)}" if took is not None else "")


def status_text(title: str, status: GPUBatchStatus | None, now: datetime | None = None) -> str:
    """The `gpubatch status` view: state, counts, conditions, failed indexes, retries."""
    if status is None:
        return f"{title}\n  state: Pending (the operator has not written a status yet)"
    c = status.counts
    lines = [
        f"{title}",
        f"  state: {batch_state(status)}   progress: {status.progress or c.progress()}   "
        f"{summary_line(status, now)}",
        "",
        format_table(
            ["total", "pending", "running", "succeeded", "failed", "skipped"],
            [[c.total, c.pending, c.running, c.succeeded, c.failed, c.skipped]],
            indent="  ",
        ),
    ]
    note = stuck_note(status)
    if note is not None and not condition_true(status, ConditionType.TASKS_STUCK):
        lines += ["", f"  {note}"]  # (a True TasksStuck is in the conditions below)
    true = [cond for cond in status.conditions if cond.status == "True"]
    if true:
        lines += ["", "  conditions that are True:"]
        rows = [
            [cond.type, cond.reason, _ago(cond.last_transition_time, now), cond.message]
            for cond in true
        ]
        lines.append(format_table(["type", "reason", "since", "message"], rows, indent="    "))
    if status.failed_indexes:
        lines += ["", f"  failed tasks: {_cut(status.failed_indexes)}"]
    if status.retries:
        waiting = ", ".join(f"{r.index} (attempt {r.attempts})" for r in status.retries[:10]) + (
            " ..." if len(status.retries) > 10 else ""
        )
        lines += [f"  being retried: {waiting}"]
    if status.recent_failures:
        lines += ["", "  last failures (newest last; all recent ones: gpubatch report):"]
        lines.append(failures_table(status, limit=3, indent="    "))
    return "\n".join(lines)


def model_rows(stats: list[GpuModelStats]) -> list[list[object]]:
    """Per GPU model: tasks, failed attempts, mean/p95/max duration, share of the work done,
    and speed-up against the slowest model (by mean run time of succeeded tasks)."""
    done = sum(s.succeeded for s in stats)
    means = [s.mean_seconds for s in stats if s.mean_seconds]
    slowest = max(means) if means else None
    rows: list[list[object]] = []
    for s in sorted(stats, key=lambda s: (-s.succeeded, s.model)):
        speedup = f"{slowest / s.mean_seconds:.2f}x" if slowest and s.mean_seconds else "-"
        rows.append(
            [
                s.model,
                s.succeeded,
                s.failed,
                format_duration(s.mean_seconds),
                format_duration(s.p95_seconds),
                format_duration(s.max_seconds),
                f"{s.succeeded / done:.1%}" if done else "-",
                speedup,
            ]
        )
    return rows


MODEL_HEADERS = ["GPU model", "tasks", "failed", "mean", "p95", "max", "share", "speed-up"]


def model_table(status: GPUBatchStatus, *, indent: str = "") -> str:
    if not status.gpu_models:
        return f"{indent}(no task has finished on a GPU model yet)"
    return format_table(MODEL_HEADERS, model_rows(status.gpu_models), indent=indent)


def failures_table(status: GPUBatchStatus, *, limit: int = 20, indent: str = "") -> str:
    failures = status.recent_failures[-limit:]
    if not failures:
        return f"{indent}(no failures)"
    rows = [
        [
            f.index,
            f.attempt,
            "-" if f.exit_code is None else f.exit_code,
            f.reason,
            f.node or "-",
            f.gpu_model or "-",
            f.time.strftime("%H:%M:%S"),
            _one_line(f.message),
        ]
        for f in failures
    ]
    return format_table(
        ["task", "attempt", "exit", "reason", "node", "GPU model", "time", "message"],
        rows,
        indent=indent,
    )


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else "..." + flat[-(limit - 3) :]


def _cut(indexes: str) -> str:
    if len(indexes) <= INDEXES_SHOWN:
        return indexes
    return f"{indexes[:INDEXES_SHOWN]}... ({len(IndexSet.parse(indexes))} tasks)"


def _ago(when: datetime, now: datetime | None) -> str:
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    return f"{format_duration(max(0.0, seconds))} ago"
