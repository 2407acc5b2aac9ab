"""GPUBatches whose tasks run the real worker in real pods on the real node, writing real files
to a host folder ("shared storage"): the status the operator writes from real termination
messages must agree exactly with the files (`realnode` tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.realnode_kit import real_batch, shared_folder, wait_for_file
from support.batches import Batches, PodMonitor
from support.waiting import wait_for
from testbed import Testbed
from testbed.realnode.node import RealNode

pytestmark = pytest.mark.realnode

# The task program (python3 of the base image). No braces: the command is a template.
MIXED_TASK = """
import os, pathlib, sys
index, output = int(sys.argv[1]), sys.argv[2]
if index == 2:
    sys.stderr.write('task 2: the disk is on fire\\n')
    sys.exit(3)
if index == 5:
    sys.stderr.write('task 5: bad input, retrying will not help\\n')
    sys.exit(42)
attempt = os.environ['GPUBATCH_ATTEMPT']
pathlib.Path(output).write_text('task %d attempt %s uid %d\\n' % (index, attempt, os.getuid()))
"""

SUCCEEDING_TASK = """
import os, pathlib, sys
attempt = os.environ['GPUBATCH_ATTEMPT']
pathlib.Path(sys.argv[2]).write_text('task %s attempt %s\\n' % (sys.argv[1], attempt))
"""

# Attempt 0 writes half its output, says it started, and waits to be stopped; on SIGTERM it
# records the signal and exits. Any later attempt writes the whole output.
STOPPABLE_TASK = """
import os, pathlib, signal, sys, time
shared, partial = pathlib.Path(sys.argv[1]), sys.argv[2]
attempt = os.environ['GPUBATCH_ATTEMPT']
def stopped(number, frame):
    (shared / ('signal-' + attempt)).write_text(str(number))
    sys.exit(128 + number)
signal.signal(signal.SIGTERM, stopped)
out = open(partial, 'w')
out.write('half of the result')
out.flush()
if attempt == '0':
    (shared / 'started-0').write_text('')
    while True:
        time.sleep(0.1)
out.write(', and the rest')
out.close()
"""


def outputs(shared: Path) -> dict[str, str]:
    """Every file in the shared folder (hidden partial files included) and its content."""
    return {p.name: p.read_text() for p in sorted(shared.iterdir()) if p.is_file()}


def test_mixed_batch_status_and_files_agree_exactly(
    testbed: Testbed,
    real_node: RealNode,
    namespace: str,
    running_operator: object,
    tmp_path: Path,
):
    shared = shared_folder(tmp_path / "shared")
    for index in (0, 7):  # done before: skipped, never touched
        (shared / f"out-{index}.txt").write_text(f"made earlier {index}\n")
    batches = Batches(testbed, namespace)
    batches.create(
        real_batch(
            "mixed",
            real_node,
            shared,
            command=["python3", "-c", MIXED_TASK, "{index}", "{outputs[0]}"],
            tasks={"range": {"start": 0, "stop": 8}},
            outputs=[str(shared / "out-{index}.txt")],
            parallelism=4,
            retry={"limit": 1, "backoffSeconds": 1, "nonRetriableExitCodes": [42]},
        )
    )
    failed = batches.wait_condition("mixed", "Failed", timeout=240)
    assert failed["reason"] == "TasksFailed"  # any failed task fails the batch, as the Job does
    status = batches.status("mixed")

    assert status["counts"] == {
        "total": 8,
        "pending": 0,
        "running": 0,
        "succeeded": 4,
        "failed": 2,
        "skipped": 2,
    }
    assert status["succeededIndexes"] == "1,3-4,6"
    assert status["failedIndexes"] == "2,5"
    assert status["skippedIndexes"] == "0,7"
    assert outputs(shared) == {
        "out-0.txt": "made earlier 0\n",
        "out-1.txt": "task 1 attempt 0 uid 65532\n",
        "out-3.txt": "task 3 attempt 0 uid 65532\n",
        "out-4.txt": "task 4 attempt 0 uid 65532\n",
        "out-6.txt": "task 6 attempt 0 uid 65532\n",
        "out-7.txt": "made earlier 7\n",
    }
    failures = sorted(
        (f["index"], f["attempt"], f["exitCode"], f["message"]) for f in status["recentFailures"]
    )
    assert [(i, a, code) for i, a, code, _ in failures] == [(2, 0, 3), (2, 1, 3), (5, 0, 42)]
    assert all("the disk is on fire" in message for i, _, _, message in failures if i == 2)
    assert "bad input, retrying will not help" in failures[2][3]
    assert "non-retriable" in failures[2][3]
    assert {f["node"] for f in status["recentFailures"]} == {real_node.name}
    assert [m["model"] for m in status["gpuModels"]] == [real_node.model]
    assert status["gpuModels"][0]["succeeded"] == 4


def test_reapplied_batch_runs_only_the_tasks_whose_outputs_were_deleted(
    testbed: Testbed,
    real_node: RealNode,
    namespace: str,
    running_operator: object,
    tmp_path: Path,
):
    shared = shared_folder(tmp_path / "shared")
    batches = Batches(testbed, namespace)
    body = real_batch(
        "again",
        real_node,
        shared,
        command=["python3", "-c", SUCCEEDING_TASK, "{index}", "{outputs[0]}"],
        tasks={"range": {"start": 0, "stop": 6}},
        outputs=[str(shared / "out-{index}.txt")],
        parallelism=6,
    )
    batches.create(body)
    batches.wait_condition("again", "Complete", timeout=180)
    first = outputs(shared)
    assert sorted(first) == [f"out-{i}.txt" for i in range(6)]

    for index in (1, 4):
        (shared / f"out-{index}.txt").unlink()
    batches.delete("again")
    wait_for(lambda: batches.gone("again"), timeout=60, what="the first batch gone")
    with PodMonitor(testbed, namespace) as monitor:
        batches.create(body)
        batches.wait_condition("again", "Complete", timeout=180)
    ran = sorted(int(name.split("-")[-2]) for name in monitor.created)

    status = batches.status("again")
    assert ran == [1, 4]
    assert status["succeededIndexes"] == "1,4"
    assert status["skippedIndexes"] == "0,2-3,5"
    assert outputs(shared) == first  # the re-run wrote the same content, nothing else changed


def test_deleting_a_running_task_pod_stops_the_task_leaves_no_partial_and_is_a_disruption(
    testbed: Testbed,
    real_node: RealNode,
    namespace: str,
    running_operator: object,
    tmp_path: Path,
):
    shared = shared_folder(tmp_path / "shared")
    batches = Batches(testbed, namespace)
    batches.create(
        real_batch(
            "stopped",
            real_node,
            shared,
            command=["python3", "-c", STOPPABLE_TASK, str(shared), "{outputs[0]}"],
            tasks={"range": {"start": 0, "stop": 1}},
            outputs=[str(shared / "result.txt")],
            worker={"atomicOutputs": True},
            # A counted failure would end this task: only a disruption may give it a second try.
            retry={"limit": 0},
        )
    )
    wait_for_file(shared / "started-0")
    assert ".result.txt.gpubatch-partial.txt" in outputs(shared)  # the command is writing
    (pod,) = batches.pods()
    # Suspended, the operator starts no next attempt, so what the stopped one left is seen alone.
    batches.patch_spec("stopped", {"suspend": True})
    batches.wait_condition("stopped", "Suspended", timeout=60)
    testbed.kubectl("delete", "pod", "-n", namespace, pod.metadata.name, "--wait=false")

    def attempt_zero_gone() -> bool:
        return pod.metadata.name not in {p.metadata.name for p in batches.pods()}

    wait_for(attempt_zero_gone, timeout=90, what=f"pod {pod.metadata.name} gone")
    # The worker passed SIGTERM (15) to the task, then removed the partial output it left.
    after_stop = outputs(shared)
    assert after_stop.get("signal-0") == "15"
    assert "result.txt" not in after_stop
    assert not [name for name in after_stop if "partial" in name]

    assert [p.metadata.name for p in batches.pods()] == []  # no next attempt while suspended

    batches.patch_spec("stopped", {"suspend": False})
    batches.wait_condition("stopped", "Complete", timeout=180)
    status = batches.status("stopped")
    assert status["counts"]["succeeded"] == 1 and status["counts"]["failed"] == 0
    # The stopped attempt is listed, as a disruption that did not count against retry.limit 0.
    (stopped,) = status["recentFailures"]
    print(f"[realnode] the deleted attempt in recentFailures: {stopped}")
    assert (stopped["attempt"], stopped["exitCode"]) == (0, 143)  # 128 + SIGTERM
    assert "not counted" in stopped["message"]
    assert outputs(shared)["result.txt"] == "half of the result, and the rest"
    assert sorted(outputs(shared)) == ["result.txt", "signal-0", "started-0"]
