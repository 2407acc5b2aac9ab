"""What a batch would do, before anything runs: each task's parameters, outputs, command, and
whether it would be skipped because its outputs already exist.

`gpubatch expand` prints this; `gpubatch run` uses the same scan to skip finished tasks before
starting any worker, as the operator does before creating any pod. The scan is one bulk
existence check (`core.outputscan` with `edges.storage.existing`: one listing per output folder
or object prefix), not one stat per task, so it stays quick at 100k tasks.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gpubatch.api.spec import ParamValue
from gpubatch.cli.table import format_table
from gpubatch.core import outputscan
from gpubatch.core.outputscan import OutputScan, TaskState
from gpubatch.core.prepare import PreparedBatch
from gpubatch.edges import storage


def scan_outputs(prepared: PreparedBatch) -> OutputScan:
    """The shared scan (core.outputscan) against storage; when storage cannot answer, nothing is
    skipped up front and `problem` says why (each task's worker re-checks its own outputs)."""
    try:
        return outputscan.scan_outputs(prepared, storage.existing)
    except storage.StorageError as err:
        return OutputScan(problem=f"could not check the outputs: {err}")


@dataclass(frozen=True)
class TaskRow:
    """One task as `expand` lists it."""

    index: int
    state: TaskState
    params: dict[str, ParamValue]
    outputs: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    problem: str | None = None

    def to_json(self) -> str:
        data: dict[str, object] = {
            "index": self.index,
            "state": self.state,
            "params": self.params,
            "outputs": list(self.outputs),
            "command": list(self.argv),
        }
        if self.problem:
            data["problem"] = self.problem
        return json.dumps(data, ensure_ascii=False)


def task_rows(
    prepared: PreparedBatch, scan: OutputScan, indexes: Iterable[int]
) -> Iterator[TaskRow]:
    """Rows for the given tasks: rendered outputs and argv (command, then args)."""
    for index in indexes:
        task = prepared.tasks.task(index)
        state = scan.state(index)
        if state == "invalid":
            yield TaskRow(index, state, dict(task.params), problem=scan.invalid[index])
            continue
        rendered = prepared.render(index)
        argv = (*(rendered.command or ()), *(rendered.args or ()))
        yield TaskRow(index, state, dict(task.params), rendered.outputs, argv)


def listing(rows: Iterable[TaskRow], *, show_command: bool) -> str:
    """The rows as an aligned table."""
    headers = ["task", "state", "params", "outputs"] + (["command"] if show_command else [])
    table = []
    for row in rows:
        params = " ".join(f"{k}={v}" for k, v in row.params.items())
        outputs = " ".join(row.outputs) if row.state != "invalid" else f"({row.problem})"
        cells: list[object] = [row.index, row.state, params, outputs]
        if show_command:
            cells.append(shlex.join(row.argv))
        table.append(cells)
    return format_table(headers, table)


def summary(name: str, prepared: PreparedBatch, scan: OutputScan) -> str:
    total = len(prepared.tasks)
    skip, invalid = len(scan.complete), len(scan.invalid)
    order = prepared.spec.order
    how = "index" if order.by == "index" else f"longest first by {order.cost_param}"
    params = ", ".join(prepared.tasks.param_names) or "none"
    return (
        f"{name}: {total} tasks (parameters: {params}); {skip} would be skipped (outputs "
        f"exist), {total - skip - invalid} would run, {invalid} invalid; dispatch order: {how}"
    )
