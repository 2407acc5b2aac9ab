"""The user program's side of the warm protocol, for Python programs: `gpubatch.worker.tasks()`.

    import gpubatch.worker

    model = load_model()                       # once
    for task in gpubatch.worker.tasks():       # one task at a time, until there are no more
        with task:                             # an exception fails this task alone
            predict(model, task.params["image"], task.write_to[0])

`with task:` reports the task done when the block ends normally and failed (with the exception
as the message) when it raises, and the loop goes on with the next task: one bad image must not
stop the others. A block cannot be "caught" by the iterator itself - Python gives a generator
no say over exceptions raised in the loop's body - which is why the per-task isolation is a
context manager. `task.done()` and `task.fail(message)` report explicitly; a task left
unreported when the next one is asked for is reported done.

The same program also runs as an ordinary one-task-per-process program: outside a warm worker,
`tasks()` yields the one task described by the GPUBATCH_* variables of the per-task worker, and
a failed task ends the process with its exit code. So a batch can switch between
`worker.mode: warm` and the default without touching the program.

Only the standard library and `gpubatch.api` are imported: this runs inside the user's image,
with the worker's lean dependencies (pydantic), never the operator's.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import IO, Any

from gpubatch.api.taskenv import ENV_TASK_INDEX, TaskEnvironment
from gpubatch.api.warm import (
    ENV_WARM_RESULT_FD,
    WarmProtocolError,
    WarmReply,
    WarmTask,
)


class Task:
    """One task handed to the program: what to compute, and where to write it."""

    def __init__(self, task: WarmTask, reply: _ReplyChannel) -> None:
        self._task = task
        self._reply = reply
        self.failure: WarmReply | None = None
        self.answered = False

    @property
    def index(self) -> int:
        return self._task.index

    @property
    def attempt(self) -> int:
        return self._task.attempt

    @property
    def batch(self) -> str:
        return self._task.batch

    @property
    def params(self) -> dict[str, Any]:
        return self._task.params

    @property
    def outputs(self) -> tuple[str, ...]:
        """The final output paths (where the results end up)."""
        return self._task.outputs

    @property
    def write_to(self) -> tuple[str, ...]:
        """Where to write each output: the partial paths with atomic outputs, else `outputs`."""
        return self._task.write_to

    @property
    def deadline_seconds(self) -> float | None:
        return self._task.deadline_seconds

    def done(self) -> None:
        """Report the task finished (the worker still checks that its outputs exist)."""
        self._answer(WarmReply.done(self.index))

    def fail(self, message: str, exit_code: int | None = None) -> None:
        """Report the task failed; `exit_code` (1-255, default 1) is what retry rules see."""
        reply = WarmReply.failed(self.index, message, exit_code)
        self.failure = reply
        self._answer(reply)

    def __enter__(self) -> Task:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if error is None:
            if not self.answered:
                self.done()
            return False
        if not isinstance(error, Exception):
            return False  # KeyboardInterrupt, SystemExit: the program is being stopped
        traceback.print_exception(kind, error, tb, file=sys.stderr)
        if not self.answered:
            self.fail(f"{type(error).__name__}: {error}")
        return True

    def __repr__(self) -> str:
        return f"Task(index={self.index}, params={self.params!r})"

    def _answer(self, reply: WarmReply) -> None:
        if self.answered:
            raise RuntimeError(f"task {self.index} was already reported; report a task once")
        self.answered = True
        self._reply.send(reply)


class _ReplyChannel:
    """Where replies go: the warm worker's descriptor, or nowhere (one-task mode, where the
    exit code carries the outcome)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def send(self, reply: WarmReply) -> None:
        if self._fd is None:
            return
        data = reply.encode().encode()
        while data:
            data = data[os.write(self._fd, data) :]


def tasks(
    environ: Mapping[str, str] | None = None, stdin: IO[bytes] | None = None
) -> Iterator[Task]:
    """The program's tasks, one at a time, until the worker has no more.

    `environ` and `stdin` default to the process' own (they are parameters for tests).
    """
    environ = os.environ if environ is None else environ
    if environ.get(ENV_WARM_RESULT_FD, "") != "":
        return _warm_tasks(_reply_fd(environ), sys.stdin.buffer if stdin is None else stdin)
    if ENV_TASK_INDEX in environ:
        return _single_task(environ)
    raise RuntimeError(
        "gpubatch.worker.tasks() found no task: run this program under gpubatch "
        f"(worker.mode: warm sets {ENV_WARM_RESULT_FD}; the per-task worker sets "
        f"{ENV_TASK_INDEX})"
    )


def _reply_fd(environ: Mapping[str, str]) -> int:
    raw = environ[ENV_WARM_RESULT_FD]
    if not raw.isdigit():
        raise RuntimeError(f"{ENV_WARM_RESULT_FD} must be a file descriptor number, not {raw!r}")
    return int(raw)


def _warm_tasks(fd: int, stdin: IO[bytes]) -> Iterator[Task]:
    channel = _ReplyChannel(fd)
    channel.send(WarmReply.ready_notice())  # the load is over: task clocks start now
    for line in stdin:
        if not line.strip():
            continue
        try:
            message = WarmTask.decode(line)
        except WarmProtocolError as err:
            raise SystemExit(f"gpubatch: {err}") from None
        task = Task(message, channel)
        yield task
        if not task.answered:
            task.done()


def _single_task(environ: Mapping[str, str]) -> Iterator[Task]:
    env = TaskEnvironment.from_env(environ)
    task = Task(WarmTask.from_environment(env), _ReplyChannel(None))
    yield task
    if task.failure is not None:
        print(f"gpubatch: task {task.index} failed: {task.failure.message}", file=sys.stderr)
        raise SystemExit(task.failure.failure_exit_code)
