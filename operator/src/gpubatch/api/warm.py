"""The warm-worker protocol: how a long-lived user program receives its tasks one at a time.

In warm mode the worker starts the user's program once (it loads its model once) and then hands
it tasks one at a time. The protocol is deliberately the simplest thing a bash script or a C++
program can speak, with no library:

- **tasks arrive on stdin**, one JSON object per line (`WarmTask`). End of file means "no more
  tasks": the program exits 0. stdin needs no path, no polling and no cleanup (unlike a named
  pipe or a folder of files), every language reads lines from it, and the worker writes the next
  line only after the previous task's reply, so a program can never hold two tasks at once.
- **replies go to the file descriptor named in `GPUBATCH_WARM_RESULT_FD`**, one JSON object per
  line (`WarmReply`): `{"index": 12, "ok": true}` or `{"index": 12, "ok": false, "message":
  "..."}`. A separate descriptor keeps the program's own stdout and stderr free for its logs
  (print statements, progress bars, library chatter) - mixing replies into stdout would make
  every stray print a protocol error. In bash: `echo '{"index":12,"ok":true}'
  >&"$GPUBATCH_WARM_RESULT_FD"`.
- optionally, **`{"ready": true}` on the same descriptor once the model is loaded**: the first
  task's duration (for the per-GPU-model statistics) and its deadline then count from there
  instead of from the program's start. The Python helper sends it for you.

Versioning: every task carries `protocol` (`PROTOCOL_VERSION`), also given to the program as
`GPUBATCH_WARM_PROTOCOL`. Additions within a version are new optional fields, so a program must
ignore fields it does not know (the models here do, in both directions). A change that an old
program would misread gets a new version.

This module is pure data: the worker package speaks it with the program, and the Python helper
(`gpubatch.worker.tasks`) speaks it for Python programs.
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpubatch.api.taskenv import TaskEnvironment

PROTOCOL_VERSION: Final = 1

#: The file descriptor (a number) the program writes its reply lines to.
ENV_WARM_RESULT_FD: Final = "GPUBATCH_WARM_RESULT_FD"
#: The protocol version the worker speaks, so a program can refuse one it does not know.
ENV_WARM_PROTOCOL: Final = "GPUBATCH_WARM_PROTOCOL"

#: The exit code a reply without one stands for (a plain "failed").
DEFAULT_FAILURE_EXIT_CODE: Final = 1

_M = TypeVar("_M", bound=BaseModel)


class WarmProtocolError(ValueError):
    """A line that is not a valid message of the protocol; the message says what was wrong."""


class WarmTask(BaseModel):
    """One task, as one line on the program's stdin."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    protocol: int = PROTOCOL_VERSION
    batch: str
    index: int = Field(ge=0)
    attempt: int = Field(default=0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    """The task's final output paths or URLs."""
    write_to: tuple[str, ...] = Field(default=(), alias="writeTo")
    """Where the program writes each output, same order: the partial paths with atomic outputs
    (the worker renames them into place after an ok reply), else the outputs themselves."""
    atomic_outputs: bool = Field(default=False, alias="atomicOutputs")
    deadline_seconds: float | None = Field(default=None, alias="deadlineSeconds")
    """How long the task may take; past it the worker stops the program (informational: a
    program may use it to give up early and reply failed)."""

    @classmethod
    def from_environment(cls, env: TaskEnvironment) -> WarmTask:
        """The message for a task described the way the per-task worker receives it."""
        return cls(
            batch=env.batch,
            index=env.task_index,
            attempt=env.attempt,
            params=env.params,
            outputs=env.outputs,
            write_to=env.write_paths(),
            atomic_outputs=env.atomic_outputs,
            deadline_seconds=env.deadline_seconds,
        )

    def encode(self) -> str:
        """One line of compact JSON, newline included (no newline can occur inside)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"

    @classmethod
    def decode(cls, line: str | bytes) -> WarmTask:
        task = _validate(cls, line, "task")
        if task.protocol != PROTOCOL_VERSION:
            raise WarmProtocolError(
                f"task line speaks protocol {task.protocol}, this program knows "
                f"{PROTOCOL_VERSION}: install the gpubatch version that matches the worker"
            )
        return task


class WarmReply(BaseModel):
    """One line on the reply descriptor: a task's result, or the one-off "ready" notice."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    index: int | None = Field(default=None, ge=0)
    ok: bool | None = None
    message: str = ""
    exit_code: int | None = Field(default=None, alias="exitCode", ge=1, le=255)
    """For a failure: the code it stands for, so `retry.nonRetriableExitCodes` works per task
    as it does per process (default 1)."""
    ready: bool = False

    @property
    def is_ready_notice(self) -> bool:
        return self.ready and self.index is None

    @classmethod
    def done(cls, index: int) -> WarmReply:
        return cls(index=index, ok=True)

    @classmethod
    def failed(cls, index: int, message: str, exit_code: int | None = None) -> WarmReply:
        return cls(index=index, ok=False, message=message, exit_code=exit_code)

    @classmethod
    def ready_notice(cls) -> WarmReply:
        return cls(ready=True)

    def encode(self) -> str:
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"

    @classmethod
    def decode(cls, line: str | bytes) -> WarmReply:
        reply = _validate(cls, line, "reply")
        if not reply.is_ready_notice and (reply.index is None or reply.ok is None):
            raise WarmProtocolError(
                f'reply line {_shown(line)} needs both "index" and "ok", e.g. '
                '{"index": 12, "ok": true}'
            )
        return reply

    @property
    def failure_exit_code(self) -> int:
        return self.exit_code if self.exit_code is not None else DEFAULT_FAILURE_EXIT_CODE


def _validate(model: type[_M], line: str | bytes, what: str) -> _M:
    try:
        return model.model_validate_json(line)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in err.errors()
        )
        raise WarmProtocolError(
            f"not a gpubatch warm {what} line: {_shown(line)}: {problems}"
        ) from None


def _shown(line: str | bytes) -> str:
    text = line if isinstance(line, str) else line.decode(errors="replace")
    return repr(text.strip()[:200])
