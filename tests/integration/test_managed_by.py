"""spec.managedBy on the real control plane: a batch managed by another controller (MultiKueue's
manager) gets nothing from the operator, not a pod, a status, an event or a finalizer; the same
batch managed by gpubatch, or by nobody, runs."""

from __future__ import annotations

import json

import pytest

from gpubatch.api.names import MANAGED_BY_GPUBATCH
from support.batches import Batches, PodMonitor, batch
from support.operator_process import OperatorProcess
from testbed import Testbed

pytestmark = pytest.mark.integration

FOREIGN = "kueue.x-k8s.io/multikueue"


@pytest.fixture
def batches(testbed: Testbed, namespace: str, running_operator: OperatorProcess) -> Batches:
    return Batches(testbed, namespace)


def _events_about(batches: Batches, name: str) -> list[dict[str, object]]:
    out = batches.testbed.kubectl(
        "get",
        "events",
        "-n",
        batches.namespace,
        "-o",
        "json",
        "--field-selector",
        f"involvedObject.name={name}",
    ).stdout
    return list(json.loads(out)["items"])


def test_a_batch_managed_elsewhere_gets_no_pod_status_event_or_finalizer(batches: Batches):
    tasks = {"range": {"stop": 3}}
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(batch("mirrored", tasks=tasks, managedBy=FOREIGN))
        # The barrier: batches created after the foreign one, in the same namespace, run to the
        # end. The operator's watch delivers the foreign batch first, so by then it has decided.
        batches.create(batch("ours", tasks=tasks, managedBy=MANAGED_BY_GPUBATCH))
        batches.create(batch("unset", tasks=tasks))
        batches.wait_condition("ours", "Complete", timeout=90)
        batches.wait_condition("unset", "Complete", timeout=90)
    mirrored = batches.get("mirrored")
    assert "status" not in mirrored
    assert mirrored["metadata"].get("finalizers") is None
    # Not even kopf's bookkeeping annotations (diff base, progress) were written.
    assert not [k for k in mirrored["metadata"].get("annotations") or {} if "gpubatch.io" in k]
    assert mirrored["metadata"]["generation"] == 1
    assert _events_about(batches, "mirrored") == []
    assert len(monitor.created) == 6  # three per batch that runs, none for the mirrored one
    assert batches.get("ours")["metadata"].get("finalizers") == batches.get("unset")[
        "metadata"
    ].get("finalizers")
    # Deleting it needs nobody: no finalizer holds it.
    batches.delete("mirrored")
    assert batches.gone("mirrored")
