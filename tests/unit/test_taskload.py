"""Task loading as the operator does it, against a real S3 endpoint (moto's server, see
s3_standin.py): the cluster must accept exactly the specs `gpubatch run` accepts."""

from __future__ import annotations

from typing import Any

import pytest
import s3fs
from s3_standin import S3StandIn, bucket, s3_server

from gpubatch.controller.taskload import load_tasks

pytestmark = pytest.mark.process
__all__ = ["bucket", "s3_server"]  # fixtures used by name below


def _files_spec(pattern: str) -> dict[str, Any]:
    return {
        "tasks": {"files": {"param": "clip", "glob": pattern}},
        "order": {"by": "longestFirst", "costParam": "clip"},
        "template": {
            "spec": {"containers": [{"name": "task", "image": "x", "command": ["cat", "{clip}"]}]}
        },
    }


def test_s3_files_ordered_longest_first_by_size_load_on_the_operator(
    s3_server: S3StandIn, bucket: str
) -> None:
    fs = s3fs.S3FileSystem(**s3_server.options())
    for name, size in (("a.bin", 10), ("b.bin", 300), ("c.bin", 20)):
        fs.pipe(f"{bucket}/in/{name}", b"x" * size)

    loaded = load_tasks(_files_spec(f"s3://{bucket}/in/*.bin"), generation=1)

    assert loaded.error is None
    assert loaded.order is not None and loaded.prepared is not None
    clips = [loaded.prepared.tasks.task(loaded.order.at(i)).params["clip"] for i in range(3)]
    assert clips == [f"s3://{bucket}/in/{n}" for n in ("b.bin", "c.bin", "a.bin")]
