"""Placeholder templates for outputs, command, args and env values: gpubatch's own small grammar.

Why not `str.format`: it evaluates attribute and index lookups (`{x.__class__}`,
`{x[0]}`) on the values, which turns a template into a way to poke at Python objects. This
parser accepts exactly:

- `{name}`                 a task parameter
- `{name.stem}` `{name.name}` `{name.parent}` `{name.suffix}`
                           part of a path-valued parameter (PurePosixPath semantics; URLs keep
                           their scheme in `parent`)
- `{index}`                the task index
- `{outputs[N]}`           the N-th rendered output path (not inside outputs themselves)
- `{{` and `}}`            literal braces

and everything else is a `SpecError` naming the placeholder and what to write instead. Templates
are parsed and checked against the parameter names once per batch (`Template.check`), so a typo
fails before any pod exists; rendering a task is then a join of precomputed segments.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final

from gpubatch.api.spec import ParamValue
from gpubatch.core.errors import SpecError

#: Parts of a path-valued parameter a template may ask for.
PATH_PARTS: Final = ("stem", "name", "parent", "suffix")
#: The grammar of one placeholder body (between the braces).
_PLACEHOLDER_RE: Final = re.compile(
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\.(?P<part>[A-Za-z_][A-Za-z0-9_]*)|\[(?P<pos>[0-9]+)\])?"
)
_GRAMMAR_HINT: Final = (
    "use {name}, {name.stem}, {name.name}, {name.parent}, {name.suffix}, {index} or "
    "{outputs[N]}, and {{ or }} for a literal brace"
)


@dataclass(frozen=True, slots=True)
class Param:
    """`{name}` or `{name.part}`."""

    name: str
    part: str | None = None


@dataclass(frozen=True, slots=True)
class Index:
    """`{index}`."""


@dataclass(frozen=True, slots=True)
class Output:
    """`{outputs[N]}`."""

    position: int


Placeholder = Param | Index | Output
Segment = str | Placeholder


def format_value(value: ParamValue) -> str:
    """The text a parameter value renders as: booleans lower-case, floats shortest round-trip."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def path_part(path: str, part: str) -> str:
    """`stem`, `name`, `parent` or `suffix` of a path or URL (`s3://b/k/a.mp4`)."""
    name = posixpath.basename(path.rstrip("/"))
    if part == "name":
        return name
    if part == "stem":
        return PurePosixPath(name).stem if name else ""
    if part == "suffix":
        return PurePosixPath(name).suffix if name else ""
    if part == "parent":
        # posixpath, not PurePosixPath: the latter would fold "s3://b" into "s3:/b".
        return posixpath.dirname(path.rstrip("/"))
    raise ValueError(f"unknown path part {part!r}")


@dataclass(frozen=True)
class Template:
    """A parsed template; `where` names it in error messages (e.g. `spec.outputs[0]`)."""

    source: str
    segments: tuple[Segment, ...]
    where: str

    @classmethod
    def parse(cls, source: str, *, where: str) -> Template:
        """Parse `source`; SpecError on any syntax outside the grammar."""
        segments: list[Segment] = []
        literal: list[str] = []
        i = 0
        n = len(source)
        while i < n:
            char = source[i]
            if char == "{":
                if source.startswith("{{", i):
                    literal.append("{")
                    i += 2
                    continue
                close = source.find("}", i + 1)
                if close == -1:
                    raise SpecError(
                        f"unclosed '{{' at position {i} in {source!r}: close the placeholder "
                        "or write '{{' for a literal brace",
                        field=where,
                    )
                body = source[i + 1 : close]
                if literal:
                    segments.append("".join(literal))
                    literal = []
                segments.append(_parse_placeholder(body, source=source, where=where))
                i = close + 1
            elif char == "}":
                if source.startswith("}}", i):
                    literal.append("}")
                    i += 2
                    continue
                raise SpecError(
                    f"single '}}' at position {i} in {source!r}: write '}}}}' for a literal brace",
                    field=where,
                )
            else:
                literal.append(char)
                i += 1
        if literal:
            segments.append("".join(literal))
        return cls(source=source, segments=tuple(segments), where=where)

    @property
    def placeholders(self) -> tuple[Placeholder, ...]:
        return tuple(s for s in self.segments if not isinstance(s, str))

    @property
    def is_constant(self) -> bool:
        return all(isinstance(s, str) for s in self.segments)

    def check(self, params: Collection[str], *, outputs: int | None) -> None:
        """Check every placeholder against the batch: known names, outputs in range.

        `outputs` is the number of outputs a `{outputs[N]}` may refer to, or None where outputs
        are not available (inside the output templates themselves).
        """
        for placeholder in self.placeholders:
            if isinstance(placeholder, Param) and placeholder.name not in params:
                raise SpecError(
                    f"unknown placeholder {{{placeholder.name}}} in {self.source!r}"
                    f"{_suggest(placeholder.name, params)}; the parameters are "
                    f"{_names(params)}, plus {{index}} and {{outputs[N]}}",
                    field=self.where,
                )
            if isinstance(placeholder, Output):
                if outputs is None:
                    raise SpecError(
                        f"{{outputs[{placeholder.position}]}} in {self.source!r}: an output "
                        "path cannot refer to the outputs; use parameters and {index}",
                        field=self.where,
                    )
                if placeholder.position >= outputs:
                    raise SpecError(
                        f"{{outputs[{placeholder.position}]}} in {self.source!r}: "
                        f"spec.outputs has {outputs} entr{'y' if outputs == 1 else 'ies'} "
                        f"(indexes 0 to {outputs - 1})"
                        if outputs
                        else f"{{outputs[{placeholder.position}]}} in {self.source!r}: "
                        "spec.outputs is empty; add the output path there",
                        field=self.where,
                    )

    def render(
        self,
        params: Mapping[str, ParamValue],
        *,
        index: int,
        outputs: Sequence[str] = (),
        quote: Callable[[str], str] | None = None,
    ) -> str:
        """Substitute one task's values; `quote` (e.g. shlex.quote) wraps each substitution.

        Assumes `check` passed; a missing parameter here is a bug in the caller, so KeyError.
        """
        parts: list[str] = []
        for segment in self.segments:
            if isinstance(segment, str):
                parts.append(segment)
                continue
            if isinstance(segment, Param):
                text = format_value(params[segment.name])
                if segment.part is not None:
                    text = path_part(text, segment.part)
            elif isinstance(segment, Index):
                text = str(index)
            else:
                text = outputs[segment.position]
            parts.append(quote(text) if quote is not None else text)
        return "".join(parts)


def _parse_placeholder(body: str, *, source: str, where: str) -> Placeholder:
    match = _PLACEHOLDER_RE.fullmatch(body)
    if match is None:
        raise SpecError(
            f"{{{body}}} in {source!r} is not a valid placeholder: {_GRAMMAR_HINT}",
            field=where,
        )
    name, part, pos = match.group("name", "part", "pos")
    if name == "outputs":
        if pos is None:
            raise SpecError(
                f"{{{body}}} in {source!r}: refer to one output as {{outputs[N]}}, e.g. "
                "{outputs[0]}",
                field=where,
            )
        return Output(int(pos))
    if pos is not None:
        raise SpecError(
            f"{{{body}}} in {source!r}: indexing is only allowed as {{outputs[N]}}; "
            f"{_GRAMMAR_HINT}",
            field=where,
        )
    if name == "index":
        if part is not None:
            raise SpecError(
                f"{{{body}}} in {source!r}: {{index}} has no parts; write {{index}}",
                field=where,
            )
        return Index()
    if part is not None and part not in PATH_PARTS:
        raise SpecError(
            f"{{{body}}} in {source!r}: unknown part {part!r}; a parameter's parts are "
            f"{', '.join(PATH_PARTS)}",
            field=where,
        )
    return Param(name, part)


def _suggest(name: str, params: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(params), n=1)
    return f" (did you mean {{{close[0]}}}?)" if close else ""


def _names(params: Collection[str]) -> str:
    return ", ".join(sorted(params)) if params else "none"
