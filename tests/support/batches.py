"""GPUBatches on the test bed: a builder, operations and waits in one namespace, and a pod
monitor that records invariant violations as they happen (integration tests and benchmarks)."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from gpubatch.api.lease import LABEL_WARM_SLOT
from gpubatch.api.names import FINALIZER_TRACKING, GROUP, LABEL_TASK_INDEX, PLURAL, VERSION
from support.podwatch import PodEvents
from support.waiting import wait_for
from testbed import Testbed


def batch(
    name: str,
    *,
    tasks: dict[str, Any] | None = None,
    duration: str = "200ms",
    annotations: dict[str, str] | None = None,
    env: list[dict[str, str]] | None = None,
    command: list[str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A GPUBatch whose simulated task pods run `duration` (kwok Stage annotations)."""
    container: dict[str, Any] = {
        "name": "task",
        "image": "registry.example.com/task:1",
        "command": command or ["python", "task.py", "--index", "{index}"],
    }
    if env:
        container["env"] = env
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GPUBatch",
        "metadata": {"name": name},
        "spec": {
            "tasks": tasks or {"range": {"start": 0, "stop": 10}},
            "template": {
                "metadata": {
                    "annotations": {"sim.gpubatch.io/duration": duration, **(annotations or {})}
                },
                "spec": {"containers": [container]},
            },
            **spec,
        },
    }


def warm_batch(
    name: str,
    *,
    template: dict[str, Any] | None = None,
    load: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A GPUBatch of warm workers (worker.mode: Warm): one program per warm pod, fed tasks by
    lease. On the test bed tests/testbed/warmsim.py plays that program; it reads the same
    `sim.gpubatch.io/` annotations on the template as kwok does for task pods (duration or
    lognormal per task, fail rules), plus `sim.gpubatch.io/load`, the program's start-up cost,
    paid once per pod. `template` (a pod template, e.g. `support.pods.gpu_pod_template`) replaces
    the default one; its command must hold no task placeholder (warm programs start once)."""
    body = batch(
        name, command=["python", "serve.py"], worker={"mode": "Warm", "wrap": True}, **spec
    )
    if template is not None:
        body["spec"]["template"] = copy.deepcopy(template)
    if load is not None:
        body["spec"]["template"].setdefault("metadata", {}).setdefault("annotations", {})[
            "sim.gpubatch.io/load"
        ] = load
    return body


class Batches:
    """GPUBatch operations in one namespace."""

    def __init__(self, testbed: Testbed, namespace: str) -> None:
        self.testbed = testbed
        self.namespace = namespace
        self.api = client.CustomObjectsApi(testbed.api_client())
        self.core = testbed.core_v1()

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def get(self, name: str) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for cond in self.status(name).get("conditions") or []:
            if cond["type"] == type_:
                return cond
        return None

    def wait_until(
        self, name: str, test: Callable[[dict[str, Any]], bool], what: str, timeout: float
    ) -> dict[str, Any]:
        """Poll the batch until `test(batch object)` holds; return that object."""

        def passed() -> dict[str, Any] | None:
            obj = self.get(name)
            return dict(obj) if test(obj) else None

        return wait_for(
            passed, timeout=timeout, interval=0.25, what=f"{what} on {self.namespace}/{name}"
        )

    def wait_condition(self, name: str, type_: str, *, timeout: float = 120) -> dict[str, Any]:
        """Wait until condition `type_` is True; return the condition."""
        obj = self.wait_until(name, lambda obj: _is_true(obj, type_), f"{type_}=True", timeout)
        return next(c for c in obj["status"]["conditions"] if c["type"] == type_)

    def wait_finished(self, name: str, *, timeout: float = 120) -> dict[str, Any]:
        """Wait until the batch is Complete or Failed; return the whole object."""
        return self.wait_until(
            name,
            lambda obj: _is_true(obj, "Complete") or _is_true(obj, "Failed"),
            "Complete or Failed",
            timeout,
        )

    def wait_observed(self, name: str, *, timeout: float = 60) -> dict[str, Any]:
        """Wait until the operator has written a status for the batch's current generation
        (a pass ran on the spec as it is now); return that status."""
        obj = self.wait_until(
            name,
            lambda obj: (
                (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
            ),
            "observedGeneration = generation",
            timeout,
        )
        return dict(obj["status"])

    def pods(self) -> list[Any]:
        return self.core.list_namespaced_pod(self.namespace).items

    def gone(self, name: str) -> bool:
        try:
            self.get(name)
        except ApiException as error:
            return error.status == 404
        return False


def _is_true(obj: dict[str, Any], type_: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == type_ and c["status"] == "True" for c in conditions)


class PodMonitor:
    """Watches a namespace's pods and records invariant violations as they happen.

    - two non-terminal attempts of one task at the same moment (a task running twice);
    - the most pods Running at once, and the most waiting to be scheduled at once.
    """

    def __init__(self, testbed: Testbed, namespace: str) -> None:
        self.live: dict[str, tuple[int, bool, bool]] = {}  # pod -> (task, running, unscheduled)
        self.live_by_task: dict[int, set[str]] = defaultdict(set)
        self.violations: list[str] = []
        self.max_running = 0
        self.max_unscheduled = 0
        self.warm_running: set[str] = set()  # warm pods Running now
        self.max_warm_running = 0
        self.created: set[str] = set()
        self.created_order: list[str] = []  # first-seen order of task pods
        self._running = 0
        self._unscheduled = 0
        self._events = PodEvents(testbed, namespace, self._on)

    def __enter__(self) -> PodMonitor:
        self._events.__enter__()
        return self

    def __exit__(self, *args: object) -> None:
        self._events.__exit__(*args)

    def _forget(self, name: str) -> None:
        gone = self.live.pop(name, None)
        if gone is not None:
            task, running, unscheduled = gone
            self.live_by_task[task].discard(name)
            self._running -= running
            self._unscheduled -= unscheduled

    def _on(self, kind: str, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        name = metadata["name"]
        labels = metadata.get("labels") or {}
        if LABEL_WARM_SLOT in labels:
            self._on_warm(kind, pod)
            return
        if LABEL_TASK_INDEX not in labels:
            return
        if name not in self.created:
            self.created.add(name)
            self.created_order.append(name)
        task = int(labels[LABEL_TASK_INDEX])
        phase = (pod.get("status") or {}).get("phase")
        self._forget(name)
        if kind != "DELETED" and phase not in ("Succeeded", "Failed"):
            running = phase == "Running"
            unscheduled = not (pod.get("spec") or {}).get("nodeName")
            self.live[name] = (task, running, unscheduled)
            self.live_by_task[task].add(name)
            self._running += running
            self._unscheduled += unscheduled
            if len(self.live_by_task[task]) > 1:
                alive = sorted(self.live_by_task[task])
                self.violations.append(f"task {task} has {alive} alive at once")
        self.max_running = max(self.max_running, self._running)
        self.max_unscheduled = max(self.max_unscheduled, self._unscheduled)

    def _on_warm(self, kind: str, pod: dict[str, Any]) -> None:
        """Warm pods hold no task of their own: only how many run at once is kept (a pod being
        deleted is on its way out, whatever quota it held is being given back)."""
        name = pod["metadata"]["name"]
        deleting = pod["metadata"].get("deletionTimestamp") is not None
        phase = (pod.get("status") or {}).get("phase")
        running = kind != "DELETED" and not deleting and phase == "Running"
        if running:
            self.warm_running.add(name)
        else:
            self.warm_running.discard(name)
        self.max_warm_running = max(self.max_warm_running, len(self.warm_running))


def pods_with_finalizer(batches: Batches) -> list[str]:
    return [
        p.metadata.name
        for p in batches.pods()
        if FINALIZER_TRACKING in (p.metadata.finalizers or [])
    ]
