"""The CRD on a real API server: it installs, every example is accepted, bad specs are refused
with the CEL/schema message that says what to change, and the status round-trips unpruned."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpubatch.api import spec as S
from gpubatch.api.spec import GPUBatch, PodCleanup, Retry, Worker
from gpubatch.api.status import (
    Condition,
    GPUBatchStatus,
    RetryState,
    TaskCounts,
    TaskFailure,
)
from gpubatch.core.gpustats import record_success
from support.crd import REPO, install_crd
from testbed import Testbed

pytestmark = pytest.mark.integration

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def bed(testbed: Testbed) -> Testbed:
    """The test bed with this checkout's CRD installed (or updated) and served.

    Self-contained on purpose (not the operator tests' `crd` fixture): these tests are about
    the CRD file itself and must re-apply it even when a session fixture installed it earlier.
    """
    install_crd(testbed, force_conflicts=True)
    return testbed


def apply(bed: Testbed, namespace: str, obj: dict[str, Any], *, check: bool = True):
    return bed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj), check=check)


def get(bed: Testbed, namespace: str, name: str) -> dict[str, Any]:
    out = bed.kubectl("get", "gpubatch", name, "-n", namespace, "-o", "json").stdout
    return json.loads(out)


CONTAINER: dict[str, Any] = {
    "name": "t",
    "image": "registry.example.com/t:1",
    "command": ["python", "run.py"],
}


def batch(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tasks": {"range": {"param": "shot", "stop": 10}},
        "outputs": ["/out/{shot}.npy"],
        "template": {"spec": {"containers": [CONTAINER]}},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "gpubatch.io/v1alpha1",
        "kind": "GPUBatch",
        "metadata": {"name": f"b-{uuid.uuid4().hex[:8]}"},
        "spec": spec,
    }


# ---------------------------------------------------------------------------- acceptance
def test_crd_is_established_with_its_short_name(bed: Testbed):
    resources = bed.kubectl("api-resources", "--api-group=gpubatch.io", "-o", "wide").stdout
    assert "gpubatches" in resources
    assert "gpub" in resources


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted_and_reads_back_as_the_model(
    bed: Testbed, namespace: str, path: Path
):
    bed.kubectl("apply", "-n", namespace, "-f", str(path))
    written = yaml.safe_load(path.read_text())
    stored = get(bed, namespace, written["metadata"]["name"])
    model = GPUBatch.model_validate(stored)
    # What the user wrote survives unchanged (nothing pruned), and the server's defaults are
    # the model's defaults.
    assert model.spec == GPUBatch.model_validate(written).spec
    assert stored["spec"]["worker"] == {
        **Worker().model_dump(mode="json", exclude_none=True),
        **written["spec"].get("worker", {}),
    }


def test_server_defaults_are_the_model_defaults(bed: Testbed, namespace: str):
    obj = batch()
    apply(bed, namespace, obj)
    stored = get(bed, namespace, obj["metadata"]["name"])["spec"]
    assert stored["retry"] == Retry().model_dump(mode="json")
    assert stored["podCleanup"] == PodCleanup().model_dump(mode="json")
    assert stored["order"] == {"by": "index"}
    assert stored["gpusPerTask"] == 1
    assert stored["gpuResource"] == "nvidia.com/gpu"
    assert stored["gpuModelLabel"] == "nvidia.com/gpu.product"
    assert stored["suspend"] is False
    assert stored["tasks"]["range"] == {"param": "shot", "start": 0, "stop": 10, "step": 1}


# ------------------------------------------------------------------------------- refusals
def containers(**extra: Any) -> dict[str, Any]:
    return {"spec": {"containers": [{**CONTAINER, **extra}]}}


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("two sources", {"tasks": {"range": {"stop": 3}, "items": [{"a": 1}]}}, S.MSG_ONE_SOURCE),
    ("no source", {"tasks": {}}, S.MSG_ONE_SOURCE),
    ("zero step", {"tasks": {"range": {"stop": 3, "step": 0}}}, S.MSG_STEP_ZERO),
    ("empty range", {"tasks": {"range": {"start": 4, "stop": 4}}}, S.MSG_RANGE_EMPTY),
    ("reserved param", {"tasks": {"range": {"param": "outputs", "stop": 3}}}, S.MSG_PARAM_NAME),
    ("bad axis name", {"tasks": {"matrix": {"my-axis": {"values": [1]}}}}, S.MSG_PARAM_NAME),
    (
        "axis with two kinds",
        {"tasks": {"matrix": {"a": {"values": [1], "files": "/x/*"}}}},
        S.MSG_ONE_AXIS_KIND,
    ),
    ("items keys differ", {"tasks": {"items": [{"a": 1}, {"b": 1}]}}, S.MSG_ITEMS_SAME_KEYS),
    ("bad item key", {"tasks": {"items": [{"2x": 1}]}}, S.MSG_PARAM_NAME),
    (
        "float inline value",
        {"tasks": {"matrix": {"lr": {"values": [0.5]}}}, "outputs": ["/o/{lr}"]},
        "must be of type integer,string",
    ),
    ("manifest format", {"tasks": {"manifest": {"path": "/m/tasks.txt"}}}, S.MSG_MANIFEST_FORMAT),
    ("longest first without cost", {"order": {"by": "longestFirst"}}, S.MSG_ORDER_COST),
    ("backoff", {"retry": {"backoffSeconds": 60, "maxBackoffSeconds": 5}}, S.MSG_BACKOFF),
    ("shell without wrap", {"worker": {"wrap": False, "shell": True}}, S.MSG_SHELL_NEEDS_WRAP),
    (
        "atomic without wrap",
        {"worker": {"wrap": False, "atomicOutputs": True}},
        S.MSG_ATOMIC_NEEDS_WRAP,
    ),
    ("no containers", {"template": {"spec": {"containers": []}}}, S.MSG_CONTAINERS),
    (
        "cuda env",
        {"template": containers(env=[{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}])},
        S.MSG_GPU_ENV,
    ),
    (
        "nvidia env",
        {"template": containers(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])},
        S.MSG_GPU_ENV,
    ),
    (
        "restart policy",
        {"template": {"spec": {**containers()["spec"], "restartPolicy": "OnFailure"}}},
        S.MSG_RESTART_POLICY,
    ),
    ("unknown task container", {"taskContainer": "main"}, S.MSG_TASK_CONTAINER),
    (
        "wrapped task container without command",
        {"template": {"spec": {"containers": [{"name": "t", "image": "i:1"}]}}},
        S.MSG_WRAP_NEEDS_COMMAND,
    ),
    (
        "named wrapped task container without command",
        {
            "taskContainer": "main",
            "template": {"spec": {"containers": [CONTAINER, {"name": "main", "image": "i:1"}]}},
        },
        S.MSG_WRAP_NEEDS_COMMAND,
    ),
    ("range too large", {"tasks": {"range": {"stop": S.MAX_TASKS + 1}}}, S.MSG_RANGE_TOO_LARGE),
    (
        "matrix too large",
        {
            "tasks": {
                "matrix": {
                    "a": {"range": {"stop": 5000}},
                    "b": {"range": {"start": 5000, "stop": 0, "step": -1}},
                    "c": {"values": ["p", "q"]},
                    "d": {"files": "/in/*.png"},
                }
            },
            "outputs": ["/o/{a}-{b}-{c}-{d.stem}"],
        },
        S.MSG_MATRIX_TOO_LARGE,
    ),
    ("dotdot output", {"outputs": ["/out/../etc/{shot}"]}, S.MSG_OUTPUT_DOTDOT),
    ("relative output", {"outputs": ["out/{shot}.npy"]}, S.MSG_OUTPUT_ABSOLUTE),
    ("relative root", {"outputRoot": "data/out"}, S.MSG_OUTPUT_ROOT),
    ("managedBy without a domain", {"managedBy": "multikueue"}, S.MSG_MANAGED_BY),
    ("managedBy too long", {"managedBy": "kueue.x-k8s.io/" + "m" * 60}, "may not be more than 63"),
    ("zero parallelism", {"parallelism": 0}, "should be greater than or equal to 1"),
    ("unknown order", {"order": {"by": "random"}}, 'supported values: "index", "longestFirst"'),
    (
        "too many items",
        {"tasks": {"items": [{"a": i} for i in range(S.MAX_INLINE_ITEMS + 1)]}},
        "must have at most 10000 items",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_spec_is_refused_by_the_api_server_with_a_message_saying_what_to_change(
    bed: Testbed, namespace: str, overrides: dict[str, Any], message: str
):
    result = apply(bed, namespace, batch(**overrides), check=False)
    assert result.returncode != 0, f"accepted: {overrides}"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        {"tasks": {"range": {"stop": S.MAX_TASKS}}},
        {
            "tasks": {"matrix": {"a": {"range": {"stop": 3000}}, "b": {"range": {"stop": 3000}}}},
            "outputs": ["/o/{a}-{b}"],
        },
        {
            "worker": {"wrap": False},
            "template": {"spec": {"containers": [{"name": "t", "image": "i:1"}]}},
        },
    ],
    ids=["range-at-the-limit", "matrix-of-9-million", "unwrapped-without-command"],
)
def test_specs_at_the_new_limits_are_accepted(
    bed: Testbed, namespace: str, overrides: dict[str, Any]
):
    result = apply(bed, namespace, batch(**overrides), check=False)
    assert result.returncode == 0, result.stderr


def test_a_refused_spec_reports_every_problem_at_once(bed: Testbed, namespace: str):
    obj = batch(tasks={"range": {"stop": 3, "step": 0}}, order={"by": "longestFirst"})
    stderr = apply(bed, namespace, obj, check=False).stderr
    assert S.MSG_STEP_ZERO in stderr
    assert S.MSG_ORDER_COST in stderr


# --------------------------------------------------------------------------------- status
def test_status_written_by_the_model_reads_back_unpruned(
    bed: Testbed, namespace: str, no_operator: None
):
    obj = batch()
    name = obj["metadata"]["name"]
    apply(bed, namespace, obj)
    now = datetime.now(UTC)
    status = GPUBatchStatus(
        observed_generation=1,
        counts=TaskCounts(total=10, pending=2, running=2, succeeded=3, failed=1, skipped=2),
        progress="6/10",
        succeeded_indexes="0-2",
        failed_indexes="5",
        skipped_indexes="3-4",
        recent_failures=[
            TaskFailure(
                index=5,
                attempt=1,
                exit_code=1,
                reason="Error",
                message="boom",
                node="gpu-0",
                gpu_model="NVIDIA-A100-SXM4-80GB",
                time=now,
            )
        ],
        retries=[RetryState(index=7, attempts=1, failures=1, not_before=now)],
        tasks_fingerprint="0" * 64,
        start_time=now,
        suspended_seconds=12.5,
        suspended_since=now,
        conditions=[
            Condition(
                type="Progressing",
                status="True",
                reason="Dispatching",
                message="6/10 tasks finished",
                last_transition_time=now,
                observed_generation=1,
            )
        ],
    )
    record_success(status, "NVIDIA-A100-SXM4-80GB", 42.5)
    patch = {"status": status.model_dump(mode="json", exclude_none=True)}
    bed.kubectl(
        "patch",
        "gpubatch",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )
    stored = get(bed, namespace, name)
    assert GPUBatchStatus.model_validate(stored["status"]) == status

    table = bed.kubectl("get", "gpub", name, "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "TOTAL",
        "SUCCEEDED",
        "FAILED",
        "SKIPPED",
        "RUNNING",
        "PROGRESS",
        "STATE",
        "AGE",
    ]
    assert row.split()[1:8] == ["10", "3", "1", "2", "2", "6/10", "Progressing"]


def test_kubectl_explain_teaches_the_api(bed: Testbed):
    out = bed.kubectl("explain", "gpubatch.spec.tasks").stdout
    assert "exactly one of items, range, matrix, files or manifest" in out
    out = bed.kubectl("explain", "gpubatch.spec.outputs").stdout
    assert "skipped" in out


def test_examples_are_distinct_objects_that_coexist(bed: Testbed, namespace: str):
    for path in EXAMPLES:
        bed.kubectl("apply", "-n", namespace, "-f", str(path))
    listed = json.loads(bed.kubectl("get", "gpub", "-n", namespace, "-o", "json").stdout)
    names = sorted(item["metadata"]["name"] for item in listed["items"])
    assert names == sorted(yaml.safe_load(p.read_text())["metadata"]["name"] for p in EXAMPLES)


def test_spec_edit_is_validated_like_a_create(bed: Testbed, namespace: str):
    obj = batch()
    apply(bed, namespace, obj)
    edited = copy.deepcopy(obj)
    edited["spec"]["retry"] = {"backoffSeconds": 100, "maxBackoffSeconds": 1}
    result = apply(bed, namespace, edited, check=False)
    assert result.returncode != 0
    assert S.MSG_BACKOFF in result.stderr


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("kueue.x-k8s.io/multikueue", "gpubatch.io/operator"),
        ("kueue.x-k8s.io/multikueue", None),
        (None, "kueue.x-k8s.io/multikueue"),
    ],
    ids=["changed", "removed", "added"],
)
def test_managed_by_cannot_change_after_creation(
    bed: Testbed, namespace: str, before: str | None, after: str | None
):
    obj = batch(**({"managedBy": before} if before else {}))
    apply(bed, namespace, obj)
    # A merge patch (null removes the field): no resourceVersion to race an operator's writes.
    patch = json.dumps({"spec": {"managedBy": after}})
    result = bed.kubectl(
        "patch",
        "gpubatch",
        obj["metadata"]["name"],
        "-n",
        namespace,
        "--type=merge",
        "-p",
        patch,
        check=False,
    )
    assert result.returncode != 0, f"{before} -> {after} accepted"
    assert S.MSG_MANAGED_BY_IMMUTABLE in result.stderr, result.stderr
