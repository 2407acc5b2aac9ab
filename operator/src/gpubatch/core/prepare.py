"""From a raw spec to a batch ready to dispatch, or one `SpecError` saying what to change.

This is the single entry point the operator (and the local CLI) calls once per spec generation:
parse the spec, expand the tasks (through injected storage), compile every template against
the parameter names, and check the dispatch order. Everything the API server could not check
(a glob that matches nothing, a manifest that does not parse, an unknown placeholder, two
tasks writing the same output) surfaces
here, before any pod is created.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gpubatch.api.spec import MSG_WARM_PLACEHOLDER, GPUBatchSpec
from gpubatch.core.collisions import refuse_colliding_outputs
from gpubatch.core.errors import SpecError, spec_error_from_validation
from gpubatch.core.expand import FileLister, ManifestReader, TaskList, expand
from gpubatch.core.order import check_order, dispatch_order
from gpubatch.core.planner import DispatchOrder
from gpubatch.core.taskrender import RenderedTask, TaskRenderer
from gpubatch.core.template import Template


def parse_spec(raw: Mapping[str, Any]) -> GPUBatchSpec:
    """Validate a spec (the `spec` of a GPUBatch object); SpecError with every problem listed."""
    try:
        return GPUBatchSpec.model_validate(raw)
    except ValidationError as exc:
        raise spec_error_from_validation(exc) from None


@dataclass(frozen=True)
class PreparedBatch:
    """A validated spec with its expanded tasks and compiled templates."""

    spec: GPUBatchSpec
    tasks: TaskList
    renderer: TaskRenderer
    _order: list[Sequence[int]] = field(default_factory=list, repr=False, compare=False)

    def order(self) -> Sequence[int]:
        """Task indexes in dispatch order (computed on first use, then kept)."""
        if not self._order:
            self._order.append(dispatch_order(self.spec.order, self.tasks))
        return self._order[0]

    def dispatch_order(self) -> DispatchOrder:
        """The order as the planner walks it (both executors build it here, nowhere else)."""
        permutation = self.order()
        return DispatchOrder(
            len(self.tasks), None if isinstance(permutation, range) else permutation
        )

    def render(self, index: int) -> RenderedTask:
        """Outputs, command, args and env values of task `index`."""
        return self.renderer.render(self.tasks.task(index))


def prepare_batch(
    spec: GPUBatchSpec | Mapping[str, Any],
    *,
    files: FileLister | None = None,
    manifests: ManifestReader | None = None,
) -> PreparedBatch:
    """Validate, expand and compile; raises SpecError (never a half-prepared batch)."""
    parsed = spec if isinstance(spec, GPUBatchSpec) else parse_spec(spec)
    tasks = expand(parsed.tasks, files=files, manifests=manifests)
    renderer = TaskRenderer(parsed, tasks.param_names, task_count=len(tasks))
    if parsed.worker.mode == "Warm":
        refuse_warm_placeholders(parsed)
    check_order(parsed.order, tasks)
    refuse_colliding_outputs(tasks, renderer)
    return PreparedBatch(spec=parsed, tasks=tasks, renderer=renderer)


def refuse_warm_placeholders(spec: GPUBatchSpec) -> None:
    """A warm program is started once for many tasks, so nothing in the task container's
    command, args or env values may vary per task (`{{` stays a literal brace)."""
    container = spec.template.spec.containers[spec.task_container_index()]
    fields = [("command", v) for v in container.command or []]
    fields += [("args", v) for v in container.args or []]
    fields += [(f"env {e.name}", e.value) for e in container.env or [] if e.value is not None]
    for where, value in fields:
        template = Template.parse(value, where=where)
        if any(not isinstance(segment, str) for segment in template.segments):
            raise SpecError(f"{where}: {value!r}: {MSG_WARM_PLACEHOLDER}")


__all__ = ["PreparedBatch", "SpecError", "parse_spec", "prepare_batch"]
