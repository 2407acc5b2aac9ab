"""kwok's model of warm pods (kwok-config.yaml): a warm pod runs until its simulated worker sets
`sim.gpubatch.io/warm-exit`, and a task pod's `sim.gpubatch.io/load` adds to its duration.

The warm worker itself (tests/testbed/warmsim.py) is played by hand here: these tests set the
annotations it would set and check what kwok makes of them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpubatch.api.lease import LABEL_WARM_SLOT, WarmProgress
from support.pods import gpu_pod
from support.waiting import wait_for
from testbed import Testbed, sim

pytestmark = pytest.mark.integration

HOLD = "sim.gpubatch.io/test-hold"  # a finalizer, so a deleted pod's last status can be read


def warm_pod(name: str, **annotations: str) -> dict[str, Any]:
    pod = gpu_pod(
        name,
        annotations={sim.DURATION: "100ms", **annotations},
        labels={LABEL_WARM_SLOT: "0"},
        node_selector={"gpubatch.io/testbed-pool": "gpu"},
    )
    pod["metadata"]["finalizers"] = [f"{HOLD}"]
    return pod


def wait_phase(testbed: Testbed, namespace: str, name: str, phases: tuple[str, ...]) -> Any:
    api = testbed.core_v1()
    return wait_for(
        lambda: (p := api.read_namespaced_pod(name, namespace)).status.phase in phases and p,
        timeout=30,
        what=f"pod {name} in {phases}",
    )


def release(testbed: Testbed, namespace: str, name: str) -> None:
    testbed.core_v1().patch_namespaced_pod(name, namespace, {"metadata": {"finalizers": None}})


def test_warm_pod_outlives_its_duration_and_ends_with_the_code_its_worker_sets(
    testbed: Testbed, namespace: str
):
    api = testbed.core_v1()
    api.create_namespaced_pod(namespace, warm_pod("warm"))
    # A task pod with the same duration, created after it: once it has finished, the duration
    # stage has had its turn at the warm pod too.
    api.create_namespaced_pod(namespace, gpu_pod("task", annotations={sim.DURATION: "100ms"}))
    wait_phase(testbed, namespace, "warm", ("Running",))
    wait_phase(testbed, namespace, "task", ("Succeeded",))
    assert api.read_namespaced_pod("warm", namespace).status.phase == "Running"

    progress = WarmProgress(seq=3, done=((7, 0, 0, 0.5),), running=(8, 0)).encode()
    api.patch_namespaced_pod(
        "warm",
        namespace,
        {"metadata": {"annotations": {sim.WARM_EXIT: "3", sim.TERMINATION_MESSAGE: progress}}},
    )
    pod = wait_phase(testbed, namespace, "warm", ("Failed", "Succeeded"))
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.exit_code) == ("Failed", 3)
    assert WarmProgress.try_decode(terminated.message) == WarmProgress.try_decode(progress)
    release(testbed, namespace, "warm")


def test_warm_pod_whose_worker_exits_zero_succeeds(testbed: Testbed, namespace: str):
    api = testbed.core_v1()
    api.create_namespaced_pod(namespace, warm_pod("warm"))
    wait_phase(testbed, namespace, "warm", ("Running",))
    api.patch_namespaced_pod("warm", namespace, {"metadata": {"annotations": {sim.WARM_EXIT: "0"}}})
    pod = wait_phase(testbed, namespace, "warm", ("Failed", "Succeeded"))
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    release(testbed, namespace, "warm")


def test_deleted_warm_pod_without_an_answer_is_killed_after_its_grace(
    testbed: Testbed, namespace: str
):
    api = testbed.core_v1()
    api.create_namespaced_pod(namespace, warm_pod("warm"))
    wait_phase(testbed, namespace, "warm", ("Running",))
    api.delete_namespaced_pod("warm", namespace)
    pod = wait_phase(testbed, namespace, "warm", ("Failed", "Succeeded"))
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.exit_code) == ("Failed", 137)
    assert terminated.message == "killed: pod deleted"
    release(testbed, namespace, "warm")


def test_deleted_warm_pod_keeps_the_progress_its_worker_writes_on_sigterm(
    testbed: Testbed, namespace: str
):
    api = testbed.core_v1()
    api.create_namespaced_pod(namespace, warm_pod("warm"))
    wait_phase(testbed, namespace, "warm", ("Running",))
    api.delete_namespaced_pod("warm", namespace)
    progress = WarmProgress(seq=1, done=((2, 0, 0, 0.1),), running=(5, 1)).encode()
    api.patch_namespaced_pod(
        "warm",
        namespace,
        {"metadata": {"annotations": {sim.WARM_EXIT: "143", sim.TERMINATION_MESSAGE: progress}}},
    )
    pod = wait_phase(testbed, namespace, "warm", ("Failed", "Succeeded"))
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Failed"
    assert terminated.exit_code in (137, 143)  # the grace may have run out on a busy machine
    assert json.loads(terminated.message) == json.loads(progress)
    release(testbed, namespace, "warm")


def test_task_pod_pays_its_load_on_top_of_its_duration(testbed: Testbed, namespace: str):
    api = testbed.core_v1()
    api.create_namespaced_pod(
        namespace,
        gpu_pod("loaded", annotations=sim.annotations(0.5, load_seconds=3.0)),
    )
    pod = wait_phase(testbed, namespace, "loaded", ("Succeeded",))
    terminated = pod.status.container_statuses[0].state.terminated
    # One-second timestamps: 3.5 s shows as at least 3 s (without the load: 0 or 1 s).
    assert (terminated.finished_at - pod.status.start_time).total_seconds() >= 3
