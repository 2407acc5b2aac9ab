"""Where a program writes an output in atomic mode, before the worker renames it into place.

`partial_path("/d/clip.mp4") == "/d/.clip.mp4.gpubatch-partial.mp4"`:

- the same directory (same filesystem, same bucket and prefix), so the final rename is a cheap,
  atomic `rename(2)` locally and a same-prefix copy on object storage;
- a hidden name (leading dot), so the globs of a later stage (`*.mp4`) and `ls` do not pick up
  half-written files, and the bulk existence check, which looks for exact final names, never
  mistakes one for a finished output;
- the final name plus a marker, so a person who finds a leftover knows what it was meant to be;
- the output's last suffix repeated at the end, so tools that pick a format from the extension
  (ffmpeg, PIL, numpy's save) still write the right format.

A name that would exceed the 255-byte file name limit is replaced by a digest of the final name
(still hidden, marked and suffixed). The mapping is pure and deterministic, so the operator's
templating and the worker's rename always agree, and a retry overwrites the leftover of a killed
attempt instead of accumulating new ones.

Works for local paths and for URLs (`s3://bucket/dir/x.mp4`): only the part after the last `/`
changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Final

PARTIAL_MARKER: Final = ".gpubatch-partial"
#: POSIX NAME_MAX on every common Linux filesystem, and S3's key-segment practice.
MAX_NAME_BYTES: Final = 255


def partial_path(final: str) -> str:
    """The temporary path a program writes `final` to in atomic mode."""
    head, sep, name = final.rstrip("/").rpartition("/")
    if not name or name in {".", ".."} or head.endswith(":/"):
        raise ValueError(f"output path {final!r} does not end in a file name")
    suffix = PurePosixPath(name).suffix
    partial = f".{name}{PARTIAL_MARKER}{suffix}"
    if len(partial.encode()) > MAX_NAME_BYTES:
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        suffix = suffix if len(suffix.encode()) <= 32 else ""
        partial = f".{digest}{PARTIAL_MARKER}{suffix}"
    return f"{head}{sep}{partial}"


def partial_paths(finals: Iterable[str]) -> tuple[str, ...]:
    """`partial_path` for each output, in order (what GPUBATCH_PARTIAL_OUTPUTS carries)."""
    return tuple(partial_path(final) for final in finals)


def is_partial(path: str) -> bool:
    """Whether a path looks like a partial output (for cleanup tools and listings)."""
    name = path.rstrip("/").rpartition("/")[2]
    return name.startswith(".") and PARTIAL_MARKER in name
