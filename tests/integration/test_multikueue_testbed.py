"""MultiKueue between two real control planes, with no gpubatch code in the loop: a GPUBatch
submitted on the manager cluster (managed by MultiKueue, with its Workload) is admitted there
through the MultiKueue check and mirrored by Kueue's generic adapter to the worker cluster (the
session test bed), where the worker's Kueue admits the Workload copy and the batch copy appears
without managedBy, so the worker's gpubatch operator would run it."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from gpubatch.api.names import (
    LABEL_KUEUE_PREBUILT_WORKLOAD,
    LABEL_KUEUE_QUEUE,
    MANAGED_BY_MULTIKUEUE,
)
from gpubatch.api.spec import GPUBatchSpec
from gpubatch.core.kueueworkload import batch_workload
from support.batches import Batches, batch
from support.waiting import wait_for
from testbed import Testbed
from testbed.kueue import KUEUE_NAMESPACE, Queue
from testbed.multikueue import (
    CHECK,
    ORIGIN_LABEL,
    WORKER,
    WORKLOADS,
    MultiKueue,
)
from testbed.processes import StartError

pytestmark = pytest.mark.integration


def _get_or_none(read: Any, *args: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = read(*args)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def test_a_batch_submitted_to_the_manager_is_admitted_there_and_mirrored_to_the_worker(
    testbed: Testbed,
    multikueue: MultiKueue,
    multikueue_queue: Queue,
    namespace: str,
    no_operator: None,
):
    manager = multikueue.manager
    assert manager is not None
    on_manager = Batches(manager, namespace)
    on_worker = Batches(testbed, namespace)
    manager_workloads = client.CustomObjectsApi(manager.api_client())
    worker_workloads = client.CustomObjectsApi(testbed.api_client())
    wl_name = "mirrored-wl"

    tasks = {"range": {"stop": 2}}
    body = batch("mirrored", tasks=tasks, managedBy=MANAGED_BY_MULTIKUEUE, parallelism=2)
    queue = multikueue_queue.name
    body["metadata"]["labels"] = {LABEL_KUEUE_QUEUE: queue, LABEL_KUEUE_PREBUILT_WORKLOAD: wl_name}
    submitted = on_manager.create(body)
    spec = GPUBatchSpec.model_validate(submitted["spec"])
    manager_workloads.create_namespaced_custom_object(
        *WORKLOADS[:2], namespace, WORKLOADS[2], batch_workload(submitted, spec, queue, wl_name)
    )
    created = time.monotonic()

    copy = wait_for(
        lambda: _get_or_none(on_worker.get, "mirrored"),
        timeout=90,
        what="the GPUBatch copy on the worker",
    )
    mirrored_after = time.monotonic() - created
    print(f"\n[multikueue] Workload on manager -> GPUBatch on worker: {mirrored_after:.2f}s")

    def admitted_on_manager() -> dict[str, Any] | None:
        wl = manager_workloads.get_namespaced_custom_object(
            *WORKLOADS[:2], namespace, WORKLOADS[2], wl_name
        )
        status = wl.get("status") or {}
        reserved = any(
            c["type"] == "QuotaReserved" and c["status"] == "True"
            for c in status.get("conditions") or []
        )
        checks = {c["name"]: c for c in status.get("admissionChecks") or []}
        ready = checks.get(CHECK, {}).get("state") == "Ready"
        return wl if reserved and ready else None

    local = wait_for(
        admitted_on_manager, timeout=60, what="the manager's Workload admitted via MultiKueue"
    )
    assert local["status"]["clusterName"] == WORKER
    assert WORKER in {c["name"]: c for c in local["status"]["admissionChecks"]}[CHECK]["message"]

    remote = worker_workloads.get_namespaced_custom_object(
        *WORKLOADS[:2], namespace, WORKLOADS[2], wl_name
    )
    assert remote["spec"]["queueName"] == multikueue_queue.name
    assert any(
        c["type"] == "QuotaReserved" and c["status"] == "True"
        for c in remote["status"]["conditions"]
    )
    assert remote["metadata"]["labels"][ORIGIN_LABEL]
    assert "managedBy" not in copy["spec"]
    assert copy["spec"]["tasks"] == submitted["spec"]["tasks"]
    assert copy["metadata"]["labels"][LABEL_KUEUE_PREBUILT_WORKLOAD] == wl_name
    assert copy["metadata"]["labels"][ORIGIN_LABEL] == remote["metadata"]["labels"][ORIGIN_LABEL]
    assert copy["metadata"]["uid"] != submitted["metadata"]["uid"]  # a copy, on another cluster


def test_a_worker_kubeconfig_naming_files_is_refused_and_the_wait_says_why(
    testbed: Testbed, multikueue: MultiKueue
):
    """Kueue takes only a kubeconfig with its certificates inside (hence
    `Testbed.embedded_kubeconfig`); the test bed's own kubeconfig names files, and a wait on a
    cluster given it fails with Kueue's own reason, not a bare timeout."""
    manager = multikueue.manager
    assert manager is not None
    name = f"paths-{uuid.uuid4().hex[:6]}"
    multikueue.add_cluster(name, testbed.kubeconfig)
    try:
        refused = wait_for(
            lambda: multikueue.condition("multikueuecluster", name, "Active"),
            timeout=30,
            what=f"an Active condition on MultiKueueCluster {name}",
        )
        assert refused["status"] == "False"
        assert refused["reason"] == "InsecureKubeConfig"
        with pytest.raises(StartError) as failed:
            multikueue.wait_true("multikueuecluster", name, "Active", timeout=1)
        message = str(failed.value)
        assert f"multikueuecluster {name} not Active" in message
        assert "InsecureKubeConfig" in message
        assert "certificate-authority file paths are not allowed" in message
    finally:
        manager.kubectl("delete", "multikueuecluster", name, "--ignore-not-found", check=False)
        manager.kubectl(
            "delete", "secret", f"{name}-kubeconfig", "-n", KUEUE_NAMESPACE, check=False
        )
