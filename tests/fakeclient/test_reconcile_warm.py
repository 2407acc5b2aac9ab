"""A Warm batch on a cluster: until the operator runs warm workers, the reconcile refuses it
(Failed, InvalidSpec, a Warning Event saying so) and creates nothing, rather than silently run
it one pod per task."""

from __future__ import annotations

import asyncio

import pytest

from gpubatch.api.status import ConditionType, GPUBatchStatus, Reason
from gpubatch.controller.metrics import Metrics
from gpubatch.controller.reconcile import BatchRuntime, Reconciler
from gpubatch.core.planner import WARM_NOT_ON_CLUSTER, Limits
from gpubatch.core.podspec import BatchRef
from support.builders import a_raw_spec
from support.fakekube import FakeBatch, FakeKube

pytestmark = pytest.mark.fakeclient

WARM_CONTAINER = {"name": "task", "image": "registry.example.com/task:1", "command": ["serve"]}


def test_a_warm_batch_is_failed_with_a_warning_and_no_pod_is_created():
    kube = FakeKube()
    raw = a_raw_spec(worker={"mode": "Warm"}, template={"spec": {"containers": [WARM_CONTAINER]}})
    batch = FakeBatch(kube, raw)
    reconciler = Reconciler(kube, Metrics(), Limits(max_pending=100, max_creates_per_pass=100))
    runtime = BatchRuntime(ref=BatchRef(batch.name, batch.namespace, "uid"))

    async def one_pass() -> None:
        try:
            await reconciler.pass_once(runtime, batch)
        finally:
            runtime.wakeup.cancel()

    asyncio.run(one_pass())

    assert kube.called("create_pod") == []
    status = GPUBatchStatus.model_validate(kube.status)
    failed = next(c for c in status.conditions if c.type == ConditionType.FAILED)
    assert (failed.status, failed.reason) == ("True", Reason.INVALID_SPEC)
    assert failed.message == WARM_NOT_ON_CLUSTER
    assert [(e.type, e.reason) for e in batch.events] == [("Warning", "InvalidSpec")]
    assert "`gpubatch run` only" in batch.events[0].message
