"""A real S3 endpoint for tests: moto's server on 127.0.0.1 and a free port, one per session.

Requests go over HTTP through s3fs/aiobotocore exactly as they would to AWS or MinIO; only the
server is a stand-in. `S3StandIn.fsspec_env()` gives subprocesses (the worker) the same endpoint
through fsspec's `FSSPEC_S3` configuration variable.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class S3StandIn:
    endpoint: str

    def options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "eu-west-1"},
        }

    def fsspec_env(self) -> dict[str, str]:
        return {"FSSPEC_S3": json.dumps(self.options())}

    def new_bucket(self) -> str:
        import s3fs

        name = f"gpubatch-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(**self.options()).mkdir(name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3StandIn]:
    import fsspec.config
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    standin = S3StandIn(endpoint=f"http://{host}:{port}")
    previous = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = standin.options()
    try:
        yield standin
    finally:
        if previous is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = previous
        server.stop()


@pytest.fixture
def bucket(s3_server: S3StandIn) -> str:
    """A fresh, empty bucket for one test."""
    return s3_server.new_bucket()
