"""Integration fixtures: the GPUBatch CRD installed and the operator running on the test bed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.operator_process import OperatorProcess
from testbed import Testbed

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "gpubatches.gpubatch.io.yaml"


@pytest.fixture(scope="session")
def crd(testbed: Testbed) -> Path:
    testbed.kubectl("apply", "--server-side", "-f", str(CRD))
    testbed.kubectl(
        "wait", "--for=condition=Established", "crd/gpubatches.gpubatch.io", "--timeout=60s"
    )
    return CRD


@pytest.fixture(scope="session")
def operator(
    testbed: Testbed,
    crd: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """One operator for the session; chaos tests kill and restart this same one, so two
    operators never reconcile the same batch."""
    log = Path(tmp_path_factory.mktemp("operator")) / "operator.log"
    process = OperatorProcess(testbed=testbed, log_path=log)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def running_operator(operator: OperatorProcess) -> OperatorProcess:
    """The session operator, (re)started if an earlier test left it dead."""
    if not operator.alive():
        operator.start()
    return operator
