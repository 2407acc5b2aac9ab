"""Expand a batch's tasks and check its outputs: the slow, blocking part of a reconcile.

Both run in a worker thread (`asyncio.to_thread`) so globbing a folder of 100k images or reading
a 100k-line manifest never stalls kopf's event loop, and both run once per spec generation, not
per pass: the result is kept in the batch's runtime. The work itself is shared with `gpubatch
run`: `core.prepare` with `edges.storage.Storage` as the file lister and manifest reader, and
`core.outputscan` with `edges.storage.existing` as the existence check, so both executors accept
the same specs and skip the same tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpubatch.api.spec import GPUBatchSpec
from gpubatch.core import outputscan
from gpubatch.core.errors import SpecError
from gpubatch.core.indexset import IndexSet
from gpubatch.core.outputscan import OutputScan
from gpubatch.core.planner import DispatchOrder
from gpubatch.core.prepare import PreparedBatch, parse_spec, prepare_batch
from gpubatch.edges import storage

#: The operator's name for the scan's result (see core.outputscan).
ScanResult = OutputScan


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
        source = storage.Storage()
        prepared = prepare_batch(spec, files=source, manifests=source)
        order = prepared.dispatch_order()
    except SpecError as error:
        return LoadedTasks(generation=generation, spec=spec, error=str(error))
    except storage.StorageError as error:
        return LoadedTasks(
            generation=generation,
            spec=spec,
            error=f"storage: {error}; check the operator's storage access",
        )
    return LoadedTasks(generation=generation, spec=spec, prepared=prepared, order=order)


def scan_outputs(loaded: LoadedTasks, skip: IndexSet) -> OutputScan:
    """Bulk existence check of every task's outputs, except tasks in `skip` (already final).

    A StorageError propagates: the pass fails and is retried, nothing is taken as done.
    """
    if loaded.prepared is None:
        return OutputScan()
    return outputscan.scan_outputs(loaded.prepared, storage.existing, skip)
