"""Task pods stuck before Running, on the real control plane: waiting reasons reported by kwok's
gpubatch-pod-stuck Stage (a bad image, a container that cannot be configured) and real
unschedulable pods from real scheduler decisions (a GPU model no node has, more GPUs than any
node has, a cluster that is merely full).

Each test prints the seconds from create to the condition and the operator's API requests while
the batch was stuck (its gpubatch_api_requests counter; recorded in the report, not asserted:
speed lives in measurements)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from support.batches import Batches, PodMonitor, batch
from support.operator_process import OperatorProcess
from testbed import Testbed
from testbed.sim import WAITING_REASON

pytestmark = pytest.mark.integration


@pytest.fixture
def batches(testbed: Testbed, namespace: str, running_operator: OperatorProcess) -> Batches:
    return Batches(testbed, namespace)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), None)


def wait_stuck(batches: Batches, name: str, value: str, timeout: float = 60) -> dict[str, Any]:
    """Wait until TasksStuck has status `value`; return the condition."""

    def has(obj: dict[str, Any]) -> bool:
        found = condition(obj, "TasksStuck")
        return found is not None and found["status"] == value

    obj = batches.wait_until(name, has, f"TasksStuck={value}", timeout)
    found = condition(obj, "TasksStuck")
    assert found is not None
    return found


def operator_requests(operator: OperatorProcess) -> int:
    """All API requests the operator's own client has made (its gpubatch_api_requests)."""
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in operator.metrics().splitlines()
            if line.startswith("gpubatch_api_requests_total{")
        )
    )


@pytest.mark.parametrize(
    ("reason", "tasks"),
    [
        ("ImagePullBackOff", 50),
        ("ImagePullBackOff", 5000),  # the same requests while stuck at 100x the tasks
        ("ErrImagePull", 500),
        ("CreateContainerConfigError", 500),
    ],
)
def test_a_waiting_reason_is_reported_given_up_uncounted_and_fails_the_batch(
    batches: Batches, running_operator: OperatorProcess, reason: str, tasks: int
):
    stuck_spec = {"giveUpSeconds": 10, "maxAttempts": 3}
    body = batch(
        "stuck",
        tasks={"range": {"stop": tasks}},
        annotations={WAITING_REASON: reason},
        maxPending=4,
        stuck=stuck_spec,
    )
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        began = time.monotonic()
        batches.create(body)
        stuck = wait_stuck(batches, "stuck", "True")
        seconds = time.monotonic() - began
        # Every create of the passes before the one that wrote TasksStuck has finished by
        # then (a pass awaits its creates), so these are all the pods dispatched before it.
        before_stop = {pod.metadata.name for pod in batches.pods()}
        since = operator_requests(running_operator)
        failed = batches.wait_condition("stuck", "Failed", timeout=90)
        while_stuck = operator_requests(running_operator) - since
    print(
        f"\n[stuck] {reason}, {tasks} tasks: TasksStuck after {seconds:.1f}s; operator "
        f"requests from then to Failed: {while_stuck}; pods created: {len(monitor.created)}"
    )

    assert stuck["reason"] == reason
    assert re.search(rf"task \d+ \(pod stuck-\d+-0\): {reason}: simulated", stuck["message"])
    assert failed["reason"] == "TasksStuck"
    assert "maxAttempts is 3" in failed["message"]
    status = batches.status("stuck")
    assert status["counts"]["failed"] == 0  # given up, not failed: no retries burnt
    assert all(r["failures"] == 0 for r in status.get("retries") or [])
    # Bound pods free maxPending before the kubelet reports the error, so a few more than
    # maxPending may start; after the report nothing new is dispatched. maxAttempts attempts
    # were given up (their tasks wait in retries, uncounted); how many more were still stuck
    # when the batch failed, and so were stopped with it, depends on the kubelet's timing.
    assert set(monitor.created) <= before_stop
    dispatched = {int(name.split("-")[1]) for name in monitor.created}
    assert {r["index"] for r in status["retries"]} <= dispatched
    assert status["stuck"]["givenUp"] >= stuck_spec["maxAttempts"]
    assert condition(batches.get("stuck"), "Stalled")["status"] == "True"  # type: ignore[index]
    events = batches.testbed.core_v1().list_namespaced_event(batches.namespace).items
    assert any(e.type == "Warning" and e.reason == "TasksStuck" for e in events)


def test_a_fixed_image_resumes_a_batch_failed_on_stuck_tasks(batches: Batches):
    body = batch(
        "fixme",
        tasks={"range": {"stop": 3}},
        duration="100ms",
        annotations={WAITING_REASON: "ImagePullBackOff"},
        stuck={"giveUpSeconds": 10, "maxAttempts": 1},
    )
    batches.create(body)
    batches.wait_condition("fixme", "Failed", timeout=90)
    fixed = {**body["spec"]["template"]["spec"]["containers"][0], "image": "example/task:2"}
    # One edit, one new generation: the fixed image (and, for the simulation, no waiting reason).
    template = {
        "metadata": {"annotations": {WAITING_REASON: None}},
        "spec": {"containers": [fixed]},
    }
    batches.patch_spec("fixme", {"template": template})
    batches.wait_condition("fixme", "Complete", timeout=90)
    status = batches.status("fixme")
    assert status["counts"]["succeeded"] == 3 and status["counts"]["failed"] == 0


@pytest.mark.parametrize(
    ("spec", "scheduler_says"),
    [
        ({"gpuModels": ["NVIDIA-H100-NOWHERE"]}, "didn't match Pod's node affinity/selector"),
        ({"gpusPerTask": 16}, "Insufficient nvidia.com/gpu"),
    ],
    ids=["model-no-node-has", "more-gpus-than-any-node"],
)
def test_a_request_no_node_can_ever_hold_is_a_configuration_error(
    batches: Batches, spec: dict[str, Any], scheduler_says: str
):
    began = time.monotonic()
    batches.create(batch("nofit", tasks={"range": {"stop": 50}}, maxPending=2, **spec))
    stuck = wait_stuck(batches, "nofit", "True")
    print(f"\n[stuck] Unschedulable {spec}: TasksStuck after {time.monotonic() - began:.1f}s")
    assert stuck["reason"] == "Unschedulable"
    assert scheduler_says in stuck["message"]
    assert "no node in the cluster can ever hold" in stuck["message"]
    assert len(batches.pods()) == 2  # nothing dispatched beyond the first two


def test_a_full_cluster_is_waiting_for_capacity_not_a_failure(batches: Batches):
    # Two 8-GPU nodes: two tasks of 8 GPUs run, the others wait for one to finish.
    body = batch("full", tasks={"range": {"stop": 4}}, duration="20s", gpusPerTask=8)
    began = time.monotonic()
    batches.create(body)
    waiting = wait_stuck(batches, "full", "False")
    print(f"\n[stuck] a full cluster: WaitingForCapacity after {time.monotonic() - began:.1f}s")
    assert waiting["reason"] == "WaitingForCapacity"
    assert "Insufficient nvidia.com/gpu" in waiting["message"]
    obj = batches.get("full")
    assert condition(obj, "Failed")["status"] == "False"  # type: ignore[index]
    assert condition(obj, "Stalled")["status"] == "False"  # type: ignore[index]
    assert condition(obj, "Reconciling")["status"] == "True"  # type: ignore[index]
