"""Expand a batch's tasks and check its outputs: the slow, blocking part of a reconcile.

Both run in a worker thread (`asyncio.to_thread`) so globbing a folder of 100k images or reading
a 100k-line manifest never stalls kopf's event loop, and both run once per spec generation, not
per pass: the result is kept in the batch's runtime.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gpubatch.api.spec import GPUBatchSpec
from gpubatch.core.errors import SpecError, TaskSpecError
from gpubatch.core.expand import FileInfo, Task, TaskList
from gpubatch.core.indexset import IndexSet
from gpubatch.core.planner import DispatchOrder
from gpubatch.core.prepare import PreparedBatch, parse_spec, prepare_batch
from gpubatch.edges import storage


class StorageTaskIO:
    """Storage seen through the expansion's FileLister and ManifestReader protocols.

    Local matches carry their size (one stat each), which longestFirst needs when the cost
    parameter is a file.
    """

    def glob(self, pattern: str) -> list[FileInfo]:
        found = []
        for path in storage.glob(pattern):
            size = None
            if not storage.is_url(path):
                with contextlib.suppress(OSError):
                    size = os.stat(path.removeprefix("file://")).st_size
            found.append(FileInfo(path, size))
        return found

    def open(self, path: str) -> Iterator[str]:
        return storage.read_lines(path)


@dataclass
class LoadedTasks:
    """One generation's prepared batch (spec, tasks, templates) and dispatch order, or the
    error that says why the spec cannot run."""

    generation: int
    spec: GPUBatchSpec | None
    prepared: PreparedBatch | None = None
    order: DispatchOrder | None = None
    error: str | None = None

    @property
    def total(self) -> int:
        return len(self.prepared.tasks) if self.prepared is not None else 0


def load_tasks(raw_spec: dict[str, Any], generation: int) -> LoadedTasks:
    """Parse, expand and compile; never raises for a user's mistake (it lands in `.error`)."""
    try:
        spec = parse_spec(raw_spec)
    except SpecError as error:
        return LoadedTasks(generation=generation, spec=None, error=str(error))
    try:
        io = StorageTaskIO()
        prepared = prepare_batch(spec, files=io, manifests=io)
        permutation = prepared.order()
        order = DispatchOrder(
            len(prepared.tasks), None if isinstance(permutation, range) else permutation
        )
    except SpecError as error:
        return LoadedTasks(generation=generation, spec=spec, error=str(error))
    except storage.StorageError as error:
        return LoadedTasks(
            generation=generation,
            spec=spec,
            error=f"storage: {error}; check the operator's storage access",
        )
    return LoadedTasks(generation=generation, spec=spec, prepared=prepared, order=order)


@dataclass
class ScanResult:
    """Which tasks have all their outputs already, and which tasks cannot be rendered."""

    complete: IndexSet = field(default_factory=IndexSet)
    invalid: dict[int, str] = field(default_factory=dict)
    checked: int = 0


def scan_outputs(loaded: LoadedTasks, skip: IndexSet) -> ScanResult:
    """Bulk existence check of every task's outputs, except tasks in `skip` (already final).

    One listing per output folder or prefix (edges.storage.existing), not one stat per task.
    """
    result = ScanResult()
    prepared = loaded.prepared
    if prepared is None or not prepared.spec.outputs:
        return result
    per_task: list[tuple[int, tuple[str, ...]]] = []
    for task in _tasks_except(prepared.tasks, skip):
        try:
            per_task.append((task.index, prepared.renderer.outputs(task)))
        except TaskSpecError as error:
            result.invalid[task.index] = str(error)
    found = storage.existing(path for _, paths in per_task for path in paths)
    for index, paths in per_task:
        if all(path in found for path in paths):
            result.complete.add(index)
    result.checked = len(per_task)
    return result


def _tasks_except(tasks: TaskList, skip: IndexSet) -> Iterator[Task]:
    for index in range(len(tasks)):
        if index not in skip:
            yield tasks.task(index)
