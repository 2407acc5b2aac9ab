"""Errors a user causes with a bad spec, carrying a message that says what to change.

The operator turns a `SpecError` into a `Failed` condition with reason `InvalidSpec` and a
Warning event, before any pod exists; a `TaskSpecError` concerns one task only (say, a manifest
value that makes its output escape outputRoot) and fails just that task.
"""

from __future__ import annotations

from pydantic import ValidationError

from gpubatch.api.spec import LARGE_LIST_ADVICE


class SpecError(ValueError):
    """A spec that cannot run as written; `str(err)` is the message for people.

    `field` is where the problem is, as a path into the object (`spec.outputs[0]`), when known.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        self.problem = message
        super().__init__(f"{field}: {message}" if field else message)


class TaskSpecError(SpecError):
    """A problem with one task (its parameters), not with the whole batch."""

    def __init__(self, message: str, *, index: int, field: str | None = None) -> None:
        self.index = index
        super().__init__(f"task {index}: {message}", field=field)
        self.problem = message


def spec_error_from_validation(exc: ValidationError, *, root: str = "spec") -> SpecError:
    """One readable SpecError from pydantic's errors, with field paths like the API server's.

    Every problem is listed (people fix them all at once, not one per apply), each as
    `spec.tasks.range: step must not be 0`.
    """
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        path = _field_path(root, error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "too_long" and path.endswith((".items", ".values")):
            message += f": {LARGE_LIST_ADVICE}"
        lines.append(f"{path}: {message}")
    first = _field_path(root, exc.errors()[0]["loc"]) if exc.errors() else None
    if len(lines) == 1:
        return SpecError(lines[0].split(": ", 1)[1], field=first)
    return SpecError("; ".join(lines))


def _field_path(root: str, loc: tuple[int | str, ...]) -> str:
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in {"str", "int", "float", "bool"}:
            # pydantic names the union member or validator it tried; people do not need it.
            continue
        else:
            path += f".{part}"
    return path
