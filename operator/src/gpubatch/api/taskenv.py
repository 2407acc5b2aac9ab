"""The environment contract between whoever starts a task (operator, CLI) and the worker.

A task pod's container runs `gpubatch-worker -- <user argv...>`; everything else the worker needs
to know about the task arrives in `GPUBATCH_*` environment variables, rendered by
`TaskEnvironment.to_env()` (Kubernetes EnvVar list, for the pod) or `to_environ()` (a plain
mapping, for local mode) and read back by `TaskEnvironment.from_env()`. The user's program sees the
same variables (the worker passes its environment on), so a program can read its parameters from
`GPUBATCH_PARAMS` instead of parsing arguments.

Values are strings as environments require: booleans `true`/`false`, lists and objects as JSON.
The contract never includes CUDA_VISIBLE_DEVICES: on Kubernetes the device plugin pins the GPU,
and in local mode the CLI sets it itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gpubatch.api.result import DEFAULT_TERMINATION_MESSAGE_PATH

ENV_BATCH: Final = "GPUBATCH_BATCH"
ENV_TASK_INDEX: Final = "GPUBATCH_TASK_INDEX"
ENV_ATTEMPT: Final = "GPUBATCH_ATTEMPT"
ENV_PARAMS: Final = "GPUBATCH_PARAMS"
ENV_OUTPUTS: Final = "GPUBATCH_OUTPUTS"
ENV_PARTIAL_OUTPUTS: Final = "GPUBATCH_PARTIAL_OUTPUTS"
ENV_ATOMIC_OUTPUTS: Final = "GPUBATCH_ATOMIC_OUTPUTS"
ENV_SKIP_EXISTING: Final = "GPUBATCH_SKIP_EXISTING"
ENV_REQUIRE_GPU: Final = "GPUBATCH_REQUIRE_GPU"
ENV_DEADLINE_SECONDS: Final = "GPUBATCH_DEADLINE_SECONDS"
ENV_GRACE_SECONDS: Final = "GPUBATCH_GRACE_SECONDS"
ENV_SHELL: Final = "GPUBATCH_SHELL"
ENV_RESULT_PATH: Final = "GPUBATCH_RESULT_PATH"
ENV_NODE_NAME: Final = "GPUBATCH_NODE_NAME"

#: Seconds between SIGTERM and SIGKILL when the deadline passes or a stop is requested. Below
#: Kubernetes' default terminationGracePeriodSeconds (30) so the worker, not the kubelet, has the
#: last word and can still write a result.
DEFAULT_GRACE_SECONDS: Final = 10.0

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})

#: (variable, required, meaning) - rendered into worker-image/README.md; a test keeps them equal.
_DOCS: Final[tuple[tuple[str, str, str], ...]] = (
    (ENV_BATCH, "yes", "the GPUBatch name (for logs)"),
    (ENV_TASK_INDEX, "yes", "the task's index in the batch, 0-based"),
    (ENV_ATTEMPT, "no, 0", "the attempt number of this task"),
    (ENV_PARAMS, "no, `{}`", "the task's parameters as a JSON object"),
    (ENV_OUTPUTS, "no, `[]`", "JSON list of the task's final output paths or URLs"),
    (
        ENV_PARTIAL_OUTPUTS,
        "with atomic outputs",
        "JSON list, same order: where the program writes each output in atomic mode",
    ),
    (
        ENV_ATOMIC_OUTPUTS,
        "no, `false`",
        "`true`: rename partial outputs into place only after exit 0",
    ),
    (
        ENV_SKIP_EXISTING,
        "no, `true`",
        "`true`: exit 0 as skipped without running when all outputs exist",
    ),
    (
        ENV_REQUIRE_GPU,
        "no, `true`",
        "`true`: exit with NO_GPU instead of running when NVML sees no GPU",
    ),
    (ENV_DEADLINE_SECONDS, "no, none", "seconds the command may run before it is stopped"),
    (
        ENV_GRACE_SECONDS,
        f"no, `{DEFAULT_GRACE_SECONDS:g}`",
        "seconds between SIGTERM and SIGKILL when stopping the command",
    ),
    (
        ENV_SHELL,
        "no, `false`",
        '`true`: run `/bin/sh -c "<argv joined by spaces>"` instead of the argv itself',
    ),
    (
        ENV_RESULT_PATH,
        f"no, `{DEFAULT_TERMINATION_MESSAGE_PATH}`",
        "where the JSON result is written",
    ),
    (
        ENV_NODE_NAME,
        "no",
        "the node, recorded in the result (the operator sets it from `spec.nodeName`)",
    ),
)


class TaskEnvironmentError(ValueError):
    """The task environment is malformed; the message names the variable and what to change."""


class TaskEnvironment(BaseModel):
    """Everything the worker needs to know about one task attempt, besides the command."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch: str = Field(min_length=1)
    task_index: int = Field(ge=0)
    attempt: int = Field(default=0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    partial_outputs: tuple[str, ...] = ()
    atomic_outputs: bool = False
    skip_existing: bool = True
    require_gpu: bool = True
    deadline_seconds: float | None = Field(default=None, gt=0)
    grace_seconds: float = Field(default=DEFAULT_GRACE_SECONDS, ge=0)
    shell: bool = False
    result_path: str = DEFAULT_TERMINATION_MESSAGE_PATH
    node_name: str | None = None

    @model_validator(mode="after")
    def _outputs_consistent(self) -> Self:
        if any(not path for path in self.outputs):
            raise ValueError(f"{ENV_OUTPUTS} contains an empty path")
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"{ENV_OUTPUTS} names the same output twice")
        if self.atomic_outputs:
            if len(self.partial_outputs) != len(self.outputs):
                raise ValueError(
                    f"atomic outputs need one partial path per output: {ENV_PARTIAL_OUTPUTS} has "
                    f"{len(self.partial_outputs)} entries, {ENV_OUTPUTS} has {len(self.outputs)}"
                )
            clash = set(self.partial_outputs) & set(self.outputs)
            if clash or len(set(self.partial_outputs)) != len(self.partial_outputs):
                raise ValueError(
                    f"{ENV_PARTIAL_OUTPUTS} must name distinct paths, none of them a final output"
                )
        elif self.partial_outputs:
            raise ValueError(
                f"{ENV_PARTIAL_OUTPUTS} is set but {ENV_ATOMIC_OUTPUTS} is not true; set both or "
                "neither"
            )
        return self

    def write_paths(self) -> tuple[str, ...]:
        """Where the program is expected to write: the partial paths in atomic mode."""
        return self.partial_outputs if self.atomic_outputs else self.outputs

    def to_environ(self) -> dict[str, str]:
        """The contract as plain strings: for local mode and for the user program's env."""
        env = {
            ENV_BATCH: self.batch,
            ENV_TASK_INDEX: str(self.task_index),
            ENV_ATTEMPT: str(self.attempt),
            ENV_PARAMS: _json(self.params),
            ENV_OUTPUTS: _json(list(self.outputs)),
            ENV_ATOMIC_OUTPUTS: _bool(self.atomic_outputs),
            ENV_SKIP_EXISTING: _bool(self.skip_existing),
            ENV_REQUIRE_GPU: _bool(self.require_gpu),
            ENV_GRACE_SECONDS: f"{self.grace_seconds:g}",
            ENV_SHELL: _bool(self.shell),
            ENV_RESULT_PATH: self.result_path,
        }
        if self.atomic_outputs:
            env[ENV_PARTIAL_OUTPUTS] = _json(list(self.partial_outputs))
        if self.deadline_seconds is not None:
            env[ENV_DEADLINE_SECONDS] = f"{self.deadline_seconds:g}"
        if self.node_name is not None:
            env[ENV_NODE_NAME] = self.node_name
        return env

    def to_env(self) -> list[dict[str, Any]]:
        """The contract as a Kubernetes container `env` list, for the pod renderer.

        Without an explicit node name, GPUBATCH_NODE_NAME comes from the downward API
        (`spec.nodeName`), because the node is only known once the pod is scheduled.
        """
        env: list[dict[str, Any]] = [
            {"name": name, "value": value} for name, value in self.to_environ().items()
        ]
        if self.node_name is None:
            env.append(
                {"name": ENV_NODE_NAME, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
            )
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TaskEnvironment:
        """Read the contract back; raises TaskEnvironmentError naming the bad variable."""
        if ENV_BATCH not in environ or ENV_TASK_INDEX not in environ:
            raise TaskEnvironmentError(
                f"{ENV_BATCH} and {ENV_TASK_INDEX} must be set: gpubatch-worker runs one task of a "
                "batch and is normally started by the gpubatch operator or `gpubatch run`"
            )
        fields: dict[str, Any] = {
            "batch": environ[ENV_BATCH],
            "task_index": _int(environ, ENV_TASK_INDEX),
        }
        if ENV_ATTEMPT in environ:
            fields["attempt"] = _int(environ, ENV_ATTEMPT)
        if ENV_PARAMS in environ:
            params = _loads(environ, ENV_PARAMS)
            if not isinstance(params, dict):
                raise TaskEnvironmentError(f"{ENV_PARAMS} must be a JSON object")
            fields["params"] = params
        for key, name in (("outputs", ENV_OUTPUTS), ("partial_outputs", ENV_PARTIAL_OUTPUTS)):
            if name in environ:
                value = _loads(environ, name)
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise TaskEnvironmentError(f"{name} must be a JSON list of strings")
                fields[key] = tuple(value)
        for key, name in (
            ("atomic_outputs", ENV_ATOMIC_OUTPUTS),
            ("skip_existing", ENV_SKIP_EXISTING),
            ("require_gpu", ENV_REQUIRE_GPU),
            ("shell", ENV_SHELL),
        ):
            if environ.get(name, "") != "":
                fields[key] = _parse_bool(environ, name)
        if environ.get(ENV_DEADLINE_SECONDS, "") != "":
            fields["deadline_seconds"] = _float(environ, ENV_DEADLINE_SECONDS)
        if environ.get(ENV_GRACE_SECONDS, "") != "":
            fields["grace_seconds"] = _float(environ, ENV_GRACE_SECONDS)
        if environ.get(ENV_RESULT_PATH, "") != "":
            fields["result_path"] = environ[ENV_RESULT_PATH]
        if environ.get(ENV_NODE_NAME, "") != "":
            fields["node_name"] = environ[ENV_NODE_NAME]
        try:
            return cls(**fields)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'task'}: {e['msg']}" for e in err.errors()
            )
            raise TaskEnvironmentError(f"invalid task environment: {problems}") from err


def env_table_markdown() -> str:
    """The variables as a Markdown table; `worker-image/README.md` must contain exactly this."""
    rows = ["| variable | required / default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{name}` | {required} | {meaning} |" for name, required, meaning in _DOCS]
    return "\n".join(rows)


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _parse_bool(environ: Mapping[str, str], name: str) -> bool:
    raw = environ[name].strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise TaskEnvironmentError(f"{name} must be true or false, not {environ[name]!r}")


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise TaskEnvironmentError(f"{name} must be an integer, not {environ[name]!r}") from None


def _float(environ: Mapping[str, str], name: str) -> float:
    try:
        return float(environ[name])
    except ValueError:
        raise TaskEnvironmentError(
            f"{name} must be a number of seconds, not {environ[name]!r}"
        ) from None


def _loads(environ: Mapping[str, str], name: str) -> Any:
    try:
        return json.loads(environ[name])
    except json.JSONDecodeError as err:
        raise TaskEnvironmentError(
            f"{name} is not valid JSON ({err.msg}): {environ[name]!r}"
        ) from None
