"""Task sources -> a deterministic, random-access list of tasks (index -> parameters).

Why deterministic: the status records tasks by index, and the operator can restart (or the
user re-apply) at any moment; the same spec and the same files must always give the same index
for the same task. So globs are sorted, matrix axes are taken in name order (the API server does
not keep map order anyway) with the last axis varying fastest, and manifests are read in file
order.

Why random access: a 100k-task batch must not need 100k rendered pod specs, nor even 100k
parameter dicts, in memory. Ranges, matrices and file lists compute `task(i)` from the axes
(a matrix of two 1000-file axes holds 2000 paths, not a million tasks); manifests keep one
compact line per record and decode it when asked.

I/O is injected: this module never touches files. `FileLister` and `ManifestReader` are
implemented in `gpubatch.edges` (local paths, fsspec URLs) and by in-memory fakes in tests.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from gpubatch.api.spec import (
    MAX_TASKS,
    FilesSource,
    ManifestSource,
    MatrixAxis,
    ParamValue,
    RangeSource,
    TaskSource,
    is_param_name,
)
from gpubatch.core.errors import SpecError


# ------------------------------------------------------------------------------ injected I/O
class FileInfo(NamedTuple):
    """A file a glob matched; `size` in bytes when the lister knows it cheaply (or None)."""

    path: str
    size: int | None = None


class FileLister(Protocol):
    """Lists files matching a glob (files only, not folders), as the operator sees them."""

    def glob(self, pattern: str) -> Iterable[str | FileInfo]:
        """Every file matching `pattern`; order does not matter (the caller sorts)."""
        ...


class ManifestReader(Protocol):
    """Reads a manifest from shared storage."""

    def open(self, path: str) -> Iterable[str]:
        """The file's lines as text, line endings kept (CSV fields may span lines)."""
        ...


# ------------------------------------------------------------------------------------ tasks
@dataclass(frozen=True, slots=True)
class Task:
    """One task: its index in the batch and its parameters."""

    index: int
    params: dict[str, ParamValue]


class TaskList(ABC):
    """The expanded tasks of a batch: count, random access, iteration.

    `param_names` are the parameters every task has (what templates may use); `path_params`
    those that hold file paths from a glob; `fingerprint` a digest of the whole list, so a
    change under a running batch (a new file matching the glob) can be noticed.
    """

    param_names: tuple[str, ...]
    path_params: frozenset[str]
    fingerprint: str

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _params(self, index: int) -> dict[str, ParamValue]: ...

    def count(self) -> int:
        """Number of tasks (indexes 0 .. count-1)."""
        return len(self)

    def task(self, index: int) -> Task:
        """The task at `index`; IndexError outside 0 .. count-1."""
        if not 0 <= index < len(self):
            raise IndexError(f"task index {index} out of range 0..{len(self) - 1}")
        return Task(index, self._params(index))

    def tasks(self, indexes: Iterable[int]) -> Iterator[Task]:
        """The tasks at `indexes`, in that order (e.g. the next few to dispatch)."""
        for index in indexes:
            yield self.task(index)

    def __iter__(self) -> Iterator[Task]:
        for index in range(len(self)):
            yield Task(index, self._params(index))

    def file_size(self, index: int, param: str) -> int | None:
        """Size in bytes of the file in path parameter `param` of task `index`, if known."""
        del index, param
        return None


@dataclass(frozen=True)
class Axis:
    """One axis of a product: a name and its values (a list, or a lazy `range`)."""

    name: str
    values: Sequence[ParamValue]
    sizes: Sequence[int | None] | None = None  # file sizes, for file axes


class ProductTasks(TaskList):
    """The cartesian product of axes: ranges, matrices and file lists (one-axis products).

    Task i is found by writing i in the mixed radix of the axis lengths, last axis fastest, so
    nothing is materialised beyond the axes themselves.
    """

    def __init__(
        self, axes: Sequence[Axis], *, path_params: Iterable[str], fingerprint: str
    ) -> None:
        self._axes = tuple(axes)
        self.param_names = tuple(a.name for a in self._axes)
        self.path_params = frozenset(path_params)
        self.fingerprint = fingerprint
        self._count = math.prod(len(a.values) for a in self._axes)
        self._by_name = {a.name: position for position, a in enumerate(self._axes)}

    def __len__(self) -> int:
        return self._count

    def _coordinates(self, index: int) -> list[int]:
        coordinates = [0] * len(self._axes)
        for position in range(len(self._axes) - 1, -1, -1):
            index, coordinates[position] = divmod(index, len(self._axes[position].values))
        return coordinates

    def _params(self, index: int) -> dict[str, ParamValue]:
        coordinates = self._coordinates(index)
        return {axis.name: axis.values[c] for axis, c in zip(self._axes, coordinates, strict=True)}

    def file_size(self, index: int, param: str) -> int | None:
        position = self._by_name.get(param)
        if position is None:
            return None
        sizes = self._axes[position].sizes
        if sizes is None:
            return None
        return sizes[self._coordinates(index)[position]]


class ItemTasks(TaskList):
    """Inline items: already a list of parameter maps (at most 10000, enforced by the API)."""

    def __init__(self, items: Sequence[Mapping[str, ParamValue]], *, fingerprint: str) -> None:
        self._items = tuple(dict(item) for item in items)
        self.param_names = tuple(self._items[0]) if self._items else ()
        self.path_params = frozenset()
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self._items)

    def _params(self, index: int) -> dict[str, ParamValue]:
        return dict(self._items[index])


class ManifestTasks(TaskList):
    """Manifest records, one compact JSON string each, decoded on access.

    A JSON string per record costs roughly its text; a dict per record would cost several
    times more, which matters at a million tasks.
    """

    def __init__(
        self,
        names: Sequence[str],
        records: Sequence[str],
        *,
        as_list: bool,
        fingerprint: str,
    ) -> None:
        self.param_names = tuple(names)
        self.path_params = frozenset()
        self.fingerprint = fingerprint
        self._records = records
        self._as_list = as_list  # CSV rows are stored as JSON lists in header order

    def __len__(self) -> int:
        return len(self._records)

    def _params(self, index: int) -> dict[str, ParamValue]:
        decoded = json.loads(self._records[index])
        if self._as_list:
            return dict(zip(self.param_names, decoded, strict=True))
        return dict(decoded)


# -------------------------------------------------------------------------------- expansion
def expand(
    source: TaskSource,
    *,
    files: FileLister | None = None,
    manifests: ManifestReader | None = None,
) -> TaskList:
    """Expand a task source; SpecError for anything the API server could not check.

    That is: a glob that matches nothing, a manifest that does not parse or is empty, more than
    MAX_TASKS tasks. `files` is needed for files and matrix-files sources, `manifests` for
    manifest sources.
    """
    if source.items is not None:
        tasks: TaskList = ItemTasks(source.items, fingerprint=_digest_json(source.items))
    elif source.range is not None:
        tasks = _expand_range(source.range)
    elif source.matrix is not None:
        tasks = _expand_matrix(source.matrix_axes(), files)
    elif source.files is not None:
        tasks = _expand_files(source.files, files)
    elif source.manifest is not None:
        if manifests is None:
            raise ValueError("expanding a manifest source needs a ManifestReader")
        tasks = _expand_manifest(source.manifest, manifests)
    else:  # pragma: no cover - TaskSource guarantees one source
        raise SpecError("no task source", field="spec.tasks")
    if len(tasks) > MAX_TASKS:
        raise SpecError(
            f"the task source yields {len(tasks)} tasks; at most {MAX_TASKS} are allowed in "
            "one batch: split it into several batches",
            field="spec.tasks",
        )
    return tasks


def _expand_range(spec: RangeSource) -> ProductTasks:
    return ProductTasks(
        [Axis(spec.param, spec.values())],
        path_params=(),
        fingerprint=_digest_json(spec.model_dump(mode="json")),
    )


def _expand_matrix(
    axes: Sequence[tuple[str, MatrixAxis]], files: FileLister | None
) -> ProductTasks:
    built: list[Axis] = []
    paths: list[str] = []
    digest = hashlib.sha256()
    for name, axis in axes:
        digest.update(f"axis {name}\n".encode())
        if axis.values is not None:
            built.append(Axis(name, list(axis.values)))
            digest.update(_canonical_json(axis.values).encode())
        elif axis.range is not None:
            built.append(Axis(name, axis.range.values()))
            digest.update(_canonical_json(axis.range.model_dump(mode="json")).encode())
        else:
            assert axis.files is not None  # MatrixAxis guarantees exactly one kind
            found = _glob(axis.files, files, field=f"spec.tasks.matrix.{name}.files")
            built.append(_file_axis(name, found))
            paths.append(name)
            for info in found:
                digest.update(info.path.encode() + b"\n")
    return ProductTasks(built, path_params=paths, fingerprint=digest.hexdigest())


def _expand_files(spec: FilesSource, files: FileLister | None) -> ProductTasks:
    found = _glob(spec.glob, files, field="spec.tasks.files.glob")
    digest = hashlib.sha256(f"files {spec.param}\n".encode())
    for info in found:
        digest.update(info.path.encode() + b"\n")
    return ProductTasks(
        [_file_axis(spec.param, found)], path_params=[spec.param], fingerprint=digest.hexdigest()
    )


def _file_axis(name: str, found: Sequence[FileInfo]) -> Axis:
    sizes = [info.size for info in found]
    return Axis(
        name,
        [info.path for info in found],
        sizes=sizes if any(size is not None for size in sizes) else None,
    )


def _glob(pattern: str, files: FileLister | None, *, field: str) -> list[FileInfo]:
    """Matches of `pattern`, de-duplicated and sorted by path (the determinism rule)."""
    if files is None:
        raise ValueError("expanding a files source needs a FileLister")
    unique: dict[str, FileInfo] = {}
    for entry in files.glob(pattern):
        info = FileInfo(entry) if isinstance(entry, str) else entry
        unique[info.path] = info
    if not unique:
        raise SpecError(
            f"the glob {pattern!r} matched no files as the operator sees them; check the path "
            "and that the storage is mounted into (or readable by) the operator",
            field=field,
        )
    if len(unique) > MAX_TASKS:
        raise SpecError(
            f"the glob {pattern!r} matched {len(unique)} files; at most {MAX_TASKS} are allowed",
            field=field,
        )
    return [unique[path] for path in sorted(unique)]


# --------------------------------------------------------------------------------- manifests
def _expand_manifest(spec: ManifestSource, reader: ManifestReader) -> ManifestTasks:
    field = "spec.tasks.manifest"
    lines = reader.open(spec.path)
    if spec.resolved_format() == "csv":
        names, records, fingerprint = _read_csv(lines, path=spec.path, field=field)
        as_list = True
    else:
        names, records, fingerprint = _read_jsonl(lines, path=spec.path, field=field)
        as_list = False
    if not records:
        raise SpecError(f"the manifest {spec.path} lists no tasks", field=field)
    return ManifestTasks(names, records, as_list=as_list, fingerprint=fingerprint)


def _read_jsonl(lines: Iterable[str], *, path: str, field: str) -> tuple[list[str], list[str], str]:
    names: list[str] | None = None
    name_set: frozenset[str] = frozenset()
    records: list[str] = []
    digest = hashlib.sha256(b"jsonl\n")
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            raise SpecError(f"{where} is not valid JSON: {exc}", field=field) from exc
        if not isinstance(record, dict):
            raise SpecError(
                f"{where}: each line must be a JSON object of parameters, "
                f"got {type(record).__name__}",
                field=field,
            )
        if names is None:
            names = list(record)
            name_set = frozenset(names)
            _check_names(names, where=where, field=field)
        elif record.keys() != name_set:
            raise SpecError(
                f"{where} has parameters {sorted(record)}, but the first line has "
                f"{sorted(name_set)}: every line must set the same parameters",
                field=field,
            )
        for key, value in record.items():
            if isinstance(value, dict | list) or value is None:
                raise SpecError(
                    f"{where}: parameter {key!r} is {json.dumps(value)[:40]}; parameter values "
                    "must be strings, numbers or booleans",
                    field=field,
                )
        _check_count(len(records) + 1, path=path, field=field)
        records.append(text)
        digest.update(text.encode() + b"\n")
    return names or [], records, digest.hexdigest()


def _read_csv(lines: Iterable[str], *, path: str, field: str) -> tuple[list[str], list[str], str]:
    reader = csv.reader(lines, strict=True)
    names: list[str] | None = None
    records: list[str] = []
    digest = hashlib.sha256(b"csv\n")
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            where = f"{path} line {reader.line_num}"
            if names is None:
                names = [name.strip() for name in row]
                _check_names(names, where=where + " (the header)", field=field)
                continue
            if len(row) != len(names):
                raise SpecError(
                    f"{where} has {len(row)} fields, but the header has {len(names)}",
                    field=field,
                )
            _check_count(len(records) + 1, path=path, field=field)
            encoded = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
            records.append(encoded)
            digest.update(encoded.encode() + b"\n")
    except csv.Error as exc:
        raise SpecError(
            f"{path} line {reader.line_num} is not valid CSV: {exc}", field=field
        ) from exc
    return names or [], records, digest.hexdigest()


def _check_names(names: Sequence[str], *, where: str, field: str) -> None:
    for name in names:
        if not is_param_name(name):
            raise SpecError(
                f"{where}: {name!r} cannot be a parameter name: use identifiers (letters, "
                "digits and _, not starting with a digit), not index or outputs",
                field=field,
            )
    if len(set(names)) != len(names):
        raise SpecError(f"{where}: parameter names repeat: {list(names)}", field=field)


def _check_count(count: int, *, path: str, field: str) -> None:
    if count > MAX_TASKS:
        raise SpecError(
            f"the manifest {path} lists more than {MAX_TASKS} tasks; split it into several batches",
            field=field,
        )


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number gpubatch accepts")


def _canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest_json(value: object) -> str:
    return hashlib.sha256(_canonical_json(value).encode()).hexdigest()
