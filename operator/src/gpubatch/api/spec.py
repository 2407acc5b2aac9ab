"""Pydantic models of the GPUBatch spec: the one place that knows the spec's field names.

The CRD in `crds/gpubatches.gpubatch.io.yaml` is generated from these models
(`gpubatch.api.crdgen`, `make crd`), descriptions included, so `kubectl explain gpubatch.spec`
and these docstrings teach the same API. Cross-field rules exist twice on purpose: as CEL rules
attached to the models here (`json_schema_extra`), which the generator writes into the CRD so
`kubectl apply` refuses a bad spec before anything runs, and as validators, so code that never
passes through an API server (the local CLI, unit tests) refuses the same spec with the same
message. Both take their messages from the `MSG_*` constants below.

Layering: this module imports only pydantic and the standard library; it does no I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from gpubatch.api.names import DEFAULT_GPU_MODEL_LABEL, DEFAULT_GPU_RESOURCE, MANAGED_BY_GPUBATCH
from gpubatch.api.status import GPUBatchStatus

# --------------------------------------------------------------------------------------- limits
#: Inline `tasks.items` and matrix `values` are capped so the object stays far below etcd's
#: 1.5 MiB limit and CEL rules over them stay within the API server's cost budget. Larger task
#: lists belong in a manifest file.
MAX_INLINE_ITEMS: Final = 10_000
MAX_PARAMS_PER_ITEM: Final = 32
MAX_MATRIX_AXES: Final = 8
MAX_OUTPUTS: Final = 16
MAX_PATH_LENGTH: Final = 4096
MAX_TEMPLATE_LENGTH: Final = 1024
MAX_CONTAINERS: Final = 16
MAX_ENV_PER_CONTAINER: Final = 256
MAX_GPU_MODELS: Final = 32
#: Most tasks one batch may have. Far above the 100k we design for, low enough that the
#: operator's per-task bookkeeping (index sets, a dispatch order array) stays in memory.
MAX_TASKS: Final = 10_000_000
MAX_EXIT_CODES: Final = 64

#: Parameter names are identifiers so a placeholder `{name}` is unambiguous.
PARAM_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
PARAM_NAME_MAX_LENGTH: Final = 63
#: Names the templates provide themselves; a parameter may not shadow them.
RESERVED_PARAM_NAMES: Final = frozenset({"index", "outputs"})
#: Environment variables that pin a GPU. The device plugin does that per pod; a template that
#: sets them would point every task at the same device (or at one the pod was not given).
GPU_PINNING_ENV: Final = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
#: A URL such as s3://bucket/key or gs://bucket/key.
URL_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9+.-]*://"
#: A `..` path segment anywhere in a path.
DOTDOT_PATTERN: Final = r"(^|/)[.][.](/|$)"

_PARAM_NAME_RE: Final = re.compile(PARAM_NAME_PATTERN)
_URL_RE: Final = re.compile(URL_PATTERN)
_DOTDOT_RE: Final = re.compile(DOTDOT_PATTERN)

# ----------------------------------------------------------------------------- messages (CEL too)
MSG_ONE_SOURCE: Final = "set exactly one task source: items, range, matrix, files or manifest"
MSG_ONE_AXIS_KIND: Final = "each matrix axis sets exactly one of values, range or files"
MSG_STEP_ZERO: Final = "step must not be 0"
MSG_RANGE_EMPTY: Final = (
    "the range is empty: stop is exclusive, so with a positive step stop must be greater than "
    "start, and with a negative step stop must be less than start"
)
MSG_PARAM_NAME: Final = (
    "parameter names must be identifiers (letters, digits and _, not starting with a digit) "
    "and must not be index or outputs, which every template already provides"
)
MSG_ITEMS_SAME_KEYS: Final = "every item must set the same parameter names as the first item"
MSG_ORDER_COST: Final = (
    "order.by: longestFirst needs order.costParam, the parameter that estimates each task's cost"
)
MSG_BACKOFF: Final = "maxBackoffSeconds must be at least backoffSeconds"
MSG_SHELL_NEEDS_WRAP: Final = "shell: true needs wrap: true (the gpubatch worker runs the shell)"
MSG_ATOMIC_NEEDS_WRAP: Final = (
    "atomicOutputs: true needs wrap: true (the gpubatch worker moves outputs into place)"
)
MSG_WARM_NEEDS_WRAP: Final = (
    "mode: Warm runs the command under gpubatch-worker, which feeds it tasks; set "
    "worker.wrap: true or worker.mode: PerTask"
)
MSG_WARM_NO_SHELL: Final = (
    "mode: Warm starts the command once, as an argv, for many tasks; set worker.shell: false "
    "or worker.mode: PerTask"
)
MSG_LOAD_DEADLINE_NEEDS_WARM: Final = (
    "loadDeadlineSeconds applies to warm programs only; set worker.mode: Warm or remove "
    "worker.loadDeadlineSeconds"
)
#: Checked when templates are compiled (`core.prepare`), like unknown placeholders: the API
#: server cannot parse placeholders within CEL's cost budget.
MSG_WARM_PLACEHOLDER: Final = (
    "worker.mode: Warm starts the task container's command once for many tasks, so its "
    "command, args and env values cannot contain task placeholders such as {image}; read each "
    "task's values from its message (task.params, task.write_to), or use worker.mode: PerTask"
)
MSG_CONTAINERS: Final = (
    "the pod template needs at least one container in template.spec.containers (the task container)"
)
MSG_GPU_ENV: Final = (
    "do not set CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES: each task pod gets its own GPU "
    "from the device plugin, which sets them; remove the variable from env"
)
MSG_RESTART_POLICY: Final = (
    "template.spec.restartPolicy must be Never or unset: gpubatch retries a failed task with a "
    "new pod (see retry)"
)
MSG_TASK_CONTAINER: Final = "taskContainer must name a container in template.spec.containers"
MSG_OUTPUT_DOTDOT: Final = "output paths must not contain '..' segments"
MSG_OUTPUT_ABSOLUTE: Final = (
    "without outputRoot, each output must be an absolute path (/...), a URL (s3://...) or start "
    "with a placeholder that yields one; set outputRoot to use relative output paths"
)
MSG_OUTPUT_ROOT: Final = (
    "outputRoot must be an absolute path (/...) or a URL (s3://bucket/prefix) without '..' segments"
)
MSG_GPU_RESOURCE: Final = (
    "gpuResource must be an extended resource name with a vendor domain, such as "
    "nvidia.com/gpu or nvidia.com/mig-1g.10gb (not cpu, memory or a kubernetes.io/ resource)"
)
#: A domain-prefixed name: an extended resource (what device plugins advertise), or managedBy.
GPU_RESOURCE_PATTERN: Final = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_GPU_RESOURCE_RE: Final = re.compile(GPU_RESOURCE_PATTERN)
MSG_MANAGED_BY: Final = (
    "managedBy must be a domain-prefixed path of at most 63 characters, such as "
    "gpubatch.io/operator (the default) or kueue.x-k8s.io/multikueue"
)
MSG_MANAGED_BY_IMMUTABLE: Final = (
    "managedBy cannot be set, changed or removed after the batch is created: delete and "
    "re-create the batch to hand it to another controller"
)
MAX_MANAGED_BY_LENGTH: Final = 63
MSG_MANIFEST_FORMAT: Final = (
    "set manifest.format (jsonl or csv): it cannot be inferred from the path's extension"
)
#: Said wherever a large inline list is refused: where the tasks belong instead, and how to
#: apply a large object (client-side apply copies it into an annotation, doubling the request,
#: which the API server refuses as "Request entity too large").
LARGE_LIST_ADVICE: Final = (
    "list the tasks in a manifest file (spec.tasks.manifest) instead, and apply large batches "
    "with `kubectl apply --server-side` (client-side apply copies the whole object into the "
    "last-applied annotation, doubling the request)"
)
MSG_RANGE_TOO_LARGE: Final = (
    f"the range yields more than {MAX_TASKS} tasks, the most one batch may have: split it "
    "into several batches (start/stop)"
)
MSG_MATRIX_TOO_LARGE: Final = (
    f"the matrix's values and range axes multiply to more than {MAX_TASKS} tasks, the most "
    "one batch may have: split it into several batches"
)
MSG_WRAP_NEEDS_COMMAND: Final = (
    "worker.wrap runs the task's command through gpubatch-worker, so the task container must "
    "set command (and optionally args); or set worker.wrap: false to use the image's own "
    "entrypoint"
)

#: Every message a CEL rule in the CRD may carry (the CRD test checks this).
VALIDATION_MESSAGES: Final = frozenset(
    {
        MSG_ONE_SOURCE,
        MSG_ONE_AXIS_KIND,
        MSG_STEP_ZERO,
        MSG_RANGE_EMPTY,
        MSG_PARAM_NAME,
        MSG_ITEMS_SAME_KEYS,
        MSG_ORDER_COST,
        MSG_BACKOFF,
        MSG_SHELL_NEEDS_WRAP,
        MSG_ATOMIC_NEEDS_WRAP,
        MSG_WARM_NEEDS_WRAP,
        MSG_WARM_NO_SHELL,
        MSG_LOAD_DEADLINE_NEEDS_WARM,
        MSG_CONTAINERS,
        MSG_GPU_ENV,
        MSG_RESTART_POLICY,
        MSG_TASK_CONTAINER,
        MSG_OUTPUT_DOTDOT,
        MSG_OUTPUT_ABSOLUTE,
        MSG_OUTPUT_ROOT,
        MSG_MANIFEST_FORMAT,
        MSG_GPU_RESOURCE,
        MSG_RANGE_TOO_LARGE,
        MSG_MATRIX_TOO_LARGE,
        MSG_WRAP_NEEDS_COMMAND,
        MSG_MANAGED_BY,
        MSG_MANAGED_BY_IMMUTABLE,
    }
)

#: Messages of CEL transition rules: they compare an update with the stored object, so no spec
#: on its own can show them (the API server test edits a stored batch instead).
TRANSITION_MESSAGES: Final = frozenset({MSG_MANAGED_BY_IMMUTABLE})

# --------------------------------------------------------------------------- CEL rules (CRD)
# The API server's copy of the validators below, attached to the models (`json_schema_extra`)
# so `gpubatch.api.crdgen` writes them into the CRD. Each carries the message its Python
# validator raises, and the patterns come from the constants the validators use.


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One x-kubernetes-validations entry; `field_path` points kubectl's error at a field."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules."""
    return {"x-kubernetes-validations": list(rules)}


_RESERVED_CEL: Final = ", ".join(f"'{name}'" for name in sorted(RESERVED_PARAM_NAMES))


def _param_name_rule(value: str) -> str:
    return (
        f"size({value}) <= {PARAM_NAME_MAX_LENGTH} && {value}.matches('{PARAM_NAME_PATTERN}') "
        f"&& !({value} in [{_RESERVED_CEL}])"
    )


CEL_PARAM_FIELD: Final = cel(
    f"!has(self.param) || ({_param_name_rule('self.param')})", MSG_PARAM_NAME, ".param"
)
CEL_PARAM_KEYS: Final = cel(f"self.all(k, {_param_name_rule('k')})", MSG_PARAM_NAME)


def _range_size(r: str) -> str:
    """CEL for len(range(start, stop, step)) of a non-empty range with a non-zero step."""
    start = f"(has({r}.start) ? {r}.start : 0)"
    step = f"(has({r}.step) ? {r}.step : 1)"
    return (
        f"({step} > 0 ? ({r}.stop - {start} + {step} - 1) / {step} "
        f": ({start} - {r}.stop - {step} - 1) / (0 - {step}))"
    )


CEL_RANGE: Final = (
    cel("self.step != 0", MSG_STEP_ZERO, ".step"),
    cel(
        "self.step == 0 || (self.step > 0 ? self.stop > self.start : self.stop < self.start)",
        MSG_RANGE_EMPTY,
        ".stop",
    ),
    cel(
        "self.step == 0 || (self.step > 0 ? self.stop <= self.start : self.stop >= self.start) "
        f"|| {_range_size('self')} <= {MAX_TASKS}",
        MSG_RANGE_TOO_LARGE,
        ".stop",
    ),
)


def _matrix_size_rule() -> str:
    """CEL: the product of the matrix's values/range axis sizes is at most MAX_TASKS (a files
    axis counts 1: its size is known only when the glob is listed).

    CEL has no fold, so the product is spelt out over the at most MAX_MATRIX_AXES sizes, each
    partial product checked before the next factor (`&&` absorbs the overflow of a later term
    once an earlier one is false; every factor is at most MAX_TASKS by its own rule)."""
    size = (
        "(has(self[k].values) ? self[k].values.size() : has(self[k].range) ? "
        + _range_size("self[k].range")
        + " : 1)"
    )
    sizes = f"self.map(k, {size})"
    factors = [f"({sizes}.size() > {i} ? {sizes}[{i}] : 1)" for i in range(MAX_MATRIX_AXES)]
    checks = [" * ".join(factors[: n + 1]) + f" <= {MAX_TASKS}" for n in range(MAX_MATRIX_AXES)]
    return " && ".join(checks)


_PINNING_CEL: Final = ", ".join(f"'{name}'" for name in GPU_PINNING_ENV)


def _no_gpu_env_rule(containers: str) -> dict[str, str]:
    return cel(
        f"!has(self.{containers}) || self.{containers}.all(c, !has(c.env) || "
        f"c.env.all(e, !(e.name in [{_PINNING_CEL}])))",
        MSG_GPU_ENV,
        f".{containers}",
    )


# ------------------------------------------------------------------------------------- types
#: A value written inline in the spec. Strings or integers only: the API server would turn
#: 1.0 into 1 and lose the text the user wrote, so floats and booleans are written quoted
#: ("0.001", "true") and substituted exactly as written.
InlineValue = StrictStr | StrictInt
#: A task parameter value. Manifests (JSONL) may also carry floats and booleans.
ParamValue = str | int | float | bool
ParamName = Annotated[str, Field(min_length=1, max_length=PARAM_NAME_MAX_LENGTH)]


def is_param_name(name: str) -> bool:
    """True when `name` can be used as a parameter (and so as a `{placeholder}`)."""
    return (
        len(name) <= PARAM_NAME_MAX_LENGTH
        and _PARAM_NAME_RE.match(name) is not None
        and name not in RESERVED_PARAM_NAMES
    )


def _check_param_name(name: str) -> str:
    if not is_param_name(name):
        raise ValueError(f"{name!r}: {MSG_PARAM_NAME}")
    return name


def is_url(path: str) -> bool:
    """True for `scheme://...` locations (object storage), which are not local paths."""
    return _URL_RE.match(path) is not None


def has_dotdot(path: str) -> bool:
    """True when `path` has a `..` segment, the one way a path escapes its root."""
    return _DOTDOT_RE.search(path) is not None


class _SpecModel(BaseModel):
    """Base of spec models: camelCase on the wire, immutable, unknown fields refused.

    Unknown fields are refused (not ignored) so a typo in a local YAML file fails loudly; the API
    server prunes them anyway, and the CRD test keeps the two field sets equal.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
        extra="forbid",
    )


# ----------------------------------------------------------------------------- task sources
class IntRange(_SpecModel):
    """Integers from start (inclusive) to stop (exclusive) by step, as Python's range()."""

    model_config = ConfigDict(json_schema_extra=validations(*CEL_RANGE))

    start: int = Field(0, description="First value (inclusive). Defaults to 0.")
    stop: int = Field(
        description="End of the range, exclusive, as in Python's range(): start 0, stop 3 gives "
        "0, 1, 2."
    )
    step: int = Field(
        1, description="Distance between values; may be negative, never 0. Defaults to 1."
    )

    @model_validator(mode="after")
    def _non_empty(self) -> IntRange:
        if self.step == 0:
            raise ValueError(MSG_STEP_ZERO)
        if (self.step > 0 and self.stop <= self.start) or (
            self.step < 0 and self.stop >= self.start
        ):
            raise ValueError(MSG_RANGE_EMPTY)
        return self

    @model_validator(mode="after")
    def _not_too_large(self) -> IntRange:
        if len(self.values()) > MAX_TASKS:
            raise ValueError(MSG_RANGE_TOO_LARGE)
        return self

    def values(self) -> range:
        """The values as a lazy Python range (random access, no list in memory)."""
        return range(self.start, self.stop, self.step)


class RangeSource(IntRange):
    """One task per integer of a range, e.g. one task per seismic shot number."""

    model_config = ConfigDict(json_schema_extra=validations(*CEL_RANGE, CEL_PARAM_FIELD))

    param: ParamName = Field(
        "value",
        description="Name of the parameter that holds the integer, used as {name} in "
        "templates. Defaults to value.",
    )

    _param_ok = field_validator("param")(_check_param_name)


class MatrixAxis(_SpecModel):
    """One axis of a matrix: a list of values, a range of integers, or the files of a glob."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "[has(self.values), has(self.range), has(self.files)].filter(x, x).size() == 1",
                MSG_ONE_AXIS_KIND,
            )
        )
    )

    values: (
        list[Annotated[InlineValue, Field(description="An axis value: a string or an integer.")]]
        | None
    ) = Field(
        None,
        min_length=1,
        max_length=MAX_INLINE_ITEMS,
        description="The axis values, strings or integers. Quote floats and booleans "
        '("0.5", "true"): they are substituted into templates exactly as written.',
    )
    range: IntRange | None = Field(None, description="The axis values as a range of integers.")
    files: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="A glob (absolute path or URL, ** for recursion) whose matches, sorted, are "
        "the axis values. The parameter is file-valued: {axis.stem}, {axis.name}, "
        "{axis.parent} and {axis.suffix} give parts of the path.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> MatrixAxis:
        if sum(x is not None for x in (self.values, self.range, self.files)) != 1:
            raise ValueError(MSG_ONE_AXIS_KIND)
        return self


class FilesSource(_SpecModel):
    """One task per file matching a glob, e.g. every image in a folder."""

    model_config = ConfigDict(json_schema_extra=validations(CEL_PARAM_FIELD))

    glob: str = Field(
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="Absolute path or URL with wildcards (*, ?, [..], and ** for any depth), "
        "as seen by the operator. Matches are sorted, so the same files always give the same "
        "task indexes.",
    )
    param: ParamName = Field(
        "file",
        description="Name of the parameter that holds the file's path. The parameter is "
        "file-valued: {file.stem}, {file.name}, {file.parent} and {file.suffix} give parts "
        "of the path. Defaults to file.",
    )

    _param_ok = field_validator("param")(_check_param_name)


ManifestFormat = Literal["jsonl", "csv"]


class ManifestSource(_SpecModel):
    """Tasks listed in a file in shared storage, for batches too large for the object."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.format) || "
                + " || ".join(
                    f"self.path.lowerAscii().endsWith('{ext}')"
                    for ext in (".jsonl", ".ndjson", ".csv")
                ),
                MSG_MANIFEST_FORMAT,
            )
        )
    )

    path: str = Field(
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        description="Absolute path or URL of the manifest, readable by the operator. JSONL: one "
        "JSON object of parameters per line, every line with the same keys. CSV: a header row "
        "of parameter names, then one row per task (values are strings). Blank lines are "
        "ignored and the remaining records are tasks 0, 1, 2, ... in file order, so the file "
        "must not change while the batch runs.",
    )
    format: ManifestFormat | None = Field(
        None,
        description="jsonl or csv. Optional when the path ends in .jsonl, .ndjson or .csv.",
    )

    @model_validator(mode="after")
    def _format_known(self) -> ManifestSource:
        if self.format is None and manifest_format_from_path(self.path) is None:
            raise ValueError(MSG_MANIFEST_FORMAT)
        return self

    def resolved_format(self) -> ManifestFormat:
        """The format, given or inferred from the extension."""
        fmt = self.format or manifest_format_from_path(self.path)
        assert fmt is not None  # guaranteed by the validator
        return fmt


def manifest_format_from_path(path: str) -> ManifestFormat | None:
    """Infer a manifest format from the file extension (None when it says nothing)."""
    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith(".csv"):
        return "csv"
    return None


class TaskSource(_SpecModel):
    """Where the tasks come from: exactly one of items, range, matrix, files or manifest.

    Every source maps task index -> parameters deterministically, so a restart or re-apply sees
    the same tasks under the same indexes.
    """

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "[has(self.items), has(self.range), has(self.matrix), has(self.files), "
                "has(self.manifest)].filter(x, x).size() == 1",
                MSG_ONE_SOURCE,
            )
        )
    )

    items: (
        list[
            Annotated[
                dict[
                    ParamName,
                    Annotated[
                        InlineValue,
                        Field(description="A parameter value: a string or an integer."),
                    ],
                ],
                Field(
                    max_length=MAX_PARAMS_PER_ITEM,
                    description="One task: parameter name -> value.",
                    json_schema_extra=validations(CEL_PARAM_KEYS),
                ),
            ]
        ]
        | None
    ) = Field(
        None,
        min_length=1,
        max_length=MAX_INLINE_ITEMS,
        json_schema_extra=validations(
            cel(
                "self.all(i, i.size() == self[0].size() && i.all(k, k in self[0]))",
                MSG_ITEMS_SAME_KEYS,
            )
        ),
        description="Inline list of tasks, each a map of parameter name to value (string or "
        "integer; quote floats and booleans). Every item sets the same names. At most 10000 "
        "items: for more, " + LARGE_LIST_ADVICE + ".",
    )
    range: RangeSource | None = Field(
        None, description="One task per integer of start..stop (stop exclusive) by step."
    )
    matrix: (
        dict[
            ParamName,
            Annotated[
                MatrixAxis, Field(description="One axis: exactly one of values, range or files.")
            ],
        ]
        | None
    ) = Field(
        None,
        min_length=1,
        max_length=MAX_MATRIX_AXES,
        json_schema_extra=validations(
            CEL_PARAM_KEYS, cel(_matrix_size_rule(), MSG_MATRIX_TOO_LARGE)
        ),
        description="Cartesian product of named axes: one task per combination, the axis name "
        "being the parameter name. Axes are ordered by name (the API server does not keep map "
        "order) and the last axis varies fastest.",
    )
    files: FilesSource | None = Field(None, description="One task per file matching a glob.")
    manifest: ManifestSource | None = Field(
        None,
        description="Tasks listed in a JSONL or CSV file in shared storage, for 100k+ tasks.",
    )

    @field_validator("items")
    @classmethod
    def _items_consistent(
        cls, items: list[dict[str, InlineValue]] | None
    ) -> list[dict[str, InlineValue]] | None:
        if items is None:
            return None
        first = set(items[0])
        for position, item in enumerate(items):
            for name in item:
                _check_param_name(name)
            if set(item) != first:
                raise ValueError(f"item {position}: {MSG_ITEMS_SAME_KEYS}")
        return items

    @field_validator("matrix")
    @classmethod
    def _axis_names(cls, matrix: dict[str, MatrixAxis] | None) -> dict[str, MatrixAxis] | None:
        if matrix is not None:
            for name in matrix:
                _check_param_name(name)
        return matrix

    @model_validator(mode="after")
    def _exactly_one(self) -> TaskSource:
        chosen = (self.items, self.range, self.matrix, self.files, self.manifest)
        if sum(x is not None for x in chosen) != 1:
            raise ValueError(MSG_ONE_SOURCE)
        return self

    @model_validator(mode="after")
    def _matrix_not_too_large(self) -> TaskSource:
        known = 1
        for axis in (self.matrix or {}).values():
            if axis.values is not None:
                known *= len(axis.values)
            elif axis.range is not None:
                known *= len(axis.range.values())
            if known > MAX_TASKS:
                raise ValueError(MSG_MATRIX_TOO_LARGE)
        return self

    def matrix_axes(self) -> list[tuple[str, MatrixAxis]]:
        """The matrix axes in their canonical order: sorted by name."""
        return sorted((self.matrix or {}).items())


# ------------------------------------------------------------------------- dispatch and retry
class Order(_SpecModel):
    """The order in which tasks are dispatched."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.by != 'longestFirst' || has(self.costParam)", MSG_ORDER_COST)
        )
    )

    by: Literal["index", "longestFirst"] = Field(
        "index",
        description="index: in task index order. longestFirst: highest cost first (by "
        "costParam), so the longest tasks do not start last and leave other GPUs idle at the "
        "end (longest processing time first). Defaults to index.",
    )
    cost_param: ParamName | None = Field(
        None,
        description="For longestFirst: the parameter that estimates a task's cost, a number or "
        "a numeric string. For a file-valued parameter (from files or a matrix files axis) the "
        "cost is the file's size.",
    )

    @model_validator(mode="after")
    def _cost_given(self) -> Order:
        if self.by == "longestFirst" and self.cost_param is None:
            raise ValueError(MSG_ORDER_COST)
        return self


class Retry(_SpecModel):
    """How failed tasks are retried. Pod disruptions (eviction, node loss) never count."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.maxBackoffSeconds >= self.backoffSeconds", MSG_BACKOFF, ".maxBackoffSeconds")
        )
    )

    limit: int = Field(
        3,
        ge=0,
        le=100,
        description="Retries after the first attempt before a task counts as failed. Defaults "
        "to 3.",
    )
    backoff_seconds: int = Field(
        10,
        ge=0,
        le=86400,
        description="Delay before the first retry; doubled for each further retry. Defaults to 10.",
    )
    max_backoff_seconds: int = Field(
        600, ge=0, le=86400, description="Upper bound of the retry delay. Defaults to 600."
    )
    non_retriable_exit_codes: list[
        Annotated[int, Field(ge=1, le=255, description="An exit code, 1 to 255.")]
    ] = Field(
        default_factory=list,
        max_length=MAX_EXIT_CODES,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Exit codes that mean the task can never succeed (bad input): the task "
        "fails at once, without retries.",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> Retry:
        if self.max_backoff_seconds < self.backoff_seconds:
            raise ValueError(MSG_BACKOFF)
        return self


class Stuck(_SpecModel):
    """What happens to task pods stuck before Running on a configuration error (an image that
    cannot be pulled, a container that cannot be configured, a GPU request no node can ever
    fit). Such an attempt is not a task failure: it is given up without counting against
    retry.limit, and a batch that keeps hitting the error fails instead of waiting forever."""

    give_up_seconds: int = Field(
        120,
        ge=10,
        le=86400,
        description="How long a task pod may stay stuck on a configuration error (counted from "
        "its creation) before its attempt is given up: stopped, its pod removed, not counted "
        "against retry.limit. The error is reported at once either way. Defaults to 120.",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=1000,
        description="Given-up attempts (of this spec generation) after which the batch is "
        "Failed with reason TasksStuck. Editing the spec (e.g. a fixed image) starts the "
        "count afresh and resumes the batch. Defaults to 3.",
    )


class PodCleanup(_SpecModel):
    """What happens to task pods once their outcome is recorded in the status."""

    succeeded: Literal["Delete", "Keep"] = Field(
        "Delete",
        description="Delete (default) or Keep the pods of succeeded and skipped tasks. Their "
        "results are in the status either way.",
    )
    failed: Literal["Delete", "Keep"] = Field(
        "Keep",
        description="Keep (default) or Delete the pods of failed attempts; kept pods keep their "
        "logs for debugging.",
    )


class Worker(_SpecModel):
    """How the task container runs the command: through the gpubatch worker, or directly."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.wrap || !self.shell", MSG_SHELL_NEEDS_WRAP, ".shell"),
            cel("self.wrap || !self.atomicOutputs", MSG_ATOMIC_NEEDS_WRAP, ".atomicOutputs"),
            cel("self.mode != 'Warm' || self.wrap", MSG_WARM_NEEDS_WRAP, ".mode"),
            cel("self.mode != 'Warm' || !self.shell", MSG_WARM_NO_SHELL, ".shell"),
            cel(
                "self.mode == 'Warm' || !has(self.loadDeadlineSeconds)",
                MSG_LOAD_DEADLINE_NEEDS_WARM,
                ".loadDeadlineSeconds",
            ),
        )
    )

    wrap: bool = Field(
        True,
        description="Run the command through the gpubatch-worker entrypoint (it must be in the "
        "image), which reports the GPU, re-checks outputs, enforces the task deadline and "
        "writes a result the operator reads. false runs the command as is. Defaults to true.",
    )
    require_gpu: bool = Field(
        True,
        alias="requireGPU",
        description="With wrap: fail the task (distinct exit code) when no NVIDIA GPU is "
        "visible, instead of running on the CPU by accident. Defaults to true.",
    )
    atomic_outputs: bool = Field(
        False,
        description="With wrap: the command writes each output to a temporary path the worker "
        "passes in, and the worker moves it into place only on success, so a half-written file "
        "never counts as done. Defaults to false.",
    )
    shell: bool = Field(
        False,
        description="With wrap: join command and args into one line run by /bin/sh -c; every "
        "substituted value is shell-quoted. Defaults to false: no shell is involved.",
    )
    mode: Literal["PerTask", "Warm"] = Field(
        "PerTask",
        description="PerTask (default): the command is started once per task. Warm: the command "
        "is started once per slot and fed tasks one at a time (one JSON line per task on stdin, "
        "one reply each), so an expensive model is loaded once; every task keeps its own "
        "outcome, retries and deadline. Supported by gpubatch run only so far.",
    )
    load_deadline_seconds: int | None = Field(
        None,
        ge=1,
        description="Warm only: how long the program may load before its first task's own "
        "deadline starts counting. Unset: no limit on the load.",
    )

    @model_validator(mode="after")
    def _wrap_needed(self) -> Worker:
        if not self.wrap and self.shell:
            raise ValueError(MSG_SHELL_NEEDS_WRAP)
        if not self.wrap and self.atomic_outputs:
            raise ValueError(MSG_ATOMIC_NEEDS_WRAP)
        if self.mode == "Warm" and not self.wrap:
            raise ValueError(MSG_WARM_NEEDS_WRAP)
        if self.mode == "Warm" and self.shell:
            raise ValueError(MSG_WARM_NO_SHELL)
        if self.mode != "Warm" and self.load_deadline_seconds is not None:
            raise ValueError(MSG_LOAD_DEADLINE_NEEDS_WARM)
        return self


# ------------------------------------------------------------------------------ pod template
class _OpenModel(_SpecModel):
    """A Kubernetes object gpubatch passes through: known fields typed, the rest kept as is."""

    model_config = ConfigDict(extra="allow")


class EnvVar(_OpenModel):
    """An environment variable of a container (as in a Pod)."""

    name: str = Field(min_length=1, max_length=1024, description="Variable name.")
    value: str | None = Field(
        None,
        description="Value; placeholders such as {name} are substituted per task in the task "
        "container.",
    )


class Container(_OpenModel):
    """A container, as in a Pod. Only the fields gpubatch reads are described here."""

    name: str = Field(min_length=1, max_length=253, description="Container name.")
    command: list[Annotated[str, Field(description="One argv element.")]] | None = Field(
        None,
        description="Entrypoint argv; in the task container placeholders are substituted per "
        "task. Never run through a shell unless worker.shell is true.",
    )
    args: list[Annotated[str, Field(description="One argument.")]] | None = Field(
        None,
        description="Arguments; in the task container placeholders are substituted per task.",
    )
    env: list[Annotated[EnvVar, Field(description="An environment variable.")]] | None = Field(
        None,
        max_length=MAX_ENV_PER_CONTAINER,
        description="Environment variables. Must not set CUDA_VISIBLE_DEVICES or "
        "NVIDIA_VISIBLE_DEVICES.",
    )


class PodSpec(_OpenModel):
    """A Pod spec. Every Pod field is accepted; gpubatch adds the GPU limit, labels and env."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.containers) && self.containers.size() > 0", MSG_CONTAINERS, ".containers"
            ),
            _no_gpu_env_rule("containers"),
            _no_gpu_env_rule("initContainers"),
            cel(
                "!has(self.restartPolicy) || self.restartPolicy == 'Never'",
                MSG_RESTART_POLICY,
                ".restartPolicy",
            ),
        )
    )

    containers: list[Annotated[Container, Field(description="A container, as in a Pod.")]] = Field(
        min_length=1,
        max_length=MAX_CONTAINERS,
        description="The containers; the task container is the first, or the one named by "
        "spec.taskContainer.",
    )
    init_containers: (
        list[Annotated[Container, Field(description="An init container, as in a Pod.")]] | None
    ) = Field(None, max_length=MAX_CONTAINERS, description="Init containers, as in a Pod.")
    restart_policy: str | None = Field(
        None,
        description="Must be Never or unset: gpubatch retries a failed task with a new pod.",
    )

    @field_validator("containers", mode="before")
    @classmethod
    def _some_container(cls, containers: object) -> object:
        # Before the minItems check, so people get the message that says what to add.
        if isinstance(containers, list) and not containers:
            raise ValueError(MSG_CONTAINERS)
        return containers

    @model_validator(mode="after")
    def _no_gpu_pinning(self) -> PodSpec:
        for container in [*self.containers, *(self.init_containers or [])]:
            for var in container.env or []:
                if var.name in GPU_PINNING_ENV:
                    raise ValueError(f"container {container.name!r}: {MSG_GPU_ENV}")
        if self.restart_policy not in (None, "Never"):
            raise ValueError(MSG_RESTART_POLICY)
        return self


class PodTemplateMetadata(_SpecModel):
    """Labels and annotations copied onto every task pod."""

    labels: dict[str, Annotated[str, Field(description="Label value.")]] | None = Field(
        None, description="Labels for every task pod."
    )
    annotations: dict[str, Annotated[str, Field(description="Annotation value.")]] | None = Field(
        None, description="Annotations for every task pod."
    )


class PodTemplate(_SpecModel):
    """The task pod template, like a Job's: metadata plus a Pod spec."""

    metadata: PodTemplateMetadata | None = Field(
        None, description="Labels and annotations for every task pod."
    )
    spec: PodSpec = Field(description="The Pod spec of every task pod.")


# ------------------------------------------------------------------------------------ the spec
class GPUBatchSpec(_SpecModel):
    """A batch of independent GPU tasks: one pod per task, one GPU per pod (by default)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.outputRoot) || !has(self.outputs) || self.outputs.all(o, "
                f"o.startsWith('/') || o.matches('{URL_PATTERN}') || "
                "(o.startsWith('{') && !o.startsWith('{{')))",
                MSG_OUTPUT_ABSOLUTE,
                ".outputs",
            ),
            cel(
                "!has(self.taskContainer) || !has(self.template.spec.containers) || "
                "self.template.spec.containers.exists(c, c.name == self.taskContainer)",
                MSG_TASK_CONTAINER,
                ".taskContainer",
            ),
            cel(
                "(has(self.worker) && has(self.worker.wrap) && !self.worker.wrap) || "
                "!has(self.template.spec.containers) || self.template.spec.containers.size() == 0"
                " || (has(self.taskContainer) ? "
                "!self.template.spec.containers.exists(c, c.name == self.taskContainer) || "
                "self.template.spec.containers.exists(c, c.name == self.taskContainer && "
                "has(c.command) && c.command.size() > 0) : "
                "has(self.template.spec.containers[0].command) && "
                "self.template.spec.containers[0].command.size() > 0)",
                MSG_WRAP_NEEDS_COMMAND,
                ".template",
            ),
            # A transition rule (it reads oldSelf): the API server checks it on updates only.
            # On the spec rather than the field, so adding or removing managedBy is refused too.
            cel(
                "has(self.managedBy) == has(oldSelf.managedBy) && "
                "(!has(self.managedBy) || self.managedBy == oldSelf.managedBy)",
                MSG_MANAGED_BY_IMMUTABLE,
                ".managedBy",
            ),
        )
    )

    tasks: TaskSource = Field(
        description="The tasks: exactly one of items, range, matrix, files or manifest. Each "
        "task has an index (0..N-1) and parameters used as {placeholders} in outputs, command, "
        "args and env values."
    )
    outputs: list[
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_TEMPLATE_LENGTH,
                description="An output path template.",
            ),
        ]
    ] = Field(
        default_factory=list,
        max_length=MAX_OUTPUTS,
        json_schema_extra=validations(
            cel(f"self.all(o, !o.matches('{DOTDOT_PATTERN}'))", MSG_OUTPUT_DOTDOT)
        ),
        description="Output path templates, e.g. /data/out/{video.stem}_{image.stem}.mp4. A "
        "task whose outputs all exist is skipped, so re-running never redoes finished work. "
        "Templates use {param}, {param.stem|name|parent|suffix}, {index}; the command refers "
        "to them as {outputs[0]}, {outputs[1]}, ...",
    )
    output_root: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        json_schema_extra=validations(
            cel(
                f"(self.startsWith('/') || self.matches('{URL_PATTERN}')) && "
                f"!self.matches('{DOTDOT_PATTERN}')",
                MSG_OUTPUT_ROOT,
            )
        ),
        description="Folder or URL prefix (s3://bucket/prefix) that every output must resolve "
        "inside; relative outputs are taken relative to it. A task whose output would escape "
        "it (a .. segment, another folder) is refused.",
    )
    parallelism: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="Most task pods running at once. Unset: as many as the cluster has free "
        "GPUs for.",
    )
    max_pending: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Most task pods waiting to be scheduled beyond those running, so the "
        "scheduler is never flooded and a GPU that frees up takes the next task (a dynamic "
        "queue). Unset: the operator's default (a few).",
    )
    order: Order = Field(
        default_factory=Order, description="Dispatch order: index (default) or longestFirst."
    )
    gpus_per_task: int = Field(
        1, ge=1, le=64, description="GPUs each task pod requests. Defaults to 1."
    )
    gpu_resource: str = Field(
        DEFAULT_GPU_RESOURCE,
        min_length=1,
        max_length=253,
        json_schema_extra=validations(
            cel(
                "self.matches('" + GPU_RESOURCE_PATTERN.replace("\\", "\\\\") + "') && "
                "!self.matches('^([^/]*[.])?kubernetes[.]io/')",
                MSG_GPU_RESOURCE,
            )
        ),
        description="Extended resource requested for GPUs, e.g. nvidia.com/mig-1g.10gb for a "
        "MIG slice or another vendor's resource. Defaults to nvidia.com/gpu.",
    )
    gpu_models: (
        list[
            Annotated[
                str,
                Field(
                    min_length=1,
                    max_length=253,
                    description="A GPU model, as in the gpuModelLabel node label.",
                ),
            ]
        ]
        | None
    ) = Field(
        None,
        max_length=MAX_GPU_MODELS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Acceptable GPU models (values of gpuModelLabel) in order of preference: "
        "task pods run only on these, preferring earlier ones. Unset: any GPU.",
    )
    gpu_model_label: str = Field(
        DEFAULT_GPU_MODEL_LABEL,
        min_length=1,
        max_length=317,
        description="Node label that names the GPU model, used by gpuModels and by the "
        "per-model statistics. Defaults to nvidia.com/gpu.product (GPU feature discovery).",
    )
    retry: Retry = Field(default_factory=Retry, description="Retries of failed tasks.")
    stuck: Stuck = Field(
        default_factory=Stuck,
        description="Task pods stuck before Running on a configuration error: when an attempt "
        "is given up and when the batch fails.",
    )
    task_deadline_seconds: int | None = Field(
        None,
        ge=1,
        description="Longest one task attempt may run; a longer one is stopped and counts as "
        "a failed attempt.",
    )
    max_failed_tasks: int | None = Field(
        None,
        ge=0,
        description="When more tasks than this have failed (after retries), the batch stops "
        "dispatching and is Failed. Unset: no limit; the batch runs every task and failures "
        "are listed in the status.",
    )
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        description="Longest the batch may run from its start; then running tasks are stopped "
        "and the batch is Failed.",
    )
    suspend: bool = Field(
        False,
        description="true stops dispatching new tasks (running tasks finish); false resumes. "
        "Defaults to false.",
    )
    pod_cleanup: PodCleanup = Field(
        default_factory=PodCleanup, description="Which finished task pods are deleted."
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        description="Delete the batch (and its pods) this long after it is Complete or Failed. "
        "Unset: keep it.",
    )
    worker: Worker = Field(
        default_factory=Worker, description="How the task container runs the command."
    )
    task_container: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="Name of the container that runs the task (gets the GPU and the rendered "
        "command). Unset: the first container.",
    )
    managed_by: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_MANAGED_BY_LENGTH,
        json_schema_extra=validations(
            cel(
                "self.matches('" + GPU_RESOURCE_PATTERN.replace("\\", "\\\\") + "')",
                MSG_MANAGED_BY,
            )
        ),
        description="The controller that runs this batch, like a Job's managedBy. Unset or "
        f"{MANAGED_BY_GPUBATCH}: the gpubatch operator. Any other value (e.g. "
        "kueue.x-k8s.io/multikueue): the gpubatch operator leaves the batch alone (no pods, "
        "no status, no finalizer) for that controller. Cannot change after creation.",
    )
    template: PodTemplate = Field(
        description="The task pod template, like a Job's. command, args and env values of the "
        "task container may use placeholders."
    )

    @field_validator("gpu_resource")
    @classmethod
    def _gpu_resource_form(cls, resource: str) -> str:
        if not _GPU_RESOURCE_RE.match(resource) or resource.split("/")[0].endswith("kubernetes.io"):
            raise ValueError(f"{resource!r}: {MSG_GPU_RESOURCE}")
        return resource

    @field_validator("managed_by")
    @classmethod
    def _managed_by_form(cls, manager: str | None) -> str | None:
        if manager is not None and not _GPU_RESOURCE_RE.match(manager):
            raise ValueError(f"{manager!r}: {MSG_MANAGED_BY}")
        return manager

    def managed_by_gpubatch(self) -> bool:
        """Whether the gpubatch operator runs this batch (managedBy unset or gpubatch's own)."""
        return self.managed_by in (None, MANAGED_BY_GPUBATCH)

    @field_validator("outputs")
    @classmethod
    def _outputs_plain(cls, outputs: list[str]) -> list[str]:
        for output in outputs:
            if has_dotdot(output):
                raise ValueError(f"{output!r}: {MSG_OUTPUT_DOTDOT}")
        return outputs

    @field_validator("output_root")
    @classmethod
    def _root_form(cls, root: str | None) -> str | None:
        if root is not None and (not (root.startswith("/") or is_url(root)) or has_dotdot(root)):
            raise ValueError(f"{root!r}: {MSG_OUTPUT_ROOT}")
        return root

    @model_validator(mode="after")
    def _cross_field(self) -> GPUBatchSpec:
        if self.output_root is None:
            for output in self.outputs:
                if not _anchored(output):
                    raise ValueError(f"outputs: {output!r}: {MSG_OUTPUT_ABSOLUTE}")
        if self.task_container is not None and self.task_container not in {
            c.name for c in self.template.spec.containers
        }:
            raise ValueError(f"{self.task_container!r}: {MSG_TASK_CONTAINER}")
        if (
            self.worker.wrap
            and not self.template.spec.containers[self.task_container_index()].command
        ):
            raise ValueError(MSG_WRAP_NEEDS_COMMAND)
        return self

    def task_container_index(self) -> int:
        """Position of the task container in template.spec.containers."""
        if self.task_container is None:
            return 0
        names = [c.name for c in self.template.spec.containers]
        return names.index(self.task_container)


def _anchored(output: str) -> bool:
    """An output that does not need outputRoot: absolute, a URL, or led by a placeholder."""
    return (
        output.startswith("/")
        or is_url(output)
        or (output.startswith("{") and not output.startswith("{{"))
    )


class GPUBatch(_SpecModel):
    """A whole GPUBatch object, as read from a YAML file or the API server."""

    model_config = ConfigDict(extra="ignore", frozen=False)

    api_version: Literal["gpubatch.io/v1alpha1"] = Field(
        "gpubatch.io/v1alpha1", description="gpubatch.io/v1alpha1"
    )
    kind: Literal["GPUBatch"] = Field("GPUBatch", description="GPUBatch")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: GPUBatchSpec = Field(description="What to run.")
    status: GPUBatchStatus | None = Field(None, description="What has happened so far.")
