"""Per-task rendering of outputs and the task container's command, args and env values.

`TaskRenderer` compiles every template of a batch once, checking each placeholder against the
batch's parameter names, so a typo is an `InvalidSpec` before any pod exists. Rendering one task
is then cheap, and happens only for the few tasks being dispatched.

Outputs are resolved here too: relative outputs are taken inside `outputRoot`, `..` segments
are refused, and an output that would land outside `outputRoot` (say, a manifest value of
"/etc/x") is a `TaskSpecError` for that task alone.
"""

from __future__ import annotations

import copy
import posixpath
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gpubatch.api.spec import (
    GPU_PINNING_ENV,
    GPUBatchSpec,
    ParamValue,
    has_dotdot,
    is_url,
)
from gpubatch.core.errors import SpecError, TaskSpecError
from gpubatch.core.expand import Task
from gpubatch.core.partial import partial_paths
from gpubatch.core.template import Template

_PINNING_ASSIGNMENTS: Final = tuple(f"{name}=" for name in GPU_PINNING_ENV)


@dataclass(frozen=True)
class RenderedTask:
    """What one task needs substituted: its outputs and its task container's argv and env.

    `command` and `args` are None where the template leaves them unset (the image's entrypoint
    applies). `env_values` follows the task container's env list: the rendered value of each
    entry that has a `value`, None for the others (`valueFrom`).
    """

    index: int
    params: dict[str, ParamValue]
    outputs: tuple[str, ...]
    command: tuple[str, ...] | None
    args: tuple[str, ...] | None
    env_values: tuple[str | None, ...]

    def apply(self, container: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the task container with command, args and env values substituted."""
        result = copy.deepcopy(dict(container))
        if self.command is not None:
            result["command"] = list(self.command)
        if self.args is not None:
            result["args"] = list(self.args)
        env = result.get("env") or []
        for entry, value in zip(env, self.env_values, strict=True):
            if value is not None:
                entry["value"] = value
        return result


class TaskRenderer:
    """The compiled templates of one batch (build once per spec, render per task)."""

    def __init__(
        self, spec: GPUBatchSpec, param_names: Collection[str], *, task_count: int | None = None
    ) -> None:
        """Parse and check every template; SpecError names the first problem found.

        With `task_count` above 1, an output without placeholders is refused: every task would
        write the same file, and once it exists every other task would be skipped.
        """
        self._root = _normalise(spec.output_root) if spec.output_root is not None else None
        self._quote = shlex.quote if spec.worker.shell else None
        self._atomic = spec.worker.atomic_outputs
        params = frozenset(param_names)

        self._outputs = tuple(
            Template.parse(text, where=f"spec.outputs[{i}]") for i, text in enumerate(spec.outputs)
        )
        for output in self._outputs:
            output.check(params, outputs=None)
            self._check_static_output(output)
            if output.is_constant and task_count is not None and task_count > 1:
                raise SpecError(
                    f"output {output.source!r} has no placeholders, so all {task_count} tasks "
                    "would write the same file (and be skipped once it exists); add {index} "
                    "or a parameter such as {file.stem}",
                    field=output.where,
                )

        position = spec.task_container_index()
        container = spec.template.spec.containers[position]
        where = f"spec.template.spec.containers[{position}]"
        n_outputs = len(self._outputs)

        def compile_list(values: Sequence[str] | None, name: str) -> tuple[Template, ...] | None:
            if values is None:
                return None
            compiled = []
            for i, text in enumerate(values):
                template = Template.parse(text, where=f"{where}.{name}[{i}]")
                template.check(params, outputs=n_outputs)
                _refuse_pinning_assignment(template)
                compiled.append(template)
            return tuple(compiled)

        self._command = compile_list(container.command, "command")
        self._args = compile_list(container.args, "args")
        if spec.worker.shell:
            _refuse_quoted_placeholders([*(self._command or ()), *(self._args or ())])
        env: list[Template | None] = []
        for i, var in enumerate(container.env or []):
            if var.value is None:
                env.append(None)
                continue
            template = Template.parse(var.value, where=f"{where}.env[{i}].value")
            template.check(params, outputs=n_outputs)
            _refuse_pinning_assignment(template)
            env.append(template)
        self._env = tuple(env)

    # ---------------------------------------------------------------------------- rendering
    def outputs(self, task: Task) -> tuple[str, ...]:
        """The task's output paths, resolved and checked against outputRoot."""
        return tuple(
            self._resolve(t.render(task.params, index=task.index), task.index, t.where)
            for t in self._outputs
        )

    def render(self, task: Task) -> RenderedTask:
        """Everything the operator substitutes into the task's pod.

        With worker.atomicOutputs, `{outputs[N]}` in command, args and env becomes the partial
        path the program writes to; the worker renames it to the final path on success.
        """
        outputs = self.outputs(task)
        written = partial_paths(outputs) if self._atomic else outputs

        def render_list(templates: tuple[Template, ...] | None) -> tuple[str, ...] | None:
            if templates is None:
                return None
            return tuple(
                t.render(task.params, index=task.index, outputs=written, quote=self._quote)
                for t in templates
            )

        rendered = RenderedTask(
            index=task.index,
            params=dict(task.params),
            outputs=outputs,
            command=render_list(self._command),
            args=render_list(self._args),
            env_values=tuple(
                None if t is None else t.render(task.params, index=task.index, outputs=written)
                for t in self._env
            ),
        )
        _refuse_pinning_values(rendered)
        return rendered

    # ------------------------------------------------------------------------------ outputs
    def _resolve(self, path: str, index: int, where: str) -> str:
        if has_dotdot(path):
            raise TaskSpecError(
                f"output {path!r} contains a '..' segment", index=index, field=where
            )
        anchored = path.startswith("/") or is_url(path)
        if self._root is None:
            if not anchored:
                raise TaskSpecError(
                    f"output {path!r} is not an absolute path or URL; set spec.outputRoot to use "
                    "relative outputs",
                    index=index,
                    field=where,
                )
            return _normalise(path)
        full = _normalise(path if anchored else f"{self._root.rstrip('/')}/{path}")
        if not _inside(full, self._root):
            raise TaskSpecError(
                f"output {full!r} is outside outputRoot {self._root!r}; write outputs inside "
                "it (or change outputRoot)",
                index=index,
                field=where,
            )
        return full

    def _check_static_output(self, template: Template) -> None:
        """Refuse, before any task, an output whose literal beginning already leaves the root."""
        if template.is_constant:
            # A constant output is the same for every task; resolving it now is the check.
            try:
                self._resolve(template.render({}, index=0), 0, template.where)
            except TaskSpecError as exc:
                raise SpecError(exc.problem, field=template.where) from None
            return
        if self._root is None:
            return
        lead = template.segments[0]
        if not isinstance(lead, str) or not (lead.startswith("/") or is_url(lead)):
            return  # relative (joined under the root) or led by a placeholder: per task
        root = self._root.rstrip("/") + "/"
        if not (lead.startswith(root) or root.startswith(lead)):
            raise SpecError(
                f"output {template.source!r} is outside outputRoot {self._root!r}; write "
                "outputs inside it, or relative to it",
                field=template.where,
            )


def _refuse_quoted_placeholders(argv: Sequence[Template]) -> None:
    """In shell mode each value is shell-quoted; inside the user's own quotes that quoting
    would be undone ('{p}' with p = "'; rm -rf ~ #" closes the quote), so refuse it.

    Follows the quoting state of the line the worker hands to /bin/sh (argv joined by spaces).
    """
    quote: str | None = None
    for template in argv:
        for segment in template.segments:
            if not isinstance(segment, str):
                if quote is not None:
                    raise SpecError(
                        f"placeholder inside {quote}-quotes in {template.source!r}: with "
                        "worker.shell: true gpubatch quotes every substituted value itself, "
                        "and a value inside your own quotes could end them and run as shell "
                        "code; remove the quotes around the placeholder",
                        field=template.where,
                    )
                continue
            escaped = False
            for char in segment:
                if escaped:
                    escaped = False
                elif char == "\\" and quote != "'":
                    escaped = True
                elif quote is None and char in "'\"":
                    quote = char
                elif char == quote:
                    quote = None
        # argv elements are joined by a space, which changes no quoting state


def _refuse_pinning_assignment(template: Template) -> None:
    """`env CUDA_VISIBLE_DEVICES=1 python ...` pins a GPU as surely as env does."""
    for segment in template.segments:
        if isinstance(segment, str) and any(a in segment for a in _PINNING_ASSIGNMENTS):
            raise SpecError(
                f"{template.source!r} sets a GPU-pinning variable: each task pod gets its own "
                "GPU from the device plugin, which sets CUDA_VISIBLE_DEVICES and "
                "NVIDIA_VISIBLE_DEVICES; remove the assignment",
                field=template.where,
            )


def _refuse_pinning_values(task: RenderedTask) -> None:
    """A parameter value can pin a GPU as surely as a literal (`{opts}` = "CUDA_VISIBLE_DEVICES=1"
    in `env {opts} python ...`), so the rendered argv and env values are checked too; the
    literal parts were checked when the templates were compiled, so only values can hit here."""
    values = [*(task.command or ()), *(task.args or ()), *(v for v in task.env_values if v)]
    for value in values:
        if any(a in value for a in _PINNING_ASSIGNMENTS):
            raise TaskSpecError(
                f"{value!r} (from a parameter value) sets a GPU-pinning variable: each task pod "
                "gets its own GPU from the device plugin, which sets CUDA_VISIBLE_DEVICES and "
                "NVIDIA_VISIBLE_DEVICES; remove the assignment from the parameter values",
                index=task.index,
                field="spec.tasks",
            )


def _normalise(path: str) -> str:
    """Collapse `//` and `/./` (no `..` remains by then); keep a URL's scheme and a root `/`."""
    if is_url(path):
        scheme, _, rest = path.partition("://")
        normal = posixpath.normpath(rest) if rest else rest
        return f"{scheme}://{normal.lstrip('/') if normal != '.' else ''}"
    normal = posixpath.normpath(path)
    # POSIX keeps a leading "//" as implementation-defined; gpubatch does not.
    return "/" + normal.lstrip("/") if normal.startswith("/") else normal


def _inside(path: str, root: str) -> bool:
    prefix = root if root.endswith("/") else root + "/"
    return path == root or path.startswith(prefix)
