"""Kueue on the test bed: its real manager (built from Go modules by kueue.sh), its CRDs, its
webhooks served on loopback with a certificate from the test bed's CA, and one queue for the
fake GPU nodes (ResourceFlavor -> ClusterQueue with an nvidia.com/gpu quota -> LocalQueue).

Why only part of Kueue's webhooks: the test bed runs no jobs of other frameworks, and the pod
webhook is narrowed to pods that carry the queue-name label, so the rest of a shared test bed
(other tests' pods) never passes through Kueue and never fails when Kueue is stopped.

Kueue's manager reads its metrics certificate from a fixed path (/etc/kueue/metrics/certs)
unless it manages its own certificates (which needs in-cluster Services the loopback test bed
does not have), so `start` writes a test-bed-CA certificate there when none is present.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from testbed.certs import serving_certificate
from testbed.controlplane import REPO, Testbed
from testbed.processes import Component, free_port, wait_until

KUEUE_SH: Final = REPO / "tests/testbed/kueue.sh"
KUEUE_NAMESPACE: Final = "kueue-system"
QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"
ADMISSION_GATE: Final = "kueue.x-k8s.io/admission"
METRICS_CERTS: Final = Path("/etc/kueue/metrics/certs")
MULTIKUEUE_GC_INTERVAL: Final = "10s"
MULTIKUEUE_WORKER_LOST_TIMEOUT: Final = "30s"
WEBHOOK_NAMES: Final = ("gpubatch-testbed-kueue-mutating", "gpubatch-testbed-kueue-validating")


def kueue_dir() -> Path:
    """The folder with the `kueue` manager and `crds/`: built (once, cached) by kueue.sh."""
    done = subprocess.run(
        ["bash", str(KUEUE_SH)], check=True, capture_output=True, text=True
    ).stdout
    return Path(done.strip().splitlines()[-1])


@dataclass
class Queue:
    """One ResourceFlavor, ClusterQueue and (per namespace) LocalQueue with a GPU quota."""

    name: str = "gpus"
    gpus: int = 4
    gpu_resource: str = "nvidia.com/gpu"

    def objects(self) -> list[dict[str, Any]]:
        big = {"cpu": "100000", "memory": "100000Gi"}
        covered = [self.gpu_resource, *big]
        quotas = [{"name": self.gpu_resource, "nominalQuota": self.gpus}] + [
            {"name": name, "nominalQuota": amount} for name, amount in big.items()
        ]
        return [
            kueue_object("ResourceFlavor", self.name, {}),
            kueue_object(
                "ClusterQueue",
                self.name,
                {
                    "namespaceSelector": {},
                    "resourceGroups": [
                        {
                            "coveredResources": covered,
                            "flavors": [{"name": self.name, "resources": quotas}],
                        }
                    ],
                },
            ),
        ]

    def local_queue(self, namespace: str) -> dict[str, Any]:
        body = kueue_object("LocalQueue", self.name, {"clusterQueue": self.name})
        body["metadata"]["namespace"] = namespace
        return body


def kueue_object(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A cluster-scoped Kueue object (kueue.x-k8s.io/v1beta2) to `Kueue.apply`."""
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


@dataclass
class Kueue:
    """Kueue's manager running against one test bed."""

    bed: Testbed
    folder: Path = field(default_factory=kueue_dir)
    component: Component | None = None
    webhook_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    # Kinds ("Kind.version.group") whose objects MultiKueue mirrors to worker clusters with its
    # generic adapter; empty: no `multiKueue` section (Kueue's defaults).
    multikueue_frameworks: list[str] = field(default_factory=list)

    @property
    def workdir(self) -> Path:
        return self.bed.workdir / "kueue"

    @property
    def log_path(self) -> Path:
        return self.bed.workdir / "logs" / "kueue.log"

    def start(self) -> float:
        """Install the CRDs, start the manager, register its webhooks; seconds it took."""
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bed.kubectl("apply", "--server-side", "-f", str(self.folder / "crds"))
        for crd in sorted((self.folder / "crds").glob("*.yaml")):
            name = yaml.safe_load(crd.read_text())["metadata"]["name"]
            self.bed.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        self.bed.kubectl("create", "namespace", KUEUE_NAMESPACE, check=False)
        cert_dir = self.workdir / "webhook-certs"
        cert, key = serving_certificate(self.bed.certs, cert_dir, "kueue-webhook")
        cert.rename(cert_dir / "tls.crt")
        key.rename(cert_dir / "tls.key")
        self._metrics_certificate()
        config = self.workdir / "config.yaml"
        config.write_text(yaml.safe_dump(self._configuration(cert_dir)))
        self.component = Component(
            name="kueue",
            argv=[
                str(self.folder / "kueue"),
                f"--config={config}",
                f"--kubeconfig={self.bed.kubeconfig}",
                "--feature-gates=VisibilityOnDemand=false",
                "--zap-log-level=info",
            ],
            log_path=self.log_path,
            tied=self.bed.tied,
        )
        self.component.start()
        wait_until(self._ready, timeout=120, what="kueue to be ready", component=self.component)
        self._register_webhooks()
        return time.monotonic() - began

    def stop(self) -> None:
        """Unregister the webhooks first, so nothing waits on a stopped webhook server."""
        for kind, name in zip(
            ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"),
            WEBHOOK_NAMES,
            strict=True,
        ):
            self.bed.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        if self.component is not None:
            self.component.stop()

    def create_queue(self, queue: Queue, namespace: str) -> None:
        """The queue's cluster objects (idempotent) and its LocalQueue in `namespace`."""
        for body in [*queue.objects(), queue.local_queue(namespace)]:
            self.apply(body)

    def apply(self, body: dict[str, Any]) -> None:
        """Apply one object (server-side) on the bed, retrying briefly: the webhook server may
        still be warming its certificate."""

        def applied() -> bool:
            result = self.bed.kubectl(
                "apply", "--server-side", "-f", "-", input=json.dumps(body), check=False
            )
            return result.returncode == 0

        wait_until(applied, timeout=30, what=f"{body['kind']} {body['metadata']['name']}")

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2):
            return True

    def _configuration(self, cert_dir: Path) -> dict[str, Any]:
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": KUEUE_NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.metrics_port}"},
            "webhook": {"port": self.webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "clientConnection": {"qps": 100, "burst": 200},
            "integrations": {"frameworks": ["pod"]},
            **self._multikueue(),
        }

    def _multikueue(self) -> dict[str, Any]:
        """The `multiKueue` section, timed for tests: remote objects whose origin is gone are
        collected every MULTIKUEUE_GC_INTERVAL (Kueue's default: a minute), and a lost worker
        frees its workloads after MULTIKUEUE_WORKER_LOST_TIMEOUT (default: 15 minutes)."""
        if not self.multikueue_frameworks:
            return {}
        return {
            "multiKueue": {
                "gcInterval": MULTIKUEUE_GC_INTERVAL,
                "workerLostTimeout": MULTIKUEUE_WORKER_LOST_TIMEOUT,
                "externalFrameworks": [{"name": kind} for kind in self.multikueue_frameworks],
            }
        }

    def _metrics_certificate(self) -> None:
        if (METRICS_CERTS / "tls.crt").exists():
            return
        try:
            cert, key = serving_certificate(self.bed.certs, METRICS_CERTS, "kueue-metrics")
        except PermissionError as error:
            raise RuntimeError(
                f"Kueue reads its metrics certificate from {METRICS_CERTS}; make it writable "
                "or put tls.crt and tls.key there"
            ) from error
        cert.rename(METRICS_CERTS / "tls.crt")
        key.rename(METRICS_CERTS / "tls.key")
        os.chmod(METRICS_CERTS / "tls.key", 0o600)

    def _register_webhooks(self) -> None:
        """Kueue's own webhook manifests, narrowed (pods and Kueue's objects) and pointed at
        the manager on loopback, trusting the test bed's CA."""
        manifests = self.folder / "webhooks.yaml"
        ca = _b64(self.bed.certs.ca_cert.read_bytes())
        for doc, name in zip(yaml.safe_load_all(manifests.read_text()), WEBHOOK_NAMES, strict=True):
            doc["metadata"] = {"name": name}
            kept = []
            for hook in doc["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                if "kueue-x-k8s-io" not in path and not path.endswith("--v1-pod"):
                    continue
                url = f"https://127.0.0.1:{self.webhook_port}{path}"
                hook["clientConfig"] = {"url": url, "caBundle": ca}
                if path.endswith("--v1-pod"):
                    hook["objectSelector"] = {
                        "matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]
                    }
                kept.append(hook)
            doc["webhooks"] = kept
            self.bed.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(doc))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
