"""Plain pods and pod templates for the test bed: what tests and benchmarks create themselves.

kwok's Stage annotations (`sim.gpubatch.io/...`, see tests/testbed) decide how long a pod
"runs" and how it ends; the GPU limit makes the scheduler place it on a fake GPU node.
"""

from __future__ import annotations

from typing import Any

IMAGE = "registry.example.com/task:1"


def gpu_container(gpus: int = 1, command: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "task",
        "image": IMAGE,
        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
    }
    if command is not None:
        container["command"] = command
    return container


def gpu_pod(
    name: str,
    *,
    gpus: int = 1,
    annotations: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A minimal pod requesting `gpus` GPUs, as gpubatch's task pods do."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": node_selector or {},
            "containers": [gpu_container(gpus)],
        },
    }


def gpu_pod_template(durations: str | None = None, duration: str = "50ms") -> dict[str, Any]:
    """A one-GPU pod template whose pods run `duration` (or one of `durations` by index)."""
    annotations = {"sim.gpubatch.io/duration": duration}
    if durations is not None:
        annotations["sim.gpubatch.io/durations"] = durations
    return {
        "metadata": {"annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "containers": [gpu_container(command=["python", "task.py"])],
        },
    }
