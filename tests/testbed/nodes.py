"""Fake GPU nodes for kwok: Node objects whose capacity advertises `nvidia.com/gpu`.

The API server accepts status on create, so a node is born with its GPUs; kwok then keeps it Ready
and the real scheduler does real GPU accounting against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
GPU_MODEL_LABEL = "nvidia.com/gpu.product"


@dataclass
class GpuNodePool:
    """`count` identical nodes named `<name>-<i>`, each with `gpus` GPUs of `model`.

    A pool whose name contains "slow" runs simulated pods for their `slow-duration` annotation
    (see kwok-config.yaml), which is how mixed fast/slow clusters are simulated.
    """

    name: str = "gpu"
    count: int = 2
    gpus: int = 8
    model: str = "NVIDIA-A100-SXM4-80GB"
    labels: dict[str, str] = field(default_factory=dict)


def node_manifest(pool: GpuNodePool, index: int) -> dict[str, Any]:
    name = f"{pool.name}-{index}"
    capacity = {
        "cpu": "64",
        "memory": "512Gi",
        "pods": "110",
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: str(pool.gpus),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "gpubatch.io/testbed-pool": pool.name,
                GPU_MODEL_LABEL: pool.model,
                "nvidia.com/gpu.count": str(pool.gpus),
                **pool.labels,
            },
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }
