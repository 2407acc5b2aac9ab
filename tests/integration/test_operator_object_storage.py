"""Outputs in object storage (s3:// through fsspec) are checked in bulk and skipped.

The S3 endpoint is moto's server on loopback: a real HTTP S3 API, only the server is a stand-in.
The operator gets the endpoint the way a deployment would configure fsspec: the FSSPEC_S3
environment variable.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.batches import Batches, PodMonitor, batch
from support.operator_process import OperatorProcess
from testbed import Testbed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from s3_standin import S3StandIn

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_operator(operator: OperatorProcess) -> Iterator[S3StandIn]:
    """A moto S3 server, and the session operator restarted to know its endpoint."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    standin = S3StandIn(endpoint=f"http://{host}:{port}")
    operator.stop()
    operator.extra_env = standin.fsspec_env()
    operator.start()
    try:
        yield standin
    finally:
        operator.stop()
        operator.extra_env = {}
        operator.start()
        server.stop()


def test_outputs_already_in_s3_are_skipped(
    testbed: Testbed, namespace: str, s3_operator: S3StandIn
):
    import s3fs

    bucket = s3_operator.new_bucket()
    fs = s3fs.S3FileSystem(**s3_operator.options())
    fs.pipe({f"{bucket}/renders/frame-{i}.exr": b"done" for i in (0, 3, 4, 9)})
    batches = Batches(testbed, namespace)
    body = batch(
        "frames",
        tasks={"range": {"stop": 10, "param": "frame"}},
        duration="100ms",
        outputs=[f"s3://{bucket}/renders/frame-{{frame}}.exr"],
    )
    with PodMonitor(testbed, namespace) as monitor:
        batches.create(body)
        batches.wait_condition("frames", "Complete", timeout=60)
    status = batches.status("frames")
    assert status["skippedIndexes"] == "0,3-4,9"
    assert status["succeededIndexes"] == "1-2,5-8"
    assert {int(name.split("-")[1]) for name in monitor.created} == {1, 2, 5, 6, 7, 8}
