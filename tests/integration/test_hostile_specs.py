"""Invalid or hostile specs on the real test bed (issue 7, chaos): each is refused by `kubectl
apply` with a message saying what to change, or Failed by the operator before any pod exists;
and no parameter value is ever run through a shell unless the spec asks for one.

The corpus and its expectations are in `integration/hostile_specs.py`. To stay fast, the
refusals share one namespace (nothing is stored), and the operator-side cases are applied
together in one namespace watched from before the first apply, then checked one by one: a pod
created for any of them, even one deleted again at once, is seen by the watch.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpubatch.api.names import GROUP, PLURAL, VERSION
from gpubatch.core.indexset import IndexSet
from integration.hostile_specs import (
    ESCAPING_ROWS,
    FAILED_CASES,
    PWNED_MARKER,
    REFUSED_CASES,
    SHELL_PAYLOADS,
    Case,
)
from support.batches import Batches, PodMonitor, batch
from support.operator_process import OperatorProcess
from testbed import Testbed

pytestmark = pytest.mark.integration

#: How long the operator has to set Failed on every operator-side case.
FAILED_TIMEOUT = 30.0
WORKER = ["gpubatch-worker", "--"]
SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash", "/usr/bin/env", "-c"}


def apply(testbed: Testbed, namespace: str, body: dict[str, Any]) -> subprocess.CompletedProcess:
    """`kubectl apply -f -` of one object, as a user would; never raises on refusal."""
    return testbed.kubectl(
        "-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(body), check=False
    )


@pytest.fixture(scope="module")
def shared_namespace(testbed: Testbed) -> Iterator[str]:
    name = f"hostile-{uuid.uuid4().hex[:6]}"
    testbed.create_namespace(name)
    yield name
    testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


# ------------------------------------------------------------------------ refused at apply
@pytest.mark.parametrize("case", REFUSED_CASES, ids=lambda c: c.id)
def test_refused_at_apply_with_a_message_saying_what_to_change(
    case: Case, testbed: Testbed, crd: Path, shared_namespace: str
):
    result = apply(testbed, shared_namespace, case.body())
    assert result.returncode != 0, f"{case.id} ({case.what}) was accepted: {result.stdout}"
    assert case.message in result.stderr, result.stderr
    batches = Batches(testbed, shared_namespace)
    assert batches.gone(case.id)
    assert batches.pods() == []


# ------------------------------------------------------------- Failed by the operator
@dataclass
class Outcome:
    """What happened to one operator-side case."""

    applied: subprocess.CompletedProcess
    status: dict[str, Any]
    pods_seen: list[str]  # task pods of this batch the watch ever saw
    pods_left: list[str]  # task pods of this batch listed at the end

    @property
    def failed(self) -> dict[str, Any] | None:
        for cond in self.status.get("conditions") or []:
            if cond["type"] == "Failed" and cond["status"] == "True":
                return cond
        return None


@dataclass
class FailedRun:
    namespace: str
    outcomes: dict[str, Outcome]
    pods_seen: list[str]  # every task pod the watch saw in the namespace
    operator_log: str


def _of(batch_name: str, pods: list[str]) -> list[str]:
    own = re.compile(rf"^{re.escape(batch_name)}-\d+-\d+$")
    return [p for p in pods if own.match(p)]


@pytest.fixture(scope="module")
def failed_run(
    testbed: Testbed,
    crd: Path,
    operator: OperatorProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FailedRun]:
    """Every operator-side case applied in one namespace, each left until the operator has
    failed it for its current spec (Failed, observedGeneration = generation) or the timeout;
    the pod watch runs throughout.

    No grace period: every pass finishes its creates before the next pass writes, so any pod
    a pass created exists before the status that failed the batch, and the watch has it."""
    if not operator.alive():
        operator.start()
    namespace = f"hostile-failed-{uuid.uuid4().hex[:6]}"
    testbed.create_namespace(namespace)
    files = tmp_path_factory.mktemp("hostile")  # the operator runs here and reads these
    batches = Batches(testbed, namespace)
    with PodMonitor(testbed, namespace) as monitor:
        applied = {case.id: apply(testbed, namespace, case.body(files)) for case in FAILED_CASES}
        waiting = {name for name, result in applied.items() if result.returncode == 0}
        statuses: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + FAILED_TIMEOUT
        while True:
            listed = batches.api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
            for item in listed["items"]:
                status = item.get("status") or {}
                statuses[item["metadata"]["name"]] = status
                observed = status.get("observedGeneration") == item["metadata"]["generation"]
                if observed and any(
                    c["type"] == "Failed" and c["status"] == "True"
                    for c in status.get("conditions") or []
                ):
                    waiting.discard(item["metadata"]["name"])
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        left = [p.metadata.name for p in batches.pods()]
    seen = sorted(monitor.created)
    yield FailedRun(
        namespace=namespace,
        outcomes={
            case.id: Outcome(
                applied=applied[case.id],
                status=statuses.get(case.id, {}),
                pods_seen=_of(case.id, seen),
                pods_left=_of(case.id, left),
            )
            for case in FAILED_CASES
        },
        pods_seen=seen,
        operator_log=operator.log_tail(30),
    )
    testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.parametrize("case", FAILED_CASES, ids=lambda c: c.id)
def test_failed_by_the_operator_before_any_pod(case: Case, failed_run: FailedRun):
    outcome = failed_run.outcomes[case.id]
    assert outcome.applied.returncode == 0, f"refused at apply: {outcome.applied.stderr}"
    condition = outcome.failed
    assert condition is not None, (
        f"not Failed within {FAILED_TIMEOUT}s; status: {json.dumps(outcome.status)}\n"
        f"{failed_run.operator_log}"
    )
    assert condition["reason"] == case.reason, condition
    assert case.message in condition["message"], condition["message"]
    assert outcome.pods_seen == [], "task pods were created"
    assert outcome.pods_left == []
    assert "startTime" not in outcome.status  # nothing was ever dispatched


def test_no_task_pod_ever_appeared_for_any_operator_side_case(failed_run: FailedRun):
    assert failed_run.pods_seen == []


# ------------------------------------------------------------- shell metacharacters
SHELL_VARIANTS = {
    "argv": {},  # the default: wrapped by gpubatch-worker, no shell
    "no-wrap": {"worker": {"wrap": False}},  # the command as is
    "shell": {"worker": {"shell": True}},  # /bin/sh -c in the worker, values quoted
}


def _literal(value: str) -> list[str]:
    """The task's argv with `value` substituted literally: what the program must receive."""
    return ["python", "task.py", "--p", value, "--mixed", f"pre-{value}-post", value]


@pytest.mark.parametrize("variant", list(SHELL_VARIANTS))
def test_shell_metacharacters_in_parameters_reach_the_pod_as_literal_argv(
    variant: str, testbed: Testbed, namespace: str, running_operator: OperatorProcess
):
    Path(PWNED_MARKER).unlink(missing_ok=True)
    body = batch(
        "metachars",
        tasks={"items": [{"p": value} for value in SHELL_PAYLOADS]},
        command=["python", "task.py", "--p", "{p}"],
        env=[{"name": "P", "value": "{p}"}],
        podCleanup={"succeeded": "Keep"},
        **SHELL_VARIANTS[variant],
    )
    body["spec"]["template"]["spec"]["containers"][0]["args"] = ["--mixed", "pre-{p}-post", "{p}"]
    batches = Batches(testbed, namespace)
    result = apply(testbed, namespace, body)
    assert result.returncode == 0, result.stderr
    batches.wait_condition("metachars", "Complete", timeout=90)
    pods = {int(p.metadata.labels["gpubatch.io/task-index"]): p for p in batches.pods()}
    assert sorted(pods) == list(range(len(SHELL_PAYLOADS)))

    for index, value in enumerate(SHELL_PAYLOADS):
        [task] = [c for c in pods[index].spec.containers if c.name == "task"]
        literal = _literal(value)
        env = {e.name: e.value or "" for e in task.env}
        argv = [*(task.command or []), *(task.args or [])]
        assert not SHELLS & set(argv), f"a shell in the pod's command: {argv}"
        assert env["P"] == value  # env values are never quoted: no shell reads them
        if variant == "no-wrap":
            assert task.command == literal[:4]
            assert task.args == literal[4:]
            assert env["GPUBATCH_SHELL"] == "false"
        elif variant == "argv":
            assert task.command == [*WORKER, *literal]
            assert not task.args
            assert env["GPUBATCH_SHELL"] == "false"
        else:
            assert task.command[:2] == WORKER and not task.args
            line = task.command[2:]
            assert env["GPUBATCH_SHELL"] == "true"
            # Each substituted value is quoted on its own, and is one word to the shell...
            assert line[3] == shlex.quote(value)
            assert shlex.split(line[3]) == [value]
            assert shlex.split(line[5]) == [f"pre-{value}-post"]
            # ...so the line the worker hands to /bin/sh -c splits back into the literal argv.
            assert shlex.split(" ".join(line)) == literal
    assert not Path(PWNED_MARKER).exists()


# ------------------------------------------------------- one task's output escapes the root
def test_a_manifest_row_escaping_output_root_fails_that_task_alone(
    testbed: Testbed, namespace: str, running_operator: OperatorProcess, tmp_path: Path
):
    root = tmp_path / "out"
    root.mkdir()
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text("".join(json.dumps({"name": row.name}) + "\n" for row in ESCAPING_ROWS))
    body = batch(
        "escape",
        tasks={"manifest": {"path": str(manifest)}},
        outputRoot=str(root),
        outputs=["{name}.npy"],
        command=["python", "task.py", "--out", "{outputs[0]}"],
    )
    batches = Batches(testbed, namespace)
    with PodMonitor(testbed, namespace) as monitor:
        result = apply(testbed, namespace, body)
        assert result.returncode == 0, result.stderr
        failed = batches.wait_condition("escape", "Failed", timeout=60)
        assert failed["reason"] == "TasksFailed"

    bad = {i for i, row in enumerate(ESCAPING_ROWS) if row.fails}
    good = set(range(len(ESCAPING_ROWS))) - bad
    status = batches.status("escape")
    assert set(IndexSet.parse(status["failedIndexes"])) == bad
    assert set(IndexSet.parse(status["succeededIndexes"])) == good
    failures = {f["index"]: f for f in status["recentFailures"]}
    assert set(failures) == bad
    for index in bad:
        assert failures[index]["reason"] == "InvalidTask"
        assert ESCAPING_ROWS[index].message in failures[index]["message"]
    events = testbed.kubectl("-n", namespace, "get", "events", "-o", "json")
    reasons = {e["reason"] for e in json.loads(events.stdout)["items"]}
    assert {"InvalidTasks", "TasksFailed"} <= reasons
    # Only the good rows ever got a pod; the escaping ones never did.
    assert {int(name.split("-")[1]) for name in monitor.created} == good
    assert monitor.violations == []
