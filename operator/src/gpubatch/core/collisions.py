"""Two tasks writing the same output path: refused when the task list is expanded.

Outputs are how gpubatch knows a task is done, so two tasks that render the same path
overwrite each other's work and, on a re-run, the second is skipped because the first wrote
"its" file. The check renders every task's outputs once and keeps a dict of path -> first
task index: O(tasks) time, and memory bounded by the number of distinct output paths.
Tasks whose outputs cannot be rendered are left to fail alone (outputscan reports them).
"""

from __future__ import annotations

from gpubatch.core.errors import SpecError, TaskSpecError
from gpubatch.core.expand import TaskList
from gpubatch.core.taskrender import TaskRenderer


def refuse_colliding_outputs(tasks: TaskList, renderer: TaskRenderer) -> None:
    """SpecError naming the first two tasks whose outputs render to the same path."""
    owner: dict[str, int] = {}
    for task in tasks.tasks(range(len(tasks))):
        try:
            paths = renderer.outputs(task)
        except TaskSpecError:
            continue
        for path in paths:
            first = owner.setdefault(path, task.index)
            if first != task.index:
                raise SpecError(
                    f"tasks {first} and {task.index} both write output {path!r}, so one would "
                    "overwrite the other (and a re-run would skip the second); make every "
                    "output path unique per task, e.g. add a placeholder for each parameter "
                    "that varies ({index} always works)",
                    field="spec.outputs",
                )
