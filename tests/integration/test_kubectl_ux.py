"""What people and GitOps tools see of a GPUBatch through kubectl and the status, on real objects.

One namespace holds a batch in each state the operator can put one in (running, complete,
complete with a failed task, failed, invalid, suspended); every test reads those same objects:
`kubectl get` columns, `kubectl describe` events, `kubectl wait`, `kubectl explain`, the status
conventions kstatus reads, and the Argo CD health check of docs/gitops.md run in Lua 5.1.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

from integration.user_path import doc_block, parse_table
from support.batches import Batches, batch
from support.operator_process import OperatorProcess
from support.waiting import wait_for
from testbed import Testbed

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GITOPS_DOC = REPO / "docs" / "gitops.md"
CRD = REPO / "crds" / "gpubatches.gpubatch.io.yaml"

# name -> (spec, the condition it must reach)
STATES: dict[str, tuple[dict[str, Any], str]] = {
    "running": (
        batch("running", tasks={"range": {"start": 0, "stop": 4}}, duration="120s", parallelism=1),
        "Progressing",
    ),
    "complete": (batch("complete", tasks={"range": {"start": 0, "stop": 2}}), "Complete"),
    "one-failed": (
        batch(
            "one-failed",
            tasks={"range": {"start": 0, "stop": 3}},
            annotations={"sim.gpubatch.io/fail-indexes": "1"},
            retry={"limit": 0},
        ),
        "Failed",  # every task finished and one failed: Failed/TasksFailed, never Complete
    ),
    "failed": (
        batch(
            "failed",
            tasks={"range": {"start": 0, "stop": 2}},
            annotations={"sim.gpubatch.io/fail-indexes": "0,1", "sim.gpubatch.io/fail-code": "3"},
            retry={"limit": 0},
            maxFailedTasks=0,
            parallelism=1,  # the first failure fails the batch before the second task starts
        ),
        "Failed",
    ),
    "invalid": (
        batch("invalid", tasks={"files": {"glob": "/nonexistent-gpubatch-input/*.jpg"}}),
        "Failed",
    ),
    "suspended": (
        batch("suspended", tasks={"range": {"start": 0, "stop": 3}}, suspend=True),
        "Suspended",
    ),
    "stuck": (
        batch(
            "stuck",
            tasks={"range": {"start": 0, "stop": 3}},
            annotations={"sim.gpubatch.io/waiting-reason": "ImagePullBackOff"},
            stuck={"giveUpSeconds": 3600},  # stays stuck (not Failed) while the module runs
        ),
        "TasksStuck",
    ),
}


class Objects:
    """The namespace and its batches, each in its state."""

    def __init__(self, testbed: Testbed, namespace: str) -> None:
        self.testbed = testbed
        self.namespace = namespace
        self.batches = Batches(testbed, namespace)

    def kubectl(self, *args: str, check: bool = True) -> Any:
        return self.testbed.kubectl(*args, "-n", self.namespace, check=check)

    def get(self, name: str) -> dict[str, Any]:
        return self.batches.get(name)


@pytest.fixture(scope="module")
def objects(testbed: Testbed, operator: OperatorProcess) -> Iterator[Objects]:
    if not operator.alive():
        operator.start()
    namespace = testbed.create_namespace(f"kubectl-ux-{uuid.uuid4().hex[:6]}")
    objs = Objects(testbed, namespace)
    for body, _ in STATES.values():
        objs.batches.create(copy.deepcopy(body))
    for name, (_, condition) in STATES.items():
        objs.batches.wait_condition(name, condition, timeout=120)
    wait_for(
        lambda: objs.batches.status("running").get("counts", {}).get("running") == 1,
        timeout=60,
        what="one task of `running` running",
    )
    yield objs
    testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# ----------------------------------------------------------------------------- kubectl get
def test_get_gpub_shows_progress_columns(objects: Objects):
    lines = objects.kubectl("get", "gpub").stdout.splitlines()
    assert lines[0].split() == [
        "NAME", "TOTAL", "SUCCEEDED", "FAILED", "SKIPPED", "RUNNING", "PROGRESS", "STATE", "AGE",
    ]  # fmt: skip
    rows = {row["NAME"]: row for row in parse_table(lines)}
    columns = ("TOTAL", "SUCCEEDED", "FAILED", "SKIPPED", "RUNNING", "PROGRESS", "STATE")
    seen = {name: tuple(row[c] for c in columns) for name, row in rows.items()}
    assert seen == {
        "running": ("4", "0", "0", "0", "1", "0/4", "Progressing"),
        "complete": ("2", "2", "0", "0", "0", "2/2", "Complete"),
        "one-failed": ("3", "2", "1", "0", "0", "3/3", "Failed"),
        "failed": ("2", "0", "1", "0", "0", "1/2", "Failed"),
        "invalid": ("0", "0", "0", "0", "0", "0/0", "Failed"),
        "suspended": ("3", "0", "0", "0", "0", "0/3", "Suspended"),
        # kubectl shows the first True condition; TasksStuck is in `describe` and the status.
        "stuck": ("3", "0", "0", "0", "0", "0/3", "Progressing"),
    }


def test_get_gpub_wide_adds_pending(objects: Objects):
    lines = objects.kubectl("get", "gpub", "running", "-o", "wide").stdout.splitlines()
    [row] = parse_table(lines)
    assert row["PENDING"] == "3" and row["RUNNING"] == "1"


def test_short_name_and_plural_and_kind_all_work(objects: Objects):
    for resource in ("gpub", "gpubatch", "gpubatches", "gpubatches.gpubatch.io"):
        names = objects.kubectl("get", resource, "-o", "name").stdout.split()
        assert "gpubatch.gpubatch.io/complete" in names


# ----------------------------------------------------------------------------- describe
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("complete", [("Normal", "Started"), ("Normal", "Completed")]),
        ("one-failed", [("Warning", "TaskFailed"), ("Warning", "TasksFailed")]),
        ("failed", [("Warning", "TaskFailed"), ("Warning", "TooManyFailedTasks")]),
        ("invalid", [("Warning", "InvalidSpec")]),
        ("suspended", [("Normal", "Suspended")]),
    ],
)
def test_describe_shows_the_batch_events(
    objects: Objects, name: str, expected: list[tuple[str, str]]
):
    def events() -> list[tuple[str, str]] | None:
        described = objects.kubectl("describe", "gpubatch", name).stdout
        section = described.split("\nEvents:", 1)[1]
        found = re.findall(r"^\s+(Normal|Warning)\s+(\w+)\s", section, re.M)
        return found if all(e in found for e in expected) else None

    wait_for(events, timeout=20, what=f"events {expected} in `kubectl describe gpubatch {name}`")


def test_describe_shows_why_the_failed_tasks_failed(objects: Objects):
    described = objects.kubectl("describe", "gpubatch", "failed").stdout
    assert "Recent Failures:" in described
    assert "Exit Code:" in described and "3" in described


# ----------------------------------------------------------------------------- wait
def test_kubectl_wait_for_complete_and_failed(objects: Objects):
    done = objects.kubectl("wait", "--for=condition=Complete", "gpubatch/complete", "--timeout=10s")
    assert done.stdout.strip() == "gpubatch.gpubatch.io/complete condition met"
    done = objects.kubectl("wait", "--for=condition=Failed", "gpubatch/failed", "--timeout=10s")
    assert "condition met" in done.stdout
    progress = objects.kubectl(
        "wait", "--for=jsonpath={.status.progress}=2/2", "gpubatch/complete", "--timeout=10s"
    )
    assert "condition met" in progress.stdout
    waiting = objects.kubectl(
        "wait", "--for=condition=Complete", "gpubatch/running", "--timeout=1s", check=False
    )
    assert waiting.returncode != 0 and "timed out" in waiting.stderr


# ----------------------------------------------------------------------------- explain
def _crd_description(path: str) -> str:
    node = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path.split("."):
        node = node["properties"][part]
        if node.get("type") == "array":
            node = node["items"]
    return str(node["description"])


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("spec.tasks", ["files", "items", "manifest", "matrix", "range"]),
        ("spec.tasks.range", ["param", "start", "step", "stop"]),
        ("spec.worker", ["atomicOutputs", "requireGPU", "shell", "wrap"]),
        ("spec.outputs", []),
        ("status.counts", ["failed", "pending", "running", "skipped", "succeeded", "total"]),
        ("status.gpuModels", ["meanSeconds", "model", "p95Seconds", "succeeded"]),
    ],
)
def test_kubectl_explain_documents_the_fields(
    testbed: Testbed, crd: Path, path: str, fields: list[str]
):
    out = testbed.kubectl("explain", f"gpubatch.{path}").stdout
    flat = " ".join(out.split())
    assert " ".join(_crd_description(path).split()) in flat
    listed = re.findall(r"^  (\w+)\s+<", out, re.M)
    assert set(fields) <= set(listed), listed


# ----------------------------------------------------------------------------- status conventions
REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")  # metav1.Condition's pattern


@pytest.mark.parametrize("name", list(STATES))
def test_status_follows_the_conventions_kstatus_and_argo_read(objects: Objects, name: str):
    obj = objects.get(name)
    status = obj["status"]
    generation = obj["metadata"]["generation"]
    assert status["observedGeneration"] == generation
    types = [c["type"] for c in status["conditions"]]
    assert len(types) == len(set(types)), "one condition per type"
    for condition in status["conditions"]:
        assert condition["status"] in ("True", "False", "Unknown")
        assert REASON.match(condition["reason"]), condition
        assert condition["observedGeneration"] == generation
        datetime.fromisoformat(condition["lastTransitionTime"].replace("Z", "+00:00"))
    assert {"Reconciling", "Stalled"} <= set(types)


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus's generic rules for a custom resource (docs/gitops.md): Terminating, then a
    generation not yet observed, then Reconciling, then Stalled, else Current."""
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    if status.get("observedGeneration", -1) < obj["metadata"]["generation"]:
        return "InProgress"
    true = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"}
    if "Reconciling" in true:
        return "InProgress"
    if "Stalled" in true:
        return "Failed"
    return "Current"


def test_kstatus_reads_running_as_in_progress_and_failed_or_stuck_as_failed(objects: Objects):
    assert {name: kstatus(objects.get(name)) for name in STATES} == {
        "running": "InProgress",
        "complete": "Current",
        "one-failed": "Failed",
        "failed": "Failed",
        "invalid": "Failed",
        "suspended": "Current",
        "stuck": "Failed",
    }


# ----------------------------------------------------------------------------- Argo CD health
def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """Run docs/gitops.md's health check as Argo CD does: `obj` global, Lua 5.1 (gopher-lua)."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=False)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(doc_block("argocd-health", GITOPS_DOC))
    return {"status": result["status"], "message": result["message"]}


def test_argocd_health_check_on_real_status_objects(objects: Objects):
    health = {name: argocd_health(objects.get(name)) for name in STATES}
    assert {name: h["status"] for name, h in health.items()} == {
        "running": "Progressing",
        "complete": "Healthy",
        "one-failed": "Degraded",
        "failed": "Degraded",
        "invalid": "Degraded",
        "suspended": "Suspended",
        "stuck": "Degraded",
    }
    assert health["running"]["message"] == "0/4 tasks finished"
    assert health["stuck"]["message"].startswith("TasksStuck ImagePullBackOff: ")
    assert health["one-failed"]["message"].startswith(
        "TasksFailed: 2 succeeded, 1 failed, 0 skipped of 3 tasks"
    )
    assert health["failed"]["message"].startswith("TooManyFailedTasks: ")
    assert health["invalid"]["message"].startswith("InvalidSpec: ")


def test_argocd_health_waits_for_the_operator(objects: Objects):
    fresh = objects.get("complete")
    del fresh["status"]  # as created, before the operator's first status write
    assert argocd_health(fresh) == {
        "status": "Progressing",
        "message": "Waiting for the gpubatch operator",
    }
    edited = objects.get("complete")
    edited["metadata"]["generation"] += 1  # an edit the operator has not acted on yet
    assert argocd_health(edited)["status"] == "Progressing"
    assert "latest spec" in argocd_health(edited)["message"]
