"""One batch through MultiKueue, end to end, on two real control planes: a user submits it with
`gpubatch submit` to the MANAGER cluster (which has no nodes and no gpubatch operator), Kueue
admits its Workload there and mirrors Workload and batch to the WORKER cluster (the session's
test bed), whose Kueue admits the copy and whose gpubatch operator runs it within the admitted
pods; the worker's operator marks its Workload Finished, and MultiKueue copies the final status
back to the manager's batch, finishes the manager's Workload and removes the worker's copies.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from gpubatch.api.names import LABEL_KUEUE_QUEUE, MANAGED_BY_MULTIKUEUE
from gpubatch.core.kueueworkload import WORKLOAD_API_VERSION, workload_name
from support.batches import Batches, PodMonitor, batch
from support.operator_process import OperatorProcess
from support.waiting import wait_for
from testbed import Testbed, env_with_kubeconfig
from testbed.kueue import Queue
from testbed.multikueue import WORKER, MultiKueue

pytestmark = pytest.mark.integration

_SCRIPT = Path(sys.executable).with_name("gpubatch")
GPUBATCH = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gpubatch.cli"]
GROUP, VERSION = WORKLOAD_API_VERSION.split("/")


class Clusters:
    """The manager and the worker as the test reads them."""

    def __init__(self, manager: Testbed, worker: Testbed, namespace: str) -> None:
        self.manager, self.worker, self.namespace = manager, worker, namespace
        self.on_manager = Batches(manager, namespace)
        self.on_worker = Batches(worker, namespace)

    def submit(self, tmp_path: Path, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """`gpubatch submit FILE` against the manager, as a user runs it."""
        path = tmp_path / "batch.yaml"
        path.write_text(yaml.safe_dump(body))
        return subprocess.run(
            [*GPUBATCH, "submit", str(path), "-n", self.namespace],
            env=env_with_kubeconfig(self.manager),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def workload(self, bed: Testbed, name: str) -> dict[str, Any] | None:
        api = client.CustomObjectsApi(bed.api_client())
        try:
            found: dict[str, Any] = api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "workloads", name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    def finished(self, bed: Testbed, name: str) -> dict[str, Any] | None:
        conditions = ((self.workload(bed, name) or {}).get("status") or {}).get("conditions")
        return next((c for c in conditions or [] if c["type"] == "Finished"), None)


@pytest.fixture
def clusters(
    testbed: Testbed,
    multikueue: MultiKueue,
    namespace: str,
    multikueue_queue: Queue,
    running_operator: OperatorProcess,
) -> Clusters:
    assert multikueue.manager is not None
    return Clusters(multikueue.manager, testbed, namespace)


def mirrored_batch(name: str, queue: Queue, **spec: Any) -> dict[str, Any]:
    body = batch(name, managedBy=MANAGED_BY_MULTIKUEUE, duration="300ms", **spec)
    body["metadata"]["labels"] = {LABEL_KUEUE_QUEUE: queue.name}
    return body


def test_a_batch_submitted_to_the_manager_runs_on_the_worker_and_its_final_status_comes_back(
    clusters: Clusters, multikueue_queue: Queue, tmp_path: Path
):
    name, wl = "mirrored", workload_name("mirrored")
    body = mirrored_batch(name, multikueue_queue, tasks={"range": {"stop": 8}}, parallelism=2)
    with PodMonitor(clusters.worker, clusters.namespace) as worker_pods:
        began = time.monotonic()
        submitted = clusters.submit(tmp_path, body)
        assert submitted.returncode == 0, submitted.stderr
        assert f"Kueue Workload {clusters.namespace}/{wl} applied (2 pods" in submitted.stdout

        finished = clusters.on_manager.wait_condition(name, "Complete", timeout=180)
        took = time.monotonic() - began
        print(f"\n[multikueue] gpubatch submit -> Complete on the manager: {took:.1f}s (8 x 0.3 s)")
        manager_finished = wait_for(
            lambda: clusters.finished(clusters.manager, wl),
            timeout=60,
            what="the manager's Workload Finished",
        )
        # MultiKueue removes the worker's copies once the manager's Workload is finished.
        wait_for(
            lambda: (
                clusters.on_worker.gone(name) and clusters.workload(clusters.worker, wl) is None
            ),
            timeout=60,
            what="the worker's copies removed",
        )

    # The final status, copied back from the worker.
    assert finished["status"] == "True"
    status = clusters.on_manager.status(name)
    assert status["counts"]["succeeded"] == 8
    assert status["progress"] == "8/8"
    assert manager_finished["reason"] == "Succeeded"
    workload = clusters.workload(clusters.manager, wl)
    assert workload is not None and workload["status"]["clusterName"] == WORKER
    # It ran on the worker, within the 2 pods its Workload was admitted for, each task once,
    # and its pods were not queued pod by pod a second time.
    assert len(worker_pods.created) == 8
    assert worker_pods.max_running <= 2
    assert worker_pods.violations == []
    # Nothing ran on the manager: it has no nodes, and no operator created a pod there.
    manager_pods = clusters.manager.core_v1().list_namespaced_pod(clusters.namespace)
    assert manager_pods.items == []


def test_a_failed_batch_comes_back_failed_and_its_workload_finishes_failed(
    clusters: Clusters, multikueue_queue: Queue, tmp_path: Path
):
    name, wl = "mirrored-fails", workload_name("mirrored-fails")
    body = mirrored_batch(
        name,
        multikueue_queue,
        tasks={"range": {"stop": 3}},
        parallelism=3,
        retry={"limit": 0},
        annotations={"sim.gpubatch.io/fail-indexes": "1", "sim.gpubatch.io/fail-code": "3"},
    )
    submitted = clusters.submit(tmp_path, body)
    assert submitted.returncode == 0, submitted.stderr

    failed = clusters.on_manager.wait_condition(name, "Failed", timeout=180)
    finished = wait_for(
        lambda: clusters.finished(clusters.manager, wl),
        timeout=60,
        what="the manager's Workload Finished",
    )
    assert finished["reason"] == "Failed"
    assert failed["message"]
    status = clusters.on_manager.status(name)
    assert status["failedIndexes"] == "1"
    assert status["counts"]["succeeded"] == 2


def test_submitting_without_parallelism_is_refused_before_anything_is_created(
    clusters: Clusters, multikueue_queue: Queue, tmp_path: Path
):
    body = mirrored_batch("unbounded", multikueue_queue, tasks={"range": {"stop": 2}})
    refused = clusters.submit(tmp_path, body)
    assert refused.returncode == 2
    assert "set spec.parallelism" in refused.stderr
    listed = clusters.manager.kubectl("get", "gpub", "-n", clusters.namespace, "-o", "name")
    assert listed.stdout.strip() == ""
