"""The worker image in real containers on the real node: who it runs as, what it may do, and what
a user sees when an image cannot run (`realnode` tier: containerd + kubelet on this machine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from integration.realnode_kit import real_batch, shared_folder
from support.batches import Batches
from support.waiting import wait_for
from testbed import Testbed
from testbed.realnode.node import REAL_NODE_TAINT, RealNode

pytestmark = pytest.mark.realnode

# What the kernel says about the container's own process: its user, capabilities, and whether it
# can gain privileges (Seccomp 2 = a filter is installed, the runtime's default profile).
IDENTITY = "id -u; id -g; grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status"


def restricted_pod(node: RealNode) -> dict[str, Any]:
    """Two containers of the worker image under the restricted profile's rules: the image's own
    entrypoint (`gpubatch-worker --report-gpus`) and a look at the process identity."""
    restricted = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "worker-image"},
        "spec": {
            "restartPolicy": "Never",
            "nodeName": node.name,
            "tolerations": [{"key": REAL_NODE_TAINT, "operator": "Exists"}],
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {"name": "report", "image": node.images.worker.ref, "securityContext": restricted},
                {
                    "name": "identity",
                    "image": node.images.worker.ref,
                    "command": ["sh", "-c", IDENTITY],
                    "securityContext": restricted,
                },
            ],
        },
    }


def terminated(testbed: Testbed, namespace: str, pod: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = testbed.core_v1().read_namespaced_pod(pod, namespace).status
        states = {s.name: s.state.terminated for s in status.container_statuses or []}
        if len(states) == 2 and all(states.values()):
            return states
        return None

    return wait_for(done, timeout=120, interval=0.5, what=f"both containers of {pod} to end")


def test_worker_image_reports_no_gpu_as_uid_65532_without_capabilities_under_restricted(
    testbed: Testbed, real_node: RealNode, namespace: str
):
    testbed.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    manifest = json.dumps(restricted_pod(real_node))
    testbed.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    states = terminated(testbed, namespace, "worker-image")

    logs = testbed.kubectl("logs", "-n", namespace, "worker-image", "-c", "report").stdout
    report = json.loads(logs)
    assert report["available"] is False and report["devices"] == []
    assert "libnvidia-ml.so.1" in report["problem"]
    assert states["report"].exit_code == 80  # ExitCode.NO_GPU: no GPU on this node

    identity = testbed.kubectl("logs", "-n", namespace, "worker-image", "-c", "identity").stdout
    lines = identity.split("\n")
    assert lines[:2] == ["65532", "65532"], identity
    fields = dict(line.split(":\t") for line in lines[2:] if line)
    assert fields == {
        "NoNewPrivs": "1",
        "Seccomp": "2",
        "CapPrm": "0000000000000000",
        "CapEff": "0000000000000000",
        "CapBnd": "0000000000000000",
    }, identity
    assert states["identity"].exit_code == 0


def test_root_image_and_missing_image_are_reported_stuck_then_failed_without_counting(
    testbed: Testbed,
    real_node: RealNode,
    namespace: str,
    running_operator: object,
    tmp_path: Path,
):
    """The real kubelet's refusals (a root image under the default runAsNonRoot, an image that
    does not exist) reach the batch: TasksStuck with the kubelet's reason at once, then, once
    the attempt is given up, Failed/TasksStuck, with no task failure counted."""
    shared = shared_folder(tmp_path / "shared")
    batches = Batches(testbed, namespace)
    command = ["python3", "-c", "print('never runs')"]
    stuck = {"giveUpSeconds": 10, "maxAttempts": 1}
    # The base image runs as root; the operator's default runAsNonRoot makes the kubelet refuse.
    batches.create(
        real_batch(
            "root-image",
            real_node,
            shared,
            command=command,
            image=real_node.images.base.ref,
            tasks={"range": {"start": 0, "stop": 1}},
            stuck=stuck,
        )
    )
    batches.create(
        real_batch(
            "no-such-image",
            real_node,
            shared,
            command=command,
            image="localhost/gpubatch-no-such-image:1",
            tasks={"range": {"start": 0, "stop": 1}},
            stuck=stuck,
        )
    )

    reported = {
        name: batches.wait_condition(name, "TasksStuck", timeout=120)
        for name in ("root-image", "no-such-image")
    }
    assert reported["root-image"]["reason"] == "CreateContainerConfigError"
    assert "runAsNonRoot" in reported["root-image"]["message"]
    assert reported["no-such-image"]["reason"] in ("ErrImagePull", "ImagePullBackOff")
    assert "localhost/gpubatch-no-such-image:1" in reported["no-such-image"]["message"]
    for name in ("root-image", "no-such-image"):
        failed = batches.wait_condition(name, "Failed", timeout=180)
        assert failed["reason"] == "TasksStuck"
        status = batches.status(name)
        assert status["counts"]["succeeded"] == 0 and status["counts"]["failed"] == 0
        assert status["stuck"]["givenUp"] >= 1
        print(f"[realnode] {name}: {failed['message']}")
