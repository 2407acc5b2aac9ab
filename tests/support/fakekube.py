"""An in-memory stand-in for the operator's Kubernetes client, with faults on demand.

It implements `gpubatch.controller.reconcile.KubeApi` the way the API server answers it: 409
(AlreadyExists) on a repeated create and 404 on a missing pod are "already done" (False), a
delete of a pod that still carries finalizers only marks it deleting, and any injected refusal
raises `ApiError` exactly as `KubeClient` does. Faults are queued per verb: an HTTP status, a
timeout, or a delay before the call takes effect. Every call is logged with the order in which
it began and ended, so a test can check the apply order ("the status write ended before the
first create began").
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gpubatch.api.names import FINALIZER_TRACKING
from gpubatch.controller.reconcile import BatchRuntime, Reconciler
from gpubatch.core.planner import Event, Plan
from gpubatch.core.podview import PodView, pod_view
from gpubatch.core.stuck import NodeCapacity
from gpubatch.core.warmpod import WarmPodView, warm_pod_view
from gpubatch.edges.kube import ApiError

JSON = dict[str, Any]


@dataclass
class Call:
    """One client call: what, on which object, and when (a shared tick) it began and ended."""

    verb: str
    name: str
    began: int
    ended: int | None = None


@dataclass
class Fault:
    """What the next matching call does instead of (or before) its work."""

    status: int | None = None  # raise ApiError with this HTTP status
    reason: str = ""
    message: str = "injected"
    timeout: bool = False  # raise asyncio.TimeoutError, as aiohttp's total timeout does
    delay: float = 0.0  # sleep first (a slow API server), then do the work


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies it to the status subresource."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


class FakeKube:
    """Pods and one batch status, in memory."""

    def __init__(self) -> None:
        self.pods: dict[str, JSON] = {}
        self.status: JSON = {}
        self.batch_deleted = False
        self.workloads: dict[str, JSON] = {}  # Kueue Workloads by name
        self.calls: list[Call] = []
        self._faults: dict[str, list[Fault]] = {}
        self._tick = itertools.count()

    # ------------------------------------------------------------------------ fault injection
    def inject(self, verb: str, fault: Fault, times: int = 1) -> None:
        """The next `times` calls of `verb` (a method name, e.g. "create_pod") get `fault`."""
        self._faults.setdefault(verb, []).extend([fault] * times)

    def refuse(self, verb: str, status: int, times: int = 1, message: str = "injected") -> None:
        self.inject(verb, Fault(status=status, message=message), times)

    async def _call(self, verb: str, name: str) -> Call:
        call = Call(verb, name, next(self._tick))
        self.calls.append(call)
        queue = self._faults.get(verb)
        fault = queue.pop(0) if queue else None
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.timeout:
                call.ended = next(self._tick)
                raise TimeoutError(f"{verb} {name}: injected timeout")
            if fault.status is not None:
                call.ended = next(self._tick)
                body = json.dumps({"reason": fault.reason, "message": fault.message})
                raise ApiError(fault.status, verb, name, body)
        return call

    def _done(self, call: Call) -> None:
        call.ended = next(self._tick)

    # ------------------------------------------------------------------------ the KubeApi calls
    async def create_pod(self, namespace: str, pod: JSON) -> bool:
        name = pod["metadata"]["name"]
        call = await self._call("create_pod", name)
        try:
            if name in self.pods:
                return False
            created = copy.deepcopy(pod)
            created["metadata"]["namespace"] = namespace
            created["metadata"]["creationTimestamp"] = _now()
            created["status"] = {"phase": "Pending"}
            self.pods[name] = created
            return True
        finally:
            self._done(call)

    async def remove_pod_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        call = await self._call("remove_pod_finalizer", name)
        try:
            pod = self.pods.get(name)
            if pod is None:
                return False
            meta = pod["metadata"]
            meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != finalizer]
            self._collect(name)
            return True
        finally:
            self._done(call)

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> bool:
        call = await self._call("annotate_pod", name)
        try:
            pod = self.pods.get(name)
            if pod is None:
                return False
            pod["metadata"].setdefault("annotations", {}).update(annotations)
            return True
        finally:
            self._done(call)

    async def delete_pod(
        self, namespace: str, name: str, *, grace_seconds: int | None = None
    ) -> bool:
        call = await self._call("delete_pod", name)
        try:
            pod = self.pods.get(name)
            if pod is None:
                return False
            pod["metadata"].setdefault("deletionTimestamp", _now())
            self._collect(name)
            return True
        finally:
            self._done(call)

    async def list_pods(self, namespace: str, label_selector: str) -> list[JSON]:
        call = await self._call("list_pods", label_selector)
        key, _, value = label_selector.partition("=")
        try:
            return [
                copy.deepcopy(p)
                for p in self.pods.values()
                if p["metadata"].get("labels", {}).get(key) == value
            ]
        finally:
            self._done(call)

    async def patch_batch_status(self, namespace: str, name: str, status: JSON) -> None:
        call = await self._call("patch_batch_status", name)
        self.status = merge_patch(self.status, status)
        self._done(call)

    async def delete_batch(self, namespace: str, name: str) -> bool:
        call = await self._call("delete_batch", name)
        self.batch_deleted = True
        self._done(call)
        return True

    async def get_workload(self, namespace: str, name: str) -> JSON | None:
        call = await self._call("get_workload", name)
        self._done(call)
        found = self.workloads.get(name)
        return None if found is None else copy.deepcopy(found)

    async def apply_workload_condition(self, namespace: str, name: str, condition: JSON) -> bool:
        call = await self._call("apply_workload_condition", name)
        self._done(call)
        workload = self.workloads.get(name)
        if workload is None:
            return False
        conditions = workload.setdefault("status", {}).setdefault("conditions", [])
        kept = [c for c in conditions if c["type"] != condition["type"]]
        workload["status"]["conditions"] = [*kept, copy.deepcopy(condition)]
        return True

    def admit_workload(self, name: str, pods: int) -> None:
        """Kueue admits Workload `name` for `pods` pods (created if absent)."""
        workload = self.workloads.setdefault(name, {"metadata": {"name": name}})
        workload["status"] = {
            "conditions": [{"type": "Admitted", "status": "True"}],
            "admission": {"podSetAssignments": [{"name": "main", "count": pods}]},
        }

    # ------------------------------------------------------------------------ the world moves on
    def _collect(self, name: str) -> None:
        """A deleting pod without finalizers is gone, as garbage collection would have it."""
        meta = self.pods[name]["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self.pods[name]

    def schedule(self, name: str, node: str = "gpu-node-1") -> None:
        pod = self.pods[name]
        pod["spec"]["nodeName"] = node
        pod["status"] = {"phase": "Running", "startTime": _now()}

    def finish(self, name: str, *, exit_code: int = 0, message: str = "") -> None:
        """The task container of pod `name` exits (Succeeded for 0, Failed otherwise), with
        `message` as its termination message."""
        pod = self.pods[name]
        pod["spec"].setdefault("nodeName", "gpu-node-1")
        container = pod["spec"]["containers"][0]["name"]
        pod["status"] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "startTime": _now(),
            "containerStatuses": [
                {
                    "name": container,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "message": message,
                            "startedAt": _now(),
                            "finishedAt": _now(),
                        }
                    },
                }
            ],
        }

    def wait_on(self, name: str, reason: str, message: str = "", *, age: float = 0.0) -> None:
        """Pod `name` is bound but its task container waits on `reason` (e.g. ErrImagePull),
        created `age` seconds ago."""
        pod = self.pods[name]
        pod["spec"].setdefault("nodeName", "gpu-node-1")
        pod["metadata"]["creationTimestamp"] = _ago(age)
        container = pod["spec"]["containers"][0]["name"]
        waiting = {"reason": reason, "message": message}
        pod["status"] = {
            "phase": "Pending",
            "containerStatuses": [{"name": container, "state": {"waiting": waiting}}],
        }

    def unschedulable(self, name: str, message: str, *, age: float = 0.0) -> None:
        """The scheduler cannot place pod `name` (PodScheduled=False/Unschedulable)."""
        pod = self.pods[name]
        pod["metadata"]["creationTimestamp"] = _ago(age)
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
        }
        pod["status"] = {"phase": "Pending", "conditions": [condition]}

    def tracked(self, name: str) -> bool:
        pod = self.pods.get(name)
        return pod is not None and FINALIZER_TRACKING in pod["metadata"].get("finalizers", [])

    def views(self) -> list[PodView]:
        return [v for v in (pod_view(p) for p in self.pods.values()) if v is not None]

    def warm_views(self) -> list[WarmPodView]:
        return [v for v in (warm_pod_view(p) for p in self.pods.values()) if v is not None]

    # ------------------------------------------------------------------------ reading the log
    def called(self, verb: str) -> list[Call]:
        return [c for c in self.calls if c.verb == verb]


@dataclass
class FakeBatch:
    """One batch as the reconcile sees it (`BatchContext`): a body, the fake's pods as the pod
    index (always current, unless a test hides some), node labels, and the Events posted."""

    kube: FakeKube
    spec: JSON
    name: str = "clips"
    namespace: str = "work"
    uid: str = "0b7f-uid"
    generation: int = 1
    deleting: bool = False
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    capacity: list[NodeCapacity] = field(default_factory=list)  # the node index, for fit checks
    hidden: set[str] = field(default_factory=set)  # pods the index has not seen yet
    events: list[Event] = field(default_factory=list)

    @property
    def body(self) -> Mapping[str, Any]:
        metadata: JSON = {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "generation": self.generation,
        }
        if self.deleting:
            metadata["deletionTimestamp"] = _now()
        return {"metadata": metadata, "spec": self.spec, "status": self.kube.status}

    def pods(self) -> Iterable[PodView]:
        return [v for v in self.kube.views() if v.name not in self.hidden]

    def warm_pods(self) -> Iterable[WarmPodView]:
        return [v for v in self.kube.warm_views() if v.name not in self.hidden]

    def node_labels(self, node: str) -> Mapping[str, str]:
        return self.nodes.get(node, {})

    def cluster_nodes(self) -> list[NodeCapacity]:
        return list(self.capacity)

    def post(self, event: Event) -> None:
        self.events.append(event)

    def stopped(self) -> bool:
        return False


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_one_pass(reconciler: Reconciler, runtime: BatchRuntime, batch: FakeBatch) -> Plan | None:
    """One reconcile pass with its timer cancelled: the tests drive passes one by one."""

    async def one_pass() -> Plan | None:
        try:
            return await reconciler.pass_once(runtime, batch)
        finally:
            runtime.wakeup.cancel()

    return asyncio.run(one_pass())
