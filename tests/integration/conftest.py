"""Integration fixtures: the GPUBatch CRD installed and the operator running on the test bed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.crd import install_crd
from support.operator_process import OperatorProcess
from testbed import Testbed
from testbed.kueue import Kueue, Queue
from testbed.multikueue import MultiKueue
from testbed.realnode.node import RealNode, unavailable_reason


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


@pytest.fixture(scope="session")
def kueue(testbed: Testbed) -> Iterator[Kueue]:
    """Kueue's real manager on the session test bed (built once by tests/testbed/kueue.sh).

    Its pod webhook sees only pods labelled with a queue name, so other tests sharing the
    test bed are untouched; stopping it unregisters the webhooks first."""
    manager = Kueue(testbed)
    seconds = manager.start()
    print(f"\n[kueue] up in {seconds:.1f}s")
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture(scope="session")
def multikueue(testbed: Testbed, kueue: Kueue, crd: Path) -> Iterator[MultiKueue]:
    """A MultiKueue manager cluster (a control-plane-only test bed with the GPUBatch CRD and
    Kueue) dispatching to the session test bed as its worker "worker"; the worker's own Kueue
    (`kueue`) admits what is mirrored there. Queues: `MultiKueue.create_queue` on the manager
    and `Kueue.create_queue` on the worker, of the same name."""
    manager = MultiKueue(testbed, kueue)
    seconds = manager.start()
    print(f"\n[multikueue] manager cluster and its Kueue up in {seconds:.1f}s")
    try:
        yield manager
    finally:
        manager.stop()


@pytest.fixture
def multikueue_queue(kueue: Kueue, multikueue: MultiKueue, namespace: str) -> Iterator[Queue]:
    """One queue of 4 GPUs on both clusters, in the test's namespace (made on the manager too):
    on the manager its ClusterQueue requires the MultiKueue check, on the worker it holds the
    quota the mirrored Workload is admitted against."""
    made = Queue(name=f"mk-{uuid.uuid4().hex[:6]}", gpus=4)
    kueue.create_queue(made, namespace)
    multikueue.create_queue(made, namespace)
    yield made
    assert multikueue.manager is not None
    multikueue.manager.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def running_operator(operator: OperatorProcess) -> OperatorProcess:
    """The session operator, (re)started if an earlier test left it dead."""
    if not operator.alive():
        operator.start()
    return operator


@pytest.fixture(scope="session")
def real_node(testbed: Testbed) -> Iterator[RealNode]:
    """One real node (containerd + kubelet here) beside the kwok nodes, for `realnode` tests.

    Skipped only where this machine cannot run containers at all (not root); anywhere else a
    node that does not start FAILS the tests that need it."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"real node unavailable: {reason}")
    began = time.monotonic()
    node = testbed.start_real_node()
    print(
        f"\n[realnode] {node.name} up in {time.monotonic() - began:.1f}s (images checked, "
        f"containerd, images imported, kubelet Ready, GPUs advertised)"
    )
    yield node
    problems = node.stop()
    assert not problems, f"the real node left the host changed: {problems}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Real-node tests run last: the real node joins the session's test bed when the first of
    them starts and stays until the session ends, so every other test sees only kwok nodes."""
    items.sort(key=lambda item: item.get_closest_marker("realnode") is not None)
