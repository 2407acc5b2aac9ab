"""MultiKueue across two test beds: a MANAGER cluster where batches are submitted and a WORKER
cluster (the session's test bed, with its kwok GPU nodes, its Kueue and the gpubatch operator)
where they run.

The manager is a control-plane-only test bed (no scheduler, no nodes: nothing runs there) with
the GPUBatch CRD and Kueue configured for MultiKueue, whose generic adapter mirrors a GPUBatch
with `spec.managedBy: kueue.x-k8s.io/multikueue` to the worker once the worker's Kueue admits
its Workload. The wiring is Kueue's documented one: the worker's kubeconfig in a Secret in
Kueue's namespace -> MultiKueueCluster -> MultiKueueConfig -> an AdmissionCheck that each
manager ClusterQueue requires. The worker needs nothing MultiKueue-specific: only a LocalQueue
of the same name in the batch's namespace (`Kueue.create_queue` on the worker).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gpubatch.api.names import GROUP, KIND, MANAGED_BY_MULTIKUEUE, VERSION
from support.crd import install_crd
from testbed.controlplane import Testbed, TestbedConfig
from testbed.kueue import KUEUE_NAMESPACE, Kueue, Queue, kueue_object
from testbed.processes import StartError

# How Kueue names a kind for its generic MultiKueue adapter: Kind.version.group.
GPUBATCH_FRAMEWORK: Final = f"{KIND}.{VERSION}.{GROUP}"
WORKER: Final = "worker"  # the MultiKueueCluster's name, as the manager's Workloads report it
CHECK: Final = "multikueue"  # the AdmissionCheck and the MultiKueueConfig
ACTIVE_TIMEOUT: Final = 60.0
# The label MultiKueue's generic adapter puts on the worker's copies of a batch and its
# Workload beside kueue.x-k8s.io/prebuilt-workload-name: which manager made them.
ORIGIN_LABEL: Final = "kueue.x-k8s.io/multikueue-origin"
WORKLOADS: Final = ("kueue.x-k8s.io", "v1beta2", "workloads")  # group, version, plural


@dataclass
class MultiKueue:
    """A manager cluster (test bed + Kueue) dispatching to `worker` through MultiKueue.

    `worker_kueue` must be running: the manager's Kueue only reports the worker Active once it
    can watch Kueue's Workloads there."""

    worker: Testbed
    worker_kueue: Kueue
    frameworks: list[str] = field(default_factory=lambda: [GPUBATCH_FRAMEWORK])
    manager: Testbed | None = None
    manager_kueue: Kueue | None = None

    def start(self) -> float:
        """Start the manager bed and its Kueue, connect them to the worker and wait until the
        worker is Active; the seconds it took. Stops what it started if it fails."""
        began = time.monotonic()
        if self.worker_kueue.component is None or not self.worker_kueue.component.alive():
            raise StartError("MultiKueue needs the worker's Kueue running: start it first")
        # A folder of its own per start (beside the worker's, so the worker's clean-up takes it
        # and GPUBATCH_KEEP_TESTBED_LOGS keeps its logs): a restart never finds old etcd data.
        workdir = Path(tempfile.mkdtemp(prefix="multikueue-manager-", dir=self.worker.workdir))
        self.manager = Testbed.create(
            TestbedConfig(control_plane_only=True),
            workdir=workdir,
            bin_dir=self.worker.bin_dir,
            tied=self.worker.tied,
        )
        try:
            self.manager.start()
            install_crd(self.manager)
            self.manager_kueue = Kueue(self.manager, multikueue_frameworks=self.frameworks)
            self.manager_kueue.start()
            self._connect_worker()
            self.wait_active()
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - began

    def stop(self) -> None:
        """Stop the manager's Kueue, then the manager bed; what was mirrored to the worker
        stays there (the worker's namespaces are the tests' to delete)."""
        if self.manager_kueue is not None:
            self.manager_kueue.stop()
        if self.manager is not None:
            self.manager.stop()

    def create_queue(self, queue: Queue, namespace: str) -> None:
        """On the manager: `namespace`, and `queue` (ResourceFlavor, ClusterQueue, LocalQueue)
        with its ClusterQueue requiring the MultiKueue check, so its Workloads are dispatched
        to the worker. The worker needs the same queue: `Kueue.create_queue` there."""
        kueue = self._manager_kueue()
        kueue.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for body in queue.objects():
            if body["kind"] == "ClusterQueue":
                body["spec"]["admissionChecksStrategy"] = {"admissionChecks": [{"name": CHECK}]}
            kueue.apply(body)
        kueue.apply(queue.local_queue(namespace))

    def wait_active(self, timeout: float = ACTIVE_TIMEOUT) -> None:
        """Until the MultiKueueCluster and the AdmissionCheck both report Active=True; on
        timeout the error carries their conditions' reasons and messages."""
        for kind, name in (("multikueuecluster", WORKER), ("admissioncheck", CHECK)):
            self.wait_true(kind, name, "Active", timeout)

    def wait_true(self, kind: str, name: str, condition: str, timeout: float) -> None:
        """Until the manager's `kind` `name` has `condition` True; else a StartError with the
        condition's status, reason and message (what Kueue says is wrong)."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = self.condition(kind, name, condition)
            if last is not None and last.get("status") == "True":
                return
            time.sleep(0.5)
        seen = (
            f"{condition}={last.get('status')} ({last.get('reason')}: {last.get('message')})"
            if last
            else f"no {condition} condition yet"
        )
        raise StartError(
            f"MultiKueue on the manager: {kind} {name} not {condition} after {timeout:.0f}s: "
            f"{seen}. Manager's Kueue log: {self._manager_kueue().log_path}"
        )

    def condition(self, kind: str, name: str, condition: str) -> dict[str, Any] | None:
        """The manager's `kind` `name`'s condition `condition`; None if either is missing."""
        result = self._manager().kubectl("get", kind, name, "-o", "json", check=False)
        if result.returncode != 0:
            return None
        conditions = (json.loads(result.stdout).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c.get("type") == condition), None)

    def add_cluster(self, name: str, kubeconfig: Path) -> None:
        """A MultiKueueCluster `name` on the manager reading `kubeconfig` from a Secret
        `<name>-kubeconfig` in Kueue's namespace. Kueue takes only a kubeconfig with its
        certificates embedded (`Testbed.embedded_kubeconfig`); one naming files is refused."""
        secret = f"{name}-kubeconfig"
        self._manager().kubectl(
            "create",
            "secret",
            "generic",
            secret,
            f"--namespace={KUEUE_NAMESPACE}",
            f"--from-file=kubeconfig={kubeconfig}",
        )
        source = {"kubeConfig": {"locationType": "Secret", "location": secret}}
        self._manager_kueue().apply(
            kueue_object("MultiKueueCluster", name, {"clusterSource": source})
        )

    # ----------------------------------------------------------------------------- wiring
    def _connect_worker(self) -> None:
        """The worker as MultiKueueCluster WORKER, the only cluster of the MultiKueueConfig
        that the AdmissionCheck CHECK (Kueue's MultiKueue controller) is parameterised by."""
        self.add_cluster(WORKER, self.worker.embedded_kubeconfig())
        parameters = {"apiGroup": "kueue.x-k8s.io", "kind": "MultiKueueConfig", "name": CHECK}
        check = {"controllerName": MANAGED_BY_MULTIKUEUE, "parameters": parameters}
        kueue = self._manager_kueue()
        kueue.apply(kueue_object("MultiKueueConfig", CHECK, {"clusters": [WORKER]}))
        kueue.apply(kueue_object("AdmissionCheck", CHECK, check))

    def _manager(self) -> Testbed:
        if self.manager is None:
            raise StartError("MultiKueue is not started: call start() first")
        return self.manager

    def _manager_kueue(self) -> Kueue:
        if self.manager_kueue is None:
            raise StartError("MultiKueue is not started: call start() first")
        return self.manager_kueue
