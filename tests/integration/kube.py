"""Small helpers for integration tests: builders for pods and waiting on conditions."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float = 60,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll until `check` returns something truthy and return it; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


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
            "containers": [
                {
                    "name": "task",
                    "image": "registry.example.com/task:1",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
    }
