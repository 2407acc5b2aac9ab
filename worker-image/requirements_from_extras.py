"""Print the requirements of some of pyproject.toml's extras, one per line, for `pip install -r`.

The worker image installs gpubatch with `--no-deps` plus only these requirements, so the task
image carries the worker's few dependencies and none of the operator's (kopf, the Kubernetes
client, aiohttp, ...), which `pip install ".[worker]"` would add because they are the package's
base dependencies. Standard library only: it runs in the image's build stage before anything is
installed.

    python requirements_from_extras.py pyproject.toml worker,s3
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: str) -> list[str]:
    with open(pyproject, "rb") as handle:
        optional = tomllib.load(handle)["project"]["optional-dependencies"]
    wanted: list[str] = []
    for extra in (e.strip() for e in extras.split(",")):
        if not extra:
            continue
        if extra not in optional:
            known = ", ".join(sorted(optional))
            raise SystemExit(f"unknown extra {extra!r} in {pyproject}; known extras: {known}")
        wanted += [req for req in optional[extra] if req not in wanted]
    return wanted


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(requirements(argv[0], argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
