"""Stuck task pods through the reconcile: what it creates, stops and writes while a bad image
or an impossible GPU request holds a batch back, against the in-memory client."""

from __future__ import annotations

import pytest
from test_reconcile_apply import Loop, condition  # the same pass-by-pass loop

from gpubatch.api.status import ConditionType, GPUBatchStatus
from gpubatch.core.stuck import NodeCapacity

pytestmark = pytest.mark.fakeclient

BACKOFF = 'Back-off pulling image "acme/encdoer:1"'


def stick_all(loop: Loop, reason: str = "ImagePullBackOff", age: float = 0.0) -> list[str]:
    names = sorted(loop.kube.pods)
    for name in names:
        loop.kube.wait_on(name, reason, BACKOFF, age=age)
    return names


def test_a_bad_image_is_reported_and_holds_dispatch_back():
    loop = Loop(tasks=12, maxPending=4, stuck={"giveUpSeconds": 60})
    loop.run_pass()
    stick_all(loop)
    loop.run_pass()

    status = loop.status()
    assert condition(status, ConditionType.TASKS_STUCK) == ("True", "ImagePullBackOff")
    assert condition(status, ConditionType.STALLED) == ("True", "ImagePullBackOff")
    assert [e.reason for e in loop.batch.events if e.type == "Warning"] == ["TasksStuck"]
    assert len(loop.kube.called("create_pod")) == 4  # nothing after the first four
    assert loop.kube.called("delete_pod") == []  # not given up before giveUpSeconds


def test_given_up_attempts_cost_no_retries_and_fail_the_batch_after_max_attempts():
    loop = Loop(tasks=12, maxPending=4, stuck={"giveUpSeconds": 60, "maxAttempts": 3})
    loop.run_pass()
    names = stick_all(loop, age=61)
    loop.run_pass()  # gives the four up: annotate, delete
    assert {c.name for c in loop.kube.called("delete_pod")} == set(names)
    for name in names:  # the kubelet kills the deleted pods
        assert loop.kube.pods[name]["metadata"]["annotations"]
        loop.kube.finish(name, exit_code=137)
    loop.run_pass()

    status = loop.status()
    assert condition(status, ConditionType.FAILED) == ("True", "TasksStuck")
    assert status.stuck is not None and status.stuck.given_up == 4
    assert status.counts.failed == 0
    assert all(r.failures == 0 for r in status.retries)
    assert len(loop.kube.called("create_pod")) == 4
    assert all(not loop.kube.tracked(name) for name in names)  # recorded, released


def test_a_fixed_spec_resumes_the_batch_with_the_next_attempts():
    loop = Loop(tasks=4, stuck={"giveUpSeconds": 60, "maxAttempts": 1})
    loop.run_pass()
    stick_all(loop, age=61)
    loop.run_pass()
    for name in sorted(loop.kube.pods):
        loop.kube.finish(name, exit_code=137)
    loop.run_pass()
    assert condition(loop.status(), ConditionType.FAILED) == ("True", "TasksStuck")

    loop.batch.generation = 2
    loop.batch.spec["template"]["spec"]["containers"][0]["image"] = "acme/encoder:1"
    loop.run_pass()

    assert condition(loop.status(), ConditionType.FAILED) == ("False", "Dispatching")
    created = [c.name for c in loop.kube.called("create_pod")]
    # A fixed spec counts afresh: every given-up task gets its next attempt at once.
    assert created[4:] == ["clips-0-1", "clips-1-1", "clips-2-1", "clips-3-1"]
    assert loop.status().stuck is None


def test_a_gpu_model_no_node_has_is_named_with_the_schedulers_words():
    loop = Loop(tasks=2, gpuModels=["NVIDIA-H100"])
    a100 = NodeCapacity("a100", {"nvidia.com/gpu.product": "NVIDIA-A100"}, {"nvidia.com/gpu": "8"})
    loop.batch.capacity = [a100]
    loop.run_pass()
    said = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    for name in sorted(loop.kube.pods):
        loop.kube.unschedulable(name, said)
    loop.run_pass()

    status = loop.status()
    assert condition(status, ConditionType.TASKS_STUCK) == ("True", "Unschedulable")
    message = next(c.message for c in status.conditions if c.type == ConditionType.TASKS_STUCK)
    assert said in message and "no node in the cluster can ever hold" in message


def test_a_full_cluster_is_waiting_not_stuck():
    loop = Loop(tasks=2)
    loop.batch.capacity = [NodeCapacity("gpu-node-1", {}, {"nvidia.com/gpu": "8"})]
    loop.run_pass()
    for name in sorted(loop.kube.pods):
        loop.kube.unschedulable(name, "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    loop.run_pass()

    status: GPUBatchStatus = loop.status()
    assert condition(status, ConditionType.TASKS_STUCK) == ("False", "WaitingForCapacity")
    assert condition(status, ConditionType.FAILED) == ("False", "Dispatching")
    assert condition(status, ConditionType.RECONCILING) == ("True", "Dispatching")
    assert [e.type for e in loop.batch.events] == ["Normal"]  # Started only
    assert loop.kube.called("delete_pod") == []
