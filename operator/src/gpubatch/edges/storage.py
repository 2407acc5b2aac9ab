"""Outputs and inputs in storage: local or shared filesystems, and fsspec URLs (s3://, gs://, ...).

This is where "skip finished work" meets storage. Two callers with different needs:

- the operator checks the outputs of up to 100k tasks before dispatching, so `existing()` works in
  bulk: it groups paths by parent directory (or object prefix) and lists each parent once, instead
  of one stat or HEAD request per path. A parent with only a few paths to check is probed per path
  instead, because listing a directory of a million files to find three is the slower way.
- the worker re-checks its own task's few outputs (`all_exist`) and, in atomic mode, renames its
  partial outputs into place (`promote`).

Plain paths (and file:// URLs) use the os module only, so the worker needs no fsspec for local or
shared-volume outputs. URLs import fsspec lazily; a missing fsspec, or a missing protocol package
such as s3fs, raises StorageUnavailable with the package to install. Listings bypass fsspec's
listing cache, because a cached "absent" would make the operator redo finished work.

Everything here blocks; async callers run it in a thread.
"""

from __future__ import annotations

import glob as globlib
import gzip
import os
import re
import shutil
import stat
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    # Imported when called, so the worker's import chain stays free of the spec models.
    from gpubatch.core.expand import FileInfo

#: A parent with at most this many paths to check is probed path by path rather than listed.
PROBE_PER_PATH_UP_TO: Final = 8
#: Concurrent listings for URLs (network latency, not CPU, is the cost).
URL_WORKERS: Final = 16

_URL: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class StorageError(Exception):
    """Storage could not answer (permissions, network); the message says where."""


class StorageUnavailable(StorageError):
    """The package needed for a URL's protocol is not installed."""


def needs_fsspec(path: str) -> bool:
    """Whether `path` is a URL that fsspec must open (any scheme but file://, which is a local
    path here; `api.spec.is_url` answers the other question: is it anchored, not relative)."""
    return bool(_URL.match(path)) and not path.startswith("file://")


def existing(paths: Iterable[str]) -> set[str]:
    """The subset of `paths` that exist, each returned exactly as given.

    A path exists when its directory lists an entry of that name (a file, a directory or an
    object prefix); a symbolic link counts only if its target exists. A missing parent means
    nothing below it exists.
    """
    local: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    remote: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        target = remote if needs_fsspec(path) else local
        parent, name = _split(path if target is remote else _local(path))
        target[parent][name].append(path)
    found: set[str] = set()
    for parent, names in local.items():
        found |= _existing_local(parent, names)
    if remote:
        groups = list(remote.items())
        with ThreadPoolExecutor(max_workers=min(URL_WORKERS, len(groups))) as pool:
            for result in pool.map(lambda group: _existing_url(*group), groups):
                found |= result
    return found


def all_exist(paths: Sequence[str]) -> bool:
    """Whether every path exists (True for an empty list, like `all`: callers decide)."""
    return len(existing(paths)) == len(set(paths))


def glob_files(pattern: str) -> list[FileInfo]:
    """Sorted files (not folders) matching a glob pattern, each with its size (longest-first
    ordering by input size needs it, for local files and URLs alike); URLs come back as full
    URLs.

    `**` recurses. Hidden names (like atomic mode's partial outputs) do not match `*`, as in a
    shell, so a half-written output of one batch is never the input of the next.
    """
    from gpubatch.core.expand import FileInfo

    if not needs_fsspec(pattern):
        files = []
        for match in globlib.glob(_local(pattern), recursive=True):
            try:
                info = os.stat(match)
            except FileNotFoundError:
                continue  # deleted since the listing
            if stat.S_ISREG(info.st_mode):
                files.append(FileInfo(match, info.st_size))
        return sorted(files)
    fs, fs_pattern = _url_to_fs(pattern)
    fs.invalidate_cache()
    try:
        matches = fs.glob(fs_pattern, detail=True)
    except OSError as err:
        raise StorageError(f"cannot glob {pattern}: {err}") from err
    return sorted(
        FileInfo(fs.unstrip_protocol(path), _size(info))
        for path, info in matches.items()
        if info.get("type") == "file"
    )


def read_lines(path: str) -> Iterator[str]:
    """The lines of a text file (a manifest) with their endings, as `readlines` gives them.

    Endings are kept untranslated (`newline=""`) so a CSV reader sees quoted fields that span
    lines exactly as written. A `.gz` file is decompressed. Lazy: a manifest of a million lines
    is never held in memory at once.
    """
    try:
        if needs_fsspec(path):
            import fsspec

            _url_to_fs(path)  # a clear StorageUnavailable before fsspec's own error
            opened = fsspec.open(path, "rt", encoding="utf-8", newline="", compression="infer")
        else:
            local = _local(path)
            opener: Any = gzip.open if local.endswith(".gz") else open
            opened = opener(local, "rt", encoding="utf-8", newline="")
        with opened as handle:
            yield from handle
    except FileNotFoundError as err:
        raise StorageError(f"{path} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise StorageError(f"cannot read {path}: {err}") from err


def promote(partial: str, final: str) -> None:
    """Move a finished partial output into place (atomic mode's last step).

    Locally an atomic rename(2) in one directory: readers see the old state or the whole new
    file, never half. On object storage a copy then delete: the final object still appears
    whole, since an object PUT/copy is atomic. A final directory that already exists is
    replaced.
    """
    if needs_fsspec(partial) != needs_fsspec(final):
        raise StorageError(f"cannot move {partial} to {final}: one is a URL, the other is not")
    if needs_fsspec(final):
        fs, source = _url_to_fs(partial)
        _, target = _url_to_fs(final)
        try:
            fs.mv(source, target, recursive=fs.isdir(source))
        except OSError as err:
            raise StorageError(f"cannot move {partial} to {final}: {err}") from err
        return
    source, target = _local(partial), _local(final)
    try:
        os.replace(source, target)
    except OSError as err:
        if not (os.path.isdir(source) and os.path.isdir(target)):
            raise StorageError(f"cannot move {partial} to {final}: {err}") from err
        shutil.rmtree(target)
        os.replace(source, target)


def remove(paths: Iterable[str]) -> None:
    """Delete files or directories, ignoring those already gone (cleans stale partials)."""
    for path in paths:
        try:
            if needs_fsspec(path):
                fs, fs_path = _url_to_fs(path)
                fs.rm(fs_path, recursive=True)
            else:
                local = _local(path)
                if os.path.isdir(local) and not os.path.islink(local):
                    shutil.rmtree(local)
                else:
                    os.remove(local)
        except FileNotFoundError:
            continue
        except OSError as err:
            raise StorageError(f"cannot remove {path}: {err}") from err


def ensure_parent_dirs(paths: Iterable[str]) -> list[str]:
    """Create the missing parent directories of local paths, so a program may write directly.

    Object stores have no directories, so URLs are left alone. Returns the problems found
    (the program may still manage; it will fail with its own message if not).
    """
    problems = []
    for path in paths:
        if needs_fsspec(path):
            continue
        parent = os.path.dirname(_local(path).rstrip("/"))
        if parent:
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as err:
                problems.append(f"cannot create {parent}: {err}")
    return problems


class Storage:
    """Storage as task expansion reads it (core.expand's FileLister and ManifestReader): the
    one adapter both executors pass to `core.prepare.prepare_batch`."""

    def glob(self, pattern: str) -> list[FileInfo]:
        """core.expand.FileLister: files with sizes."""
        return glob_files(pattern)

    def open(self, path: str) -> Iterator[str]:
        """core.expand.ManifestReader: lines with endings kept."""
        return read_lines(path)


def _size(info: Mapping[str, Any]) -> int | None:
    size = info.get("size")
    return int(size) if isinstance(size, int) else None


def _local(path: str) -> str:
    return path.removeprefix("file://")


def _split(path: str) -> tuple[str, str]:
    stripped = path.rstrip("/") or "/"
    parent, _, name = stripped.rpartition("/")
    if not _:
        return ".", stripped
    return parent or "/", name


def _existing_local(parent: str, names: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    if len(names) <= PROBE_PER_PATH_UP_TO:
        for name, originals in names.items():
            try:
                os.stat(os.path.join(parent, name))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as err:
                raise StorageError(f"cannot check {os.path.join(parent, name)}: {err}") from err
            found.update(originals)
        return found
    try:
        with os.scandir(parent) as entries:
            for entry in entries:
                if entry.name not in names:
                    continue
                if entry.is_symlink() and not os.path.exists(entry.path):
                    continue
                found.update(names[entry.name])
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError as err:
        raise StorageError(f"cannot list {parent}: {err}") from err
    return found


def _existing_url(parent: str, names: dict[str, list[str]]) -> set[str]:
    fs, fs_parent = _url_to_fs(parent)
    found: set[str] = set()
    try:
        if len(names) <= PROBE_PER_PATH_UP_TO:
            for name, originals in names.items():
                fs.invalidate_cache(f"{fs_parent}/{name}")
                if fs.exists(f"{fs_parent}/{name}"):
                    found.update(originals)
            return found
        fs.invalidate_cache(fs_parent)
        try:
            listed = fs.ls(fs_parent, detail=False)
        except FileNotFoundError:
            return set()
    except OSError as err:
        raise StorageError(f"cannot list {parent}: {err}") from err
    for entry in listed:
        name = str(entry).rstrip("/").rpartition("/")[2]
        if name in names:
            found.update(names[name])
    return found


def _url_to_fs(url: str) -> tuple[Any, str]:
    try:
        import fsspec.core
    except ImportError as err:
        raise StorageUnavailable(
            f"{url} is a URL, which needs the fsspec package: install it with the protocol's "
            'package, e.g. pip install "gpubatch[s3]" for s3://'
        ) from err
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as err:
        raise StorageUnavailable(f"cannot open {url}: {err}") from err
    except ValueError as err:
        raise StorageError(f"cannot open {url}: {err}") from err
    return fs, str(path).rstrip("/")
