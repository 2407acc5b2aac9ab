"""gpubatch.worker: the task entrypoint (`gpubatch-worker`) and, for user programs in warm mode,
`gpubatch.worker.tasks()` (see `gpubatch.worker.program`)."""

from gpubatch.worker.program import Task, tasks

__all__ = ["Task", "tasks"]
