"""Builders for tests on the real node: GPUBatches whose tasks run the real worker image in real
containers, writing to a host folder that stands in for shared storage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gpubatch.api.names import GROUP, VERSION
from support.waiting import wait_for
from testbed.realnode.node import REAL_NODE_TAINT, RealNode

# The task container runs as the image's user; the shared folder must be writable by it.
WORKER_UID = 65532


def shared_folder(path: Path) -> Path:
    """A host folder the task pods mount at the same path, so the operator (on the host) and the
    worker (in the pod) see the same outputs, as with a shared filesystem on a real cluster."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, WORKER_UID, WORKER_UID)
    return path


def real_batch(
    name: str,
    node: RealNode,
    shared: Path,
    *,
    command: list[str],
    image: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A GPUBatch for the real node: its GPU model, its taint tolerated, `shared` mounted."""
    container: dict[str, Any] = {
        "name": "task",
        "image": image or node.images.worker.ref,
        "command": command,
        "volumeMounts": [{"name": "shared", "mountPath": str(shared)}],
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GPUBatch",
        "metadata": {"name": name},
        "spec": {
            "gpuModels": [node.model],
            # No GPU here: the tasks run on the CPU, which a batch must allow explicitly.
            "worker": {"requireGPU": False, **spec.pop("worker", {})},
            "template": {
                "spec": {
                    "tolerations": [
                        {"key": REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "volumes": [
                        {
                            "name": "shared",
                            "hostPath": {"path": str(shared), "type": "Directory"},
                        }
                    ],
                    "containers": [container],
                }
            },
            **spec,
        },
    }


def wait_for_file(path: Path, *, timeout: float = 120) -> Path:
    return wait_for(lambda: path if path.exists() else None, timeout=timeout, what=f"{path}")
