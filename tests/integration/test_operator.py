"""The operator on the real control plane: dispatch, skip, retries, limits, lifecycle."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from support.batches import Batches, PodMonitor, batch, pods_with_finalizer
from support.operator_process import OperatorProcess
from support.waiting import wait_for
from testbed import GpuNodePool, Testbed

pytestmark = pytest.mark.integration


@pytest.fixture
def batches(testbed: Testbed, namespace: str, running_operator: OperatorProcess) -> Batches:
    return Batches(testbed, namespace)


def test_matrix_batch_of_200_tasks_completes_with_exact_counts(batches: Batches):
    tasks = {
        "matrix": {
            "video": {"values": [f"v{i}" for i in range(20)]},
            "image": {"values": [f"i{j}" for j in range(10)]},
        }
    }
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(batch("faceswap", tasks=tasks, duration="100ms", parallelism=16))
        batches.wait_condition("faceswap", "Complete", timeout=180)
    status = batches.status("faceswap")
    assert status["counts"] == {
        "total": 200,
        "pending": 0,
        "running": 0,
        "succeeded": 200,
        "failed": 0,
        "skipped": 0,
    }
    assert status["succeededIndexes"] == "0-199"
    assert status["progress"] == "200/200"
    assert status["observedGeneration"] == 1
    assert monitor.violations == []
    assert monitor.max_running <= 16
    assert len(monitor.created) == 200  # one pod per task, no duplicates
    assert status["gpuModels"][0]["succeeded"] == 200
    # Succeeded pods are cleaned up by default and none is left holding the finalizer.
    wait_for(lambda: not batches.pods(), timeout=60, what="succeeded pods deleted")


def test_pod_carries_gpu_limit_labels_owner_and_rendered_command(batches: Batches):
    body = batch(
        "render",
        tasks={"items": [{"shot": 7}]},
        duration="30s",
        command=["python", "shot.py", "--shot", "{shot}"],
        gpusPerTask=2,
        gpuResource="nvidia.com/gpu",
    )
    created = batches.create(body)
    pod = wait_for(lambda: next(iter(batches.pods()), None), timeout=30, what="task pod")
    container = pod.spec.containers[0]
    assert pod.metadata.name == "render-0-0"
    assert container.resources.limits["nvidia.com/gpu"] == "2"
    assert container.command == ["gpubatch-worker", "--", "python", "shot.py", "--shot", "7"]
    env = {e.name: e.value for e in container.env}
    assert "CUDA_VISIBLE_DEVICES" not in env and "NVIDIA_VISIBLE_DEVICES" not in env
    assert json.loads(env["GPUBATCH_PARAMS"]) == {"shot": 7}
    assert env["GPUBATCH_TASK_INDEX"] == "0"
    assert pod.spec.restart_policy == "Never"
    assert pod.metadata.labels["gpubatch.io/batch-uid"] == created["metadata"]["uid"]
    assert pod.metadata.owner_references[0].uid == created["metadata"]["uid"]
    assert "gpubatch.io/task-tracking" in pod.metadata.finalizers
    assert pod.spec.security_context.run_as_non_root is True
    assert container.security_context.allow_privilege_escalation is False


def test_second_apply_of_a_finished_batch_dispatches_nothing(
    batches: Batches, running_operator: OperatorProcess
):
    body = batch("again", duration="100ms", podCleanup={"succeeded": "Keep"})
    batches.create(body)
    batches.wait_condition("again", "Complete")
    first = {p.metadata.name for p in batches.pods()}
    before = batches.get("again")
    # Re-apply the same spec (as `kubectl apply` or a GitOps sync would). An identical apply
    # changes no generation, so the running loop has nothing to look at; a restarted operator
    # has no memory of the batch and must derive "finished" from the status and the pods.
    batches.testbed.kubectl("-n", batches.namespace, "apply", "-f", "-", input=json.dumps(body))
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        running_operator.restart()
        wait_for(
            lambda: _tasks_gauge(running_operator, batches.namespace, "again") == 10,
            timeout=60,
            what="a pass of the restarted operator over the batch (its succeeded gauge)",
        )
        pods_after = {p.metadata.name for p in batches.pods()}
    after = batches.get("again")
    assert len(first) == 10
    assert pods_after == first
    assert set(monitor.created) <= first  # the watch saw no other pod, however short-lived
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["status"]["counts"] == before["status"]["counts"]


def _tasks_gauge(operator: OperatorProcess, namespace: str, name: str) -> float | None:
    """The restarted operator's gpubatch_tasks{state="succeeded"} of one batch: exported only
    at the end of a pass over that batch (after its creates), so its presence means a pass
    finished."""
    labels = (f'batch="{name}"', f'namespace="{namespace}"', 'state="succeeded"')
    for line in operator.metrics().splitlines():
        if line.startswith("gpubatch_tasks{") and all(label in line for label in labels):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_tasks_whose_outputs_exist_are_skipped_before_any_pod_starts(
    batches: Batches, tmp_path: Path
):
    out = tmp_path / "out"
    out.mkdir()
    for i in range(0, 20, 2):  # half the outputs already exist
        (out / f"shot-{i}.bin").write_bytes(b"done")
    body = batch(
        "skipper",
        tasks={"range": {"start": 0, "stop": 20, "param": "shot"}},
        outputs=[str(out) + "/shot-{shot}.bin"],
        duration="100ms",
        podCleanup={"succeeded": "Keep"},
    )
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(body)
        batches.wait_condition("skipper", "Complete")
    status = batches.status("skipper")
    assert status["skippedIndexes"] == ",".join(str(i) for i in range(0, 20, 2))
    assert status["succeededIndexes"] == ",".join(str(i) for i in range(1, 20, 2))
    assert status["counts"]["skipped"] == 10 and status["counts"]["succeeded"] == 10
    started = {int(name.split("-")[1]) for name in monitor.created}
    assert started == set(range(1, 20, 2))


def test_nine_tasks_on_eight_gpus_never_exceed_eight_running(batches: Batches):
    model = f"TEST-GPU-{uuid.uuid4().hex[:6]}"
    [node] = batches.testbed.create_nodes(
        [GpuNodePool(name=model.lower(), count=1, gpus=8, model=model)]
    )
    try:
        with PodMonitor(batches.testbed, batches.namespace) as monitor:
            batches.create(
                batch(
                    "nine",
                    tasks={"range": {"stop": 9}},
                    duration="2s",
                    parallelism=100,
                    gpuModels=[model],
                    maxPending=2,
                )
            )
            batches.wait_condition("nine", "Complete", timeout=60)
        assert monitor.max_running == 8
        assert monitor.max_unscheduled <= 2
        assert monitor.violations == []
        assert batches.status("nine")["counts"]["succeeded"] == 9
        assert batches.status("nine")["gpuModels"][0]["model"] == model
    finally:
        batches.testbed.delete_node(node)


def test_gpu_models_become_required_and_preferred_node_affinity(batches: Batches):
    batches.create(
        batch(
            "typed",
            tasks={"range": {"stop": 1}},
            duration="60s",
            gpuModels=["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"],
        )
    )
    pod = wait_for(lambda: next(iter(batches.pods()), None), timeout=30, what="task pod")
    affinity = pod.spec.affinity.node_affinity
    term = affinity.required_during_scheduling_ignored_during_execution.node_selector_terms[0]
    assert term.match_expressions[0].key == "nvidia.com/gpu.product"
    assert term.match_expressions[0].values == ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"]
    preferred = affinity.preferred_during_scheduling_ignored_during_execution
    assert [p.preference.match_expressions[0].values[0] for p in preferred] == [
        "NVIDIA-H100-80GB-HBM3",
        "NVIDIA-A100-SXM4-80GB",
    ]
    assert preferred[0].weight > preferred[1].weight
    # Only A100 nodes exist in the shared test bed: it runs there.
    wait_for(lambda: batches.pods()[0].spec.node_name, timeout=30, what="pod scheduled")


def test_failed_attempts_are_retried_until_success(batches: Batches):
    body = batch(
        "flaky",
        tasks={"range": {"stop": 3}},
        duration="100ms",
        annotations={"sim.gpubatch.io/fail-attempts": "2", "sim.gpubatch.io/fail-code": "3"},
        retry={"limit": 3, "backoffSeconds": 0},
        podCleanup={"failed": "Keep"},
    )
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(body)
        batches.wait_condition("flaky", "Complete", timeout=60)
    status = batches.status("flaky")
    assert status["counts"]["succeeded"] == 3 and status["counts"]["failed"] == 0
    assert monitor.violations == []
    # Attempts 0 and 1 failed for each task; attempt 2 succeeded.
    assert sorted(monitor.created) == sorted(f"flaky-{t}-{a}" for t in range(3) for a in range(3))
    failures = status["recentFailures"]
    assert {(f["index"], f["attempt"]) for f in failures} == {
        (t, a) for t in range(3) for a in range(2)
    }
    assert all(f["exitCode"] == 3 for f in failures)
    assert status["retries"] == []


def test_task_fails_after_its_retry_limit_and_others_continue(batches: Batches):
    body = batch(
        "limits",
        tasks={"range": {"stop": 6}},
        duration="100ms",
        annotations={"sim.gpubatch.io/fail-indexes": "4"},
        retry={"limit": 1, "backoffSeconds": 1},
    )
    batches.create(body)
    failed = batches.wait_condition("limits", "Failed", timeout=60)
    assert failed["reason"] == "TasksFailed"
    status = batches.status("limits")
    assert status["failedIndexes"] == "4"
    assert status["succeededIndexes"] == "0-3,5"
    assert [f["attempt"] for f in status["recentFailures"]] == [0, 1]
    assert "5 succeeded, 1 failed" in failed["message"]


def test_non_retriable_exit_code_fails_the_task_at_once(batches: Batches):
    body = batch(
        "fatal",
        tasks={"range": {"stop": 2}},
        duration="100ms",
        annotations={"sim.gpubatch.io/fail-indexes": "1", "sim.gpubatch.io/fail-code": "42"},
        retry={"limit": 5, "nonRetriableExitCodes": [42]},
    )
    batches.create(body)
    assert batches.wait_condition("fatal", "Failed", timeout=60)["reason"] == "TasksFailed"
    status = batches.status("fatal")
    assert status["failedIndexes"] == "1"
    assert len(status["recentFailures"]) == 1
    assert status["recentFailures"][0]["reason"] == "NonRetriableExit"
    assert "non-retriable" in status["recentFailures"][0]["message"]


def test_too_many_failed_tasks_fails_the_batch_and_stops_dispatch(batches: Batches):
    body = batch(
        "doomed",
        tasks={"range": {"stop": 50}},
        duration="200ms",
        parallelism=2,
        annotations={"sim.gpubatch.io/exit-code": "1"},
        retry={"limit": 0},
        maxFailedTasks=1,
    )
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(body)
        cond = batches.wait_condition("doomed", "Failed", timeout=60)
        assert cond["reason"] == "TooManyFailedTasks"
        wait_for(
            lambda: all(p.status.phase in ("Succeeded", "Failed") for p in batches.pods()),
            timeout=30,
            what="nothing left running",
        )
        status = batches.wait_observed("doomed")
    # parallelism 2: two failures end the batch, at most the two in flight then were started
    assert len(monitor.created) <= 4
    assert status["counts"]["failed"] <= 4
    events = batches.testbed.kubectl("-n", batches.namespace, "get", "events", "-o", "json")
    reasons = {e["reason"] for e in json.loads(events.stdout)["items"]}
    assert "TooManyFailedTasks" in reasons


def test_task_deadline_stops_a_long_attempt_and_counts_it(batches: Batches):
    body = batch(
        "slowpoke",
        tasks={"range": {"stop": 1}},
        duration="600s",
        taskDeadlineSeconds=2,
        retry={"limit": 0},
        podCleanup={"failed": "Keep"},
    )
    batches.create(body)
    assert batches.wait_condition("slowpoke", "Failed", timeout=60)["reason"] == "TasksFailed"
    status = batches.status("slowpoke")
    assert status["failedIndexes"] == "0"
    assert status["recentFailures"][0]["reason"] == "DeadlineExceeded"


def test_batch_deadline_fails_the_batch_and_stops_its_pods(batches: Batches):
    body = batch("overdue", tasks={"range": {"stop": 4}}, duration="600s", activeDeadlineSeconds=3)
    batches.create(body)
    cond = batches.wait_condition("overdue", "Failed", timeout=60)
    assert cond["reason"] == "DeadlineExceeded"
    wait_for(
        lambda: (
            not pods_with_finalizer(batches)
            and all(p.status.phase in ("Succeeded", "Failed") for p in batches.pods())
        ),
        timeout=60,
        what="pods stopped and released",
    )


def test_suspend_stops_dispatch_and_resume_continues(batches: Batches):
    body = batch(
        "pausable", tasks={"range": {"stop": 20}}, duration="300ms", parallelism=2, suspend=True
    )
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(body)
        batches.wait_condition("pausable", "Suspended")
        batches.wait_observed("pausable")  # the pass that saw suspend: true has decided
        assert batches.pods() == []
    assert monitor.created == set()
    assert batches.condition("pausable", "Progressing")["reason"] == "Suspended"
    batches.patch_spec("pausable", {"suspend": False})
    batches.wait_condition("pausable", "Complete", timeout=90)
    assert batches.condition("pausable", "Suspended")["status"] == "False"
    assert batches.status("pausable")["counts"]["succeeded"] == 20


def test_deleting_a_batch_mid_run_leaves_no_pods(batches: Batches):
    body = batch("victim", tasks={"range": {"stop": 30}}, duration="60s", parallelism=6)
    batches.create(body)
    wait_for(
        lambda: len([p for p in batches.pods() if p.status.phase == "Running"]) >= 6,
        timeout=30,
        what="six running pods",
    )
    batches.delete("victim")
    wait_for(
        lambda: batches.gone("victim") and not batches.pods(),
        timeout=90,
        what="batch and all its pods gone",
    )


def test_invalid_spec_gets_failed_condition_event_and_no_pods(batches: Batches, tmp_path: Path):
    body = batch("nomatch", tasks={"files": {"glob": str(tmp_path / "missing" / "*.jpg")}})
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(body)
        cond = batches.wait_condition("nomatch", "Failed", timeout=30)
        batches.wait_observed("nomatch")
        assert batches.pods() == []
    assert monitor.created == set()
    assert cond["reason"] == "InvalidSpec"
    assert "matches no files" in cond["message"] or "no files" in cond["message"]
    events = json.loads(
        batches.testbed.kubectl("-n", batches.namespace, "get", "events", "-o", "json").stdout
    )["items"]
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in events)


def test_unknown_placeholder_is_invalid_spec_naming_it(batches: Batches):
    body = batch(
        "typo",
        command=["python", "run.py", "{shoot}"],
        tasks={"range": {"stop": 3, "param": "shot"}},
    )
    batches.create(body)
    cond = batches.wait_condition("typo", "Failed", timeout=30)
    assert cond["reason"] == "InvalidSpec"
    assert "shoot" in cond["message"]
    assert batches.pods() == []


def test_longest_first_dispatches_by_cost(batches: Batches):
    items = [{"img": f"a{i}", "pixels": p} for i, p in enumerate([5, 90, 20, 70, 1])]
    body = batch(
        "lpt",
        tasks={"items": items},
        duration="100ms",
        parallelism=1,
        order={"by": "longestFirst", "costParam": "pixels"},
        podCleanup={"succeeded": "Keep"},
    )
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(body)
        batches.wait_condition("lpt", "Complete", timeout=60)
    order = [int(name.split("-")[1]) for name in monitor.created_order]
    assert order == [1, 3, 2, 0, 4]


def test_metrics_and_liveness_endpoints_answer(running_operator: OperatorProcess):
    text = running_operator.metrics()
    assert "gpubatch_pods_created_total" in text
    assert "gpubatch_reaction_seconds_bucket" in text
    import urllib.request

    with urllib.request.urlopen(running_operator.liveness_url, timeout=5) as response:
        assert response.status == 200


def test_finished_batch_is_deleted_after_its_ttl(batches: Batches):
    batches.create(
        batch(
            "ephemeral", tasks={"range": {"stop": 2}}, duration="100ms", ttlSecondsAfterFinished=2
        )
    )
    batches.wait_condition("ephemeral", "Complete", timeout=60)
    wait_for(lambda: batches.gone("ephemeral"), timeout=30, what="batch deleted after its TTL")


def test_parallelism_edit_applies_to_tasks_not_yet_started(batches: Batches):
    body = batch("widen", tasks={"range": {"stop": 24}}, duration="1s", parallelism=2)
    with PodMonitor(batches.testbed, batches.namespace) as monitor:
        batches.create(body)
        wait_for(
            lambda: batches.status("widen").get("counts", {}).get("succeeded", 0) >= 2,
            timeout=30,
            what="two tasks done at parallelism 2",
        )
        assert monitor.max_running <= 2
        batches.patch_spec("widen", {"parallelism": 8})
        batches.wait_condition("widen", "Complete", timeout=60)
    assert monitor.max_running > 2
    assert batches.status("widen")["observedGeneration"] == 2
