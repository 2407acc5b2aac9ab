"""The Helm chart with the operator image built here: the operator's own container runs as a
real pod on the real node, under the chart's RBAC, and drives a batch to the end (`realnode`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.realnode_kit import real_batch, shared_folder
from support.batches import Batches
from support.waiting import wait_for
from testbed import Testbed
from testbed.realnode.node import REAL_NODE_TAINT, RealNode

pytestmark = pytest.mark.realnode

CHART = Path(__file__).resolve().parents[2] / "charts" / "gpubatch-operator"
TASK = """
import pathlib, sys
pathlib.Path(sys.argv[2]).write_text('task %s by the operator in a pod' % sys.argv[1])
"""


def helm(testbed: Testbed, *args: str) -> str:
    import subprocess

    done = subprocess.run(
        [str(testbed.bin_dir / "helm"), f"--kubeconfig={testbed.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def operator_pod_values(
    real_node: RealNode, namespace: str, tmp_path: Path
) -> Iterator[tuple[Path, Path]]:
    """Values that put the chart's operator on the real node, watching only `namespace`, with
    the shared folder mounted read-only at the batches' path."""
    shared = shared_folder(tmp_path / "shared")
    host, port = real_node.api_for_pods
    repository, tag = real_node.images.operator.ref.rsplit(":", 1)
    values = {
        "operatorImage": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespaces": [namespace],
        "nodeSelector": {"kubernetes.io/hostname": real_node.name},
        "tolerations": [{"key": REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
        # No kube-proxy here: the in-cluster address is the node's API forwarder.
        "env": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": host},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(port)},
        ],
        "storage": {
            "volumes": [{"name": "shared", "hostPath": {"path": str(shared), "type": "Directory"}}],
            "volumeMounts": [{"name": "shared", "mountPath": str(shared), "readOnly": True}],
        },
    }
    path = tmp_path / "values.json"
    path.write_text(json.dumps(values))
    yield path, shared


def test_chart_operator_runs_as_a_real_pod_under_its_rbac_and_completes_a_batch(
    testbed: Testbed,
    real_node: RealNode,
    namespace: str,
    no_operator: None,
    operator_pod_values: tuple[Path, Path],
):
    values, shared = operator_pod_values
    release = "gpubatch"
    helm(
        testbed,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "-f",
        str(values),
        "--wait",
        "--timeout=180s",
    )
    try:
        pods = (
            testbed.core_v1()
            .list_namespaced_pod(
                namespace, label_selector="app.kubernetes.io/name=gpubatch-operator"
            )
            .items
        )
        (pod,) = pods
        assert pod.spec.node_name == real_node.name
        assert pod.spec.service_account_name == f"{release}-gpubatch-operator"
        assert pod.status.phase == "Running"
        (status,) = pod.status.container_statuses
        assert status.ready and status.image.endswith(real_node.images.operator.ref.split("/")[-1])

        batches = Batches(testbed, namespace)
        (shared / "out-1.txt").write_text("made earlier\n")
        batches.create(
            real_batch(
                "by-pod",
                real_node,
                shared,
                command=["python3", "-c", TASK, "{index}", "{outputs[0]}"],
                tasks={"range": {"start": 0, "stop": 4}},
                outputs=[str(shared / "out-{index}.txt")],
            )
        )
        batches.wait_condition("by-pod", "Complete", timeout=240)
        result = batches.status("by-pod")
        assert result["succeededIndexes"] == "0,2-3"
        assert result["skippedIndexes"] == "1"  # seen by the operator through its own mount
        assert {p.name: p.read_text() for p in shared.iterdir()} == {
            "out-0.txt": "task 0 by the operator in a pod",
            "out-1.txt": "made earlier\n",
            "out-2.txt": "task 2 by the operator in a pod",
            "out-3.txt": "task 3 by the operator in a pod",
        }

        def task_pods() -> list[str]:
            return [
                p.metadata.name
                for p in batches.pods()
                if "gpubatch.io/batch" in (p.metadata.labels or {})
            ]

        wait_for(
            lambda: not task_pods() or None,
            timeout=60,
            what="succeeded task pods deleted by the operator",
        )
    except BaseException:
        logs = testbed.kubectl(
            "logs",
            "-n",
            namespace,
            f"deployment/{release}-gpubatch-operator",
            "--tail=40",
            check=False,
        )
        print(f"[realnode] the operator pod's log:\n{logs.stdout}{logs.stderr}")
        raise
    finally:
        batches_left = testbed.kubectl("get", "gpub", "-n", namespace, "-o", "name").stdout
        if batches_left.strip():
            testbed.kubectl("delete", "gpub", "--all", "-n", namespace, "--wait=true")
        helm(testbed, "uninstall", release, "-n", namespace, "--wait", "--timeout=120s")
