"""Integration fixtures: the GPUBatch CRD installed and the operator running on the test bed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.crd import install_crd
from support.operator_process import OperatorProcess
from testbed import Testbed


@pytest.fixture(scope="session")
def crd(testbed: Testbed) -> Path:
    return install_crd(testbed)


@pytest.fixture(scope="session")
def operator(
    testbed: Testbed,
    crd: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    """One operator for the session; chaos tests kill and restart this same one, so two
    operators never reconcile the same batch."""
    log = Path(tmp_path_factory.mktemp("operator")) / "operator.log"
    process = OperatorProcess(testbed=testbed, log_path=log)
    process.start()
    request.session.__dict__.setdefault("_gpubatch_started", set()).add("operator")
    yield process
    process.stop()


@pytest.fixture
def no_operator(request: pytest.FixtureRequest) -> Iterator[None]:
    """Pause the session operator (if one runs) for tests that write a batch's status
    themselves; the operator would otherwise overwrite it."""
    process: OperatorProcess | None = None
    if "operator" in request.session.__dict__.get("_gpubatch_started", set()):
        process = request.getfixturevalue("operator")
    was_alive = process is not None and process.alive()
    if was_alive:
        assert process is not None
        process.stop()
    yield
    if was_alive:
        assert process is not None
        process.start()


@pytest.fixture
def running_operator(operator: OperatorProcess) -> OperatorProcess:
    """The session operator, (re)started if an earlier test left it dead."""
    if not operator.alive():
        operator.start()
    return operator
