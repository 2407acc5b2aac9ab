"""The result contract between a task's worker and whoever reads its outcome.

The worker (in a pod, or in the CLI's local mode) ends every task attempt by writing one
`TaskResult` as compact JSON to the container's termination message and by exiting with the
matching exit code. The operator reads both from the pod status to count the task, fill the list
of recent failures and the per-GPU-model statistics, and to decide whether to retry. Keeping the
codes and the model here - and nowhere else - means the worker that writes a code and the
operator that interprets it cannot disagree; `worker-image/README.md` is checked against
`exit_code_table_markdown()` by a test for the same reason.

Exit codes. A task's exit code is the user command's own code when it ran to an end, so users
keep the meaning of their programs' codes. A command killed by signal N is reported as 128 + N
(the shell convention, and what Kubernetes shows for a killed container: 137 is SIGKILL, often
the out-of-memory killer). The worker's own codes sit in a block (80-83) chosen to collide with
nothing common: not 1 and 2 (generic failures, usage errors), not 64-78 (BSD sysexits, used by
Python's `os.EX_*`), not 124-127 (timeout(1), container runtimes and shells), not 128+ (signals).
The two shell codes 126 and 127 are reused with their shell meaning when the command cannot be
started, because users already know them.
"""

from __future__ import annotations

import json
import signal
from enum import IntEnum, StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: Kubernetes truncates a container's termination message to 4096 bytes; an encoded result never
#: exceeds this, so it is never cut mid-structure into invalid JSON.
TERMINATION_MESSAGE_MAX_BYTES: Final = 4096

#: Where Kubernetes reads the termination message from unless `terminationMessagePath` says other.
DEFAULT_TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"

#: Exit codes above this mean "killed by signal (code - 128)".
SIGNAL_EXIT_BASE: Final = 128

TRUNCATION_MARK: Final = "…[truncated]"


class ExitCode(IntEnum):
    """Exit codes with a gpubatch meaning. Any other code is the user command's own."""

    SUCCESS = 0
    """The command exited 0 and its declared outputs exist, or all outputs existed (skipped)."""

    NO_GPU = 80
    """The task requires a GPU but NVML sees none; the command was not run (never CPU by accident).
    Usually a node or image problem (no NVIDIA runtime, driver missing), not the task's fault."""

    DEADLINE_EXCEEDED = 81
    """The command ran past the task deadline and was terminated (then killed after a grace)."""

    OUTPUT_MISSING = 82
    """The command exited 0 but a declared output (its partial path in atomic mode) is absent."""

    WORKER_ERROR = 83
    """The worker itself could not do its job: a malformed task environment, no command, an
    output it could not check or rename. The user command may not have run."""

    COMMAND_NOT_EXECUTABLE = 126
    """The command exists but cannot be executed (permissions, not a binary): the shell's 126."""

    COMMAND_NOT_FOUND = 127
    """The command's program was not found on PATH: the shell's 127."""


class Reason(StrEnum):
    """A short machine-readable word for why a task ended, for the status' failure list."""

    COMPLETED = "Completed"
    OUTPUTS_EXIST = "OutputsExist"
    NON_ZERO_EXIT = "NonZeroExit"
    SIGNALED = "Signaled"
    INTERRUPTED = "Interrupted"
    NO_GPU = "NoGPU"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    OUTPUT_MISSING = "OutputMissing"
    WORKER_ERROR = "WorkerError"
    COMMAND_NOT_FOUND = "CommandNotFound"
    COMMAND_NOT_EXECUTABLE = "CommandNotExecutable"


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


def signal_exit_code(signum: int) -> int:
    """The exit code reported for a command killed by `signum` (128 + N, as shells do)."""
    return SIGNAL_EXIT_BASE + signum


def signal_of_exit_code(code: int) -> int | None:
    """The signal number an exit code stands for, or None when it is an ordinary exit code."""
    if SIGNAL_EXIT_BASE < code < SIGNAL_EXIT_BASE + signal.NSIG:
        return code - SIGNAL_EXIT_BASE
    return None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit_code(code: int) -> str:
    """A human phrase for an exit code, for messages and reports ("killed by SIGKILL", ...)."""
    try:
        return _EXIT_CODE_SUMMARY[ExitCode(code)]
    except ValueError:
        pass
    signum = signal_of_exit_code(code)
    if signum is not None:
        return f"killed by {signal_name(signum)}"
    return f"command exited with code {code}"


_EXIT_CODE_SUMMARY: Final[dict[ExitCode, str]] = {
    ExitCode.SUCCESS: "success (or skipped: all outputs already existed)",
    ExitCode.NO_GPU: "no GPU visible although the task requires one; the command did not run",
    ExitCode.DEADLINE_EXCEEDED: "the command ran past the task deadline and was stopped",
    ExitCode.OUTPUT_MISSING: "the command exited 0 but a declared output is missing",
    ExitCode.WORKER_ERROR: "the worker could not do its job (bad task environment, storage error)",
    ExitCode.COMMAND_NOT_EXECUTABLE: "the command exists but is not executable",
    ExitCode.COMMAND_NOT_FOUND: "the command was not found",
}


def exit_code_table_markdown() -> str:
    """The exit-code table as Markdown; `worker-image/README.md` must contain exactly this."""
    rows = ["| code | name | meaning |", "| --- | --- | --- |"]
    for code in ExitCode:
        rows.append(f"| {int(code)} | `{code.name}` | {_EXIT_CODE_SUMMARY[code]} |")
    rows.append(
        f"| {SIGNAL_EXIT_BASE}+N | (signal) | the command was killed by signal N, e.g. 137 = "
        "SIGKILL (often out of memory); or the worker was told to stop (pod deleted, Ctrl-C) "
        "and passed signal N on: 143 = SIGTERM, 130 = SIGINT, whatever the command then did |"
    )
    rows.append("| any other | (command) | the command's own exit code |")
    return "\n".join(rows)


class GpuIdentity(BaseModel):
    """Which GPU a task ran on: enough for per-model statistics and to find a bad card."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str
    uuid: str


class ResultDecodeError(ValueError):
    """A termination message that is not a gpubatch result (e.g. the worker never ran)."""


class TaskResult(BaseModel):
    """One task attempt's outcome, as written to the termination message.

    JSON field names are camelCase like the rest of the Kubernetes API. `exitCode` equals the
    worker's process exit code, so the pod's container status and this record always agree.
    Unknown fields are ignored on decode so a newer worker can talk to an older operator.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    outcome: Outcome
    exit_code: int = Field(alias="exitCode", ge=0, le=255)
    reason: Reason
    duration_seconds: float = Field(alias="durationSeconds", ge=0)
    gpus: tuple[GpuIdentity, ...] = ()
    node: str | None = None
    message: str = ""

    @field_validator("message")
    @classmethod
    def _encodable(cls, message: str) -> str:
        # Paths from argv or the environment may carry lone surrogates (undecodable bytes);
        # they could not be written as UTF-8, so they become "?" here, once.
        return message.encode("utf-8", "replace").decode("utf-8")

    @property
    def gpu_model(self) -> str | None:
        """The GPU model for statistics: the one model, or "A+B" for a mixed multi-GPU task."""
        models = sorted({gpu.model for gpu in self.gpus})
        return "+".join(models) if models else None

    def encode(self, limit: int = TERMINATION_MESSAGE_MAX_BYTES) -> str:
        """Compact JSON no longer than `limit` UTF-8 bytes.

        Only `message` is shortened (its end kept - the last lines of an error are the useful
        ones - behind a truncation mark). In the pathological case where even the bare record
        does not fit (dozens of GPUs), the GPU list is cut and the message says how many were
        dropped; the record stays valid JSON either way.
        """
        encoded = self._dumps(self.message)
        if len(encoded.encode()) <= limit:
            return encoded
        shrunk, note = self, ""
        while shrunk.gpus and len(shrunk._dumps(note + TRUNCATION_MARK).encode()) > limit:
            gpus = shrunk.gpus[:-1]
            note = f"[{len(self.gpus) - len(gpus)} of {len(self.gpus)} GPUs not listed] "
            shrunk = self.model_copy(update={"gpus": gpus})
        if len(shrunk._dumps("").encode()) > limit:
            raise ValueError(f"a task result cannot be encoded in {limit} bytes even without GPUs")
        # Binary search the longest tail of the message that fits once escaped.
        lo, hi = 0, min(len(self.message), limit)
        best = shrunk._dumps("")
        while lo <= hi:
            keep = (lo + hi) // 2
            tail = self.message[len(self.message) - keep :]
            candidate = shrunk._dumps(note + TRUNCATION_MARK + tail)
            if len(candidate.encode()) <= limit:
                best, lo = candidate, keep + 1
            else:
                hi = keep - 1
        return best

    def _dumps(self, message: str) -> str:
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        data["message"] = message
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def decode(cls, text: str | bytes) -> TaskResult:
        """Parse a termination message; raises ResultDecodeError when it is not a result."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            shown = text[:200] if isinstance(text, str) else text[:200].decode(errors="replace")
            raise ResultDecodeError(f"not a gpubatch task result: {shown!r}: {err}") from err

    @classmethod
    def try_decode(cls, text: str | bytes | None) -> TaskResult | None:
        """Like decode, but None for a missing or foreign message (pod killed before writing)."""
        if not text:
            return None
        try:
            return cls.decode(text)
        except ResultDecodeError:
            return None
