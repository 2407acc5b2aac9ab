"""A warm batch in real containers on the real node: the worker image's `gpubatch-worker --warm
--lease` asks the operator for leases over HTTPS with the pod's projected token (a real kubelet
mounts it, the real API server reviews it), starts the user's program once per pod and feeds it
every leased task (`realnode` tier).

The operator listens on the pod bridge's gateway, the one host address pods in real containers
can reach (the test bed runs no kube-proxy), with a certificate for it from the test bed's CA.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.realnode_kit import real_batch, shared_folder
from support.batches import Batches
from support.operator_process import OperatorProcess
from support.waiting import wait_for
from testbed import Testbed
from testbed.realnode.node import POD_GATEWAY, RealNode

pytestmark = pytest.mark.realnode

# The user's program, run with the worker image's Python (which has gpubatch.worker). It marks
# each load in the shared folder, "loads" for a second, then takes its tasks one at a time;
# task 4's first attempt raises, which fails that task alone. No braces: the command is a
# template, and a warm program's command may not hold task placeholders.
WARM_PROGRAM = """
import os, pathlib, sys, time
import gpubatch.worker
shared = pathlib.Path(sys.argv[1])
pod = os.uname().nodename
(shared / ('load-%s-%d' % (pod, os.getpid()))).write_text('')
time.sleep(1)
for task in gpubatch.worker.tasks():
    with task:
        if task.index == 4 and task.attempt == 0:
            raise RuntimeError('task 4: flaky the first time')
        text = 'task %d attempt %d in %s\\n' % (task.index, task.attempt, pod)
        pathlib.Path(task.write_to[0]).write_text(text)
"""


@pytest.fixture
def gateway_operator(operator: OperatorProcess, real_node: RealNode) -> Iterator[OperatorProcess]:
    """The session operator, its lease endpoint moved to the pod gateway for this test."""
    operator.stop()
    operator.lease_host = POD_GATEWAY
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
        operator.lease_host = "127.0.0.1"
        operator.start()


def test_a_warm_batch_loads_once_per_pod_and_runs_every_task_once(
    testbed: Testbed,
    real_node: RealNode,
    namespace: str,
    gateway_operator: OperatorProcess,
    tmp_path: Path,
):
    shared = shared_folder(tmp_path / "shared")
    batches = Batches(testbed, namespace)
    batches.create(
        real_batch(
            "warm",
            real_node,
            shared,
            command=["/opt/gpubatch/bin/python", "-c", WARM_PROGRAM, str(shared)],
            tasks={"range": {"start": 0, "stop": 12}},
            outputs=[str(shared / "out-{index}.txt")],
            parallelism=2,
            retry={"limit": 2, "backoffSeconds": 0},
            worker={"mode": "Warm", "wrap": True, "atomicOutputs": True},
        )
    )
    batch = batches.wait_finished("warm", timeout=300)
    status = batch["status"]
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert complete["status"] == "True", status
    assert status["succeededIndexes"] == "0-11"

    outputs = {p.name: p.read_text() for p in shared.glob("out-*.txt")}
    assert sorted(outputs) == sorted(f"out-{i}.txt" for i in range(12))
    assert outputs["out-4.txt"].startswith("task 4 attempt 1 ")
    assert all(text.startswith(f"task {i} attempt 0 ") for i, text in _others(outputs, 4))
    loads = [p.name.removeprefix("load-").rsplit("-", 1)[0] for p in shared.glob("load-*")]
    ran_in = {text.split()[-1] for text in outputs.values()}
    assert sorted(loads) == sorted(set(loads)) and len(loads) == 2, loads  # once per pod
    assert ran_in <= set(loads)
    assert not list(shared.glob(".*"))  # no partial output left behind

    failures = [(f["index"], f["attempt"]) for f in status["recentFailures"]]
    assert failures == [(4, 0)]
    assert "task 4: flaky the first time" in status["recentFailures"][0]["message"]
    assert status["gpuModels"][0]["succeeded"] == 12
    wait_for(lambda: not batches.pods(), timeout=60, what="warm pods cleaned up")


def _others(outputs: dict[str, str], skip: int) -> list[tuple[int, str]]:
    return [
        (int(name.removeprefix("out-").removesuffix(".txt")), text)
        for name, text in outputs.items()
        if name != f"out-{skip}.txt"
    ]
