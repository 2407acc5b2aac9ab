"""Which tasks are already done (all their outputs exist) and which cannot be rendered.

Both executors ask this once before dispatching anything: the operator per spec generation,
`gpubatch run` and `gpubatch expand` per invocation. The scan is pure: it renders every task's
outputs and hands them all to one bulk existence check that the caller passes in
(`edges.storage.existing` lists each output folder or object prefix once), so it stays quick at
100k tasks and a test can pass a set's `intersection` instead of storage. What to do when
storage cannot answer is the caller's choice (the operator retries the pass; the local runner
skips nothing up front and lets each task re-check its own outputs), so errors propagate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from gpubatch.core.errors import TaskSpecError
from gpubatch.core.indexset import IndexSet
from gpubatch.core.prepare import PreparedBatch

TaskState = Literal["run", "skip", "invalid"]
#: The bulk existence check: the subset of the given paths that exist, each as given.
ExistingPaths = Callable[[Iterable[str]], set[str]]


@dataclass
class OutputScan:
    """Tasks whose outputs all exist, and tasks that cannot be rendered (with why)."""

    complete: IndexSet = field(default_factory=IndexSet)
    invalid: dict[int, str] = field(default_factory=dict)
    problem: str | None = None  # storage could not answer: nothing is known to be done

    def state(self, index: int) -> TaskState:
        if index in self.invalid:
            return "invalid"
        return "skip" if index in self.complete else "run"


def scan_outputs(
    prepared: PreparedBatch,
    existing: ExistingPaths,
    skip: IndexSet | None = None,
    indexes: Iterable[int] | None = None,
) -> OutputScan:
    """Check the outputs of every task (or of `indexes`) not in `skip` (already final) with
    one bulk call.

    A batch without outputs skips nothing and calls `existing` not at all.
    """
    scan = OutputScan()
    if not prepared.spec.outputs:
        return scan
    per_task: list[tuple[int, tuple[str, ...]]] = []
    wanted = range(len(prepared.tasks)) if indexes is None else indexes
    for index in _indexes_except(wanted, skip or IndexSet()):
        try:
            per_task.append((index, prepared.renderer.outputs(prepared.tasks.task(index))))
        except TaskSpecError as err:
            scan.invalid[index] = str(err)
    found = existing(path for _, paths in per_task for path in paths)
    for index, paths in per_task:
        if all(path in found for path in paths):
            scan.complete.add(index)
    return scan


def _indexes_except(indexes: Iterable[int], skip: IndexSet) -> Iterator[int]:
    return (index for index in indexes if index not in skip)
