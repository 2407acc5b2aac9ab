"""Shared pytest fixtures. The `testbed` fixture is the real control plane (see tests/testbed).

It is session-scoped: one control plane serves every integration test, each test working in its
own namespace (`namespace` fixture). If it cannot start, the tests using it FAIL: an integration
suite that silently skips proves nothing.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import Testbed, TestbedConfig


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    workdir = Path(tmp_path_factory.mktemp("testbed"))
    bed = Testbed.create(TestbedConfig(), workdir=workdir, tied=True)
    seconds = bed.start()
    print(f"\n[testbed] up in {seconds:.1f}s at {bed.server} (workdir {workdir})")
    try:
        yield bed
    finally:
        bed.stop()
        if os.environ.get("GPUBATCH_KEEP_TESTBED_LOGS") is None:
            bed.destroy()


@pytest.fixture
def namespace(testbed: Testbed, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for it to vanish)."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    testbed.create_namespace(name)
    yield name
    testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)
