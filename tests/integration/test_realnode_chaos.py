"""SIGKILL the operator while its tasks run in real containers (`realnode` tier, small size):
nothing may be lost or run twice, and every output is written exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.realnode_kit import real_batch, shared_folder
from support.batches import Batches, PodMonitor
from support.operator_process import OperatorProcess
from support.waiting import wait_for
from testbed import Testbed
from testbed.realnode.node import RealNode

pytestmark = pytest.mark.realnode

TASKS = 16
# Each task takes about a second in its container, long enough that kills land mid-task.
TASK = """
import os, pathlib, sys, time
time.sleep(1)
attempt = os.environ['GPUBATCH_ATTEMPT']
pathlib.Path(sys.argv[2]).write_text('task %s attempt %s' % (sys.argv[1], attempt))
"""


def test_operator_sigkilled_twice_mid_batch_on_the_real_node_loses_and_doubles_nothing(
    testbed: Testbed,
    real_node: RealNode,
    namespace: str,
    running_operator: OperatorProcess,
    tmp_path: Path,
):
    shared = shared_folder(tmp_path / "shared")
    batches = Batches(testbed, namespace)

    def succeeded_at_least(count: int) -> bool:
        return bool(batches.status("chaos").get("counts", {}).get("succeeded", 0) >= count)

    with PodMonitor(testbed, namespace) as monitor:
        batches.create(
            real_batch(
                "chaos",
                real_node,
                shared,
                command=["python3", "-c", TASK, "{index}", "{outputs[0]}"],
                tasks={"range": {"start": 0, "stop": TASKS}},
                outputs=[str(shared / "out-{index}.txt")],
                retry={"limit": 0},
            )
        )
        for progress in (3, 9):  # kill at fixed points of progress, not at random times
            wait_for(lambda p=progress: succeeded_at_least(p), timeout=180, what=f"{progress} done")
            running_operator.kill()
            running_operator.start()
        batches.wait_condition("chaos", "Complete", timeout=240)

    status = batches.status("chaos")
    assert status["counts"]["succeeded"] == TASKS and status["counts"]["failed"] == 0
    assert status["succeededIndexes"] == f"0-{TASKS - 1}"
    assert monitor.violations == []
    attempts = sorted(name.rsplit("-", 2)[-2:] for name in monitor.created)
    assert attempts == sorted([str(i), "0"] for i in range(TASKS))  # one attempt per task
    assert {p.name: p.read_text() for p in shared.iterdir()} == {
        f"out-{i}.txt": f"task {i} attempt 0" for i in range(TASKS)
    }
