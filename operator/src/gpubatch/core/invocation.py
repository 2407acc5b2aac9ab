"""What one attempt of one task runs: argv, environment, working directory and deadline.

Both executors start from this: `core.podspec.render_pod` puts it into the task container of a
pod (behind the `gpubatch-worker --` prefix when `worker.wrap` is on), and the local runner runs
it directly on a workstation. Deciding it once here means local mode never renders a whole pod
only to read the command back out of it, and the two executors cannot drift apart on what a task
is given (the GPUBATCH_* contract, the rendered env values, the deadline).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.taskenv import TaskEnvironment
from gpubatch.core.partial import partial_paths
from gpubatch.core.taskrender import RenderedTask


@dataclass(frozen=True)
class TaskInvocation:
    """One attempt as a process: the user's argv (command then args, rendered), the task
    container's env entries that have a literal value (rendered), the names of those that come
    from Kubernetes (`valueFrom`, which only a pod can resolve), the container's workingDir, and
    the task contract (GPUBATCH_*, which carries the deadline)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    env_from_kubernetes: tuple[str, ...]
    working_dir: str | None
    task: TaskEnvironment

    @property
    def deadline_seconds(self) -> float | None:
        return self.task.deadline_seconds


def task_invocation(
    batch: str, spec: GPUBatchSpec, task: RenderedTask, attempt: int
) -> TaskInvocation:
    """The invocation of attempt `attempt` of the rendered task `task` of batch `batch`."""
    container = spec.template.spec.containers[spec.task_container_index()]
    entries = container.env or []
    working_dir = (container.model_extra or {}).get("workingDir")
    return TaskInvocation(
        argv=(*(task.command or ()), *(task.args or ())),
        env=tuple(
            (entry.name, value)
            for entry, value in zip(entries, task.env_values, strict=True)
            if value is not None
        ),
        env_from_kubernetes=tuple(e.name for e in entries if e.value is None),
        working_dir=working_dir if isinstance(working_dir, str) else None,
        task=TaskEnvironment(
            batch=batch,
            task_index=task.index,
            attempt=attempt,
            params=task.params,
            outputs=task.outputs,
            partial_outputs=partial_paths(task.outputs) if spec.worker.atomic_outputs else (),
            atomic_outputs=spec.worker.atomic_outputs,
            require_gpu=spec.worker.require_gpu,
            deadline_seconds=spec.task_deadline_seconds,
            shell=spec.worker.shell,
        ),
    )
