"""The simulated warm worker (tests/testbed/warmsim.py) on its own: its lease loop against a
small HTTPS double of the operator's lease endpoint, and its bookkeeping.

The benchmarks trust this simulator to behave as the worker in the image would: retry the same
request until answered, carry each lease's results in the next request, end its pod on `done`.
The Kubernetes side (tokens, watches, kwok) is proven on the test bed by the benchmark smoke
tests; here only the pod side is a stand-in.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gpubatch.api.lease import (
    ENV_BATCH_UID,
    ENV_LEASE_CA,
    ENV_LEASE_URL,
    LEASE_PATH,
    WarmProgress,
)
from support.leasedouble import LeaseDouble, serve
from testbed import certs, sim
from testbed.processes import free_port
from testbed.warmsim import FleetLog, TaskRun, WarmPod, Worker, WorkerError

UID = "batch-uid-1"


class PodSideDouble:
    """The fleet's side of a worker: tokens, the pod's end, the node's GPU model."""

    def __init__(self) -> None:
        self.log = FleetLog()
        self.tokens = 0
        self.ended: list[tuple[int, str]] = []

    def gpu_model(self, node: str) -> str:
        return "Tesla-T4"

    async def token(self, pod: WarmPod) -> str:
        self.tokens += 1
        return f"tok-{self.tokens}"

    async def end_pod(self, pod: WarmPod, code: int, message: str) -> None:
        self.ended.append((code, message))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> certs.CertPaths:
    return certs.generate(Path(tmp_path_factory.mktemp("tls")))


def a_pod(url: str, ca: str, **annotations: str) -> WarmPod:
    return WarmPod(
        namespace="ns",
        name="warm-0",
        uid="pod-uid",
        node="gpu-0",
        service_account="default",
        url=url,
        ca_pem=ca,
        batch_uid=UID,
        annotations={sim.DURATION: "10ms", **annotations},
    )


def run_worker(
    double: LeaseDouble, tls: certs.CertPaths, *, late_seconds: float = 0.0, **annotations: str
) -> tuple[PodSideDouble, Worker]:
    """Run one worker to its end against `double` (started `late_seconds` after the worker)."""
    port = free_port()
    side = PodSideDouble()
    pod = a_pod(f"https://127.0.0.1:{port}{LEASE_PATH}", tls.ca_cert.read_text(), **annotations)
    worker = Worker(pod=pod, fleet=side)

    async def main() -> None:
        running = asyncio.create_task(worker.run())
        await asyncio.sleep(late_seconds)
        runner = await serve(double, tls, port)
        try:
            await asyncio.wait_for(running, timeout=30)
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return side, worker


@pytest.mark.process
def test_worker_runs_every_leased_task_once_and_ends_its_pod_with_zero_when_done(tls):
    double = LeaseDouble(tasks=5)
    side, _ = run_worker(double, tls, **{sim.LOAD: "20ms"})
    assert side.ended and side.ended[0][0] == 0, side.ended
    assert double.results == {i: [0] for i in range(5)}
    assert side.log.acknowledged_successes(UID) == dict.fromkeys(range(5), 1)
    assert sorted(run.index for run in side.log.runs) == list(range(5))
    first, second = (json.loads(body) for body in double.bodies[:2])
    assert (first["batchUid"], first["seq"], first["loadSeconds"]) == (UID, 0, None)
    # The program starts with the first lease; its report carries the load, once.
    assert (second["seq"], second["loadSeconds"]) == (1, 0.02)
    assert all(json.loads(body)["loadSeconds"] is None for body in double.bodies[2:])


@pytest.mark.process
def test_worker_repeats_the_same_request_until_the_operator_answers(tls):
    double = LeaseDouble(tasks=3, answers=[503, 502])
    side, _ = run_worker(double, tls, late_seconds=0.3)  # refused connections first
    assert double.bodies[0] == double.bodies[1] == double.bodies[2]
    assert double.results == {i: [0] for i in range(3)}
    assert side.log.retries >= 2
    assert side.ended[0][0] == 0


@pytest.mark.process
@pytest.mark.parametrize("status", [401, 403])
def test_worker_refused_for_good_ends_its_pod_with_the_worker_error_code(tls, status):
    double = LeaseDouble(tasks=2, answers=[status])
    side, _ = run_worker(double, tls)
    code, message = side.ended[0]
    assert code == 83
    assert f"HTTP {status}" in message
    assert side.log.errors


@pytest.mark.process
def test_worker_that_cannot_trust_the_endpoint_ends_its_pod_instead_of_retrying(tls, tmp_path):
    other = certs.generate(tmp_path / "other")  # a CA that did not sign the endpoint's cert
    port = free_port()
    side = PodSideDouble()
    pod = a_pod(f"https://127.0.0.1:{port}{LEASE_PATH}", other.ca_cert.read_text())
    worker = Worker(pod=pod, fleet=side)

    async def main() -> None:
        runner = await serve(LeaseDouble(tasks=1), tls, port)
        try:
            await asyncio.wait_for(worker.run(), timeout=30)
        finally:
            await runner.cleanup()

    asyncio.run(main())
    code, message = side.ended[0]
    assert code == 83 and "not trusted" in message, side.ended


@pytest.mark.process
def test_tasks_named_by_the_failure_annotations_fail_with_their_code(tls):
    double = LeaseDouble(tasks=4)
    run_worker(double, tls, **{sim.FAIL_INDEXES: "1,3", sim.FAIL_CODE: "7"})
    assert double.results == {0: [0], 1: [7], 2: [0], 3: [7]}


@pytest.mark.process
def test_worker_stopped_mid_task_records_the_interrupted_run_and_its_progress(tls):
    port = free_port()
    side = PodSideDouble()
    pod = a_pod(f"https://127.0.0.1:{port}{LEASE_PATH}", tls.ca_cert.read_text())
    pod = WarmPod(**{**pod.__dict__, "annotations": {sim.DURATION: "30s"}})
    worker = Worker(pod=pod, fleet=side)

    async def main() -> None:
        runner = await serve(LeaseDouble(tasks=2), tls, port)
        try:
            running = asyncio.create_task(worker.run())
            for _ in range(500):
                if worker.running is not None:
                    break
                await asyncio.sleep(0.01)
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            worker.stopped()
        finally:
            await runner.cleanup()

    asyncio.run(main())
    assert worker.progress.running == (0, 0)
    assert [(r.index, r.exit_code) for r in side.log.runs] == [(0, None)]
    assert not side.ended


@pytest.mark.process
def test_worker_told_to_stop_mid_lease_reports_once_and_ends_its_pod_with_143(tls):
    port = free_port()
    side = PodSideDouble()
    pod = a_pod(f"https://127.0.0.1:{port}{LEASE_PATH}", tls.ca_cert.read_text())
    pod = WarmPod(**{**pod.__dict__, "annotations": {sim.DURATION: "30s"}})  # runs long
    worker = Worker(pod=pod, fleet=side)
    double = LeaseDouble(tasks=2)

    async def main() -> None:
        runner = await serve(double, tls, port)
        try:
            worker.task = asyncio.create_task(worker.run())
            for _ in range(500):
                if worker.running is not None:
                    break
                await asyncio.sleep(0.01)
            worker.sigterm = True
            worker.task.cancel()
            await asyncio.wait_for(worker.task, timeout=10)
        finally:
            await runner.cleanup()

    asyncio.run(main())
    code, message = side.ended[0]
    assert code == 143
    assert double.results == {0: [143]}  # the running task failed Interrupted, reported once
    assert double.unrun == [(1, 0)]  # the rest of the lease never started
    progress = WarmProgress.model_validate_json(message)
    assert [entry[:3] for entry in progress.done] == [(0, 0, 143)]
    assert [(r.index, r.exit_code) for r in side.log.runs] == [(0, 143)]


# ------------------------------------------------------------------------------- pure parts
def pod_object(env: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "w", "uid": "u", "annotations": annotations or {}},
        "spec": {
            "nodeName": "gpu-1",
            "containers": [
                {"name": "task", "env": [{"name": k, "value": v} for k, v in env.items()]}
            ],
        },
    }


@pytest.mark.unit
def test_warm_pod_reads_its_lease_endpoint_from_the_worker_containers_env():
    env = {ENV_LEASE_URL: "https://op:8443/v1/lease", ENV_LEASE_CA: "PEM", ENV_BATCH_UID: "b"}
    pod = WarmPod.from_pod(pod_object(env))
    assert (pod.url, pod.ca_pem, pod.batch_uid, pod.node) == (
        env[ENV_LEASE_URL],
        "PEM",
        "b",
        "gpu-1",
    )
    assert pod.service_account == "default"


@pytest.mark.unit
def test_warm_pod_without_its_lease_env_is_an_error_naming_what_is_missing():
    with pytest.raises(WorkerError, match="GPUBATCH_LEASE_CA"):
        WarmPod.from_pod(pod_object({ENV_LEASE_URL: "https://op", ENV_BATCH_UID: "b"}))


@pytest.mark.unit
def test_warm_pod_with_an_unreadable_sim_annotation_is_an_error_saying_what_to_write():
    env = {ENV_LEASE_URL: "https://op", ENV_LEASE_CA: "PEM", ENV_BATCH_UID: "b"}
    with pytest.raises(WorkerError, match="Go durations"):
        WarmPod.from_pod(pod_object(env, {sim.DURATION: "10min"}))


@pytest.mark.unit
def test_task_durations_are_the_per_index_lognormal_kwok_gives_task_pods():
    spec = sim.lognormal_annotation(500, 0.8, 42)
    pod = a_pod("https://x", "PEM", **{sim.LOGNORMAL: spec, sim.LOAD: "10s"})
    assert [pod.task_seconds(i) for i in range(3)] == [
        sim.lognormal_ms(i, 500, 0.8, 42) / 1000 for i in range(3)
    ]
    assert pod.load_seconds() == 10.0
    assert a_pod("https://x", "PEM").task_seconds(3) == 0.01


def a_run(pod: str, index: int, started: float, ended: float) -> TaskRun:
    return TaskRun("ns", pod, UID, index, 0, started, ended, 0)


@pytest.mark.unit
def test_fleet_log_finds_a_task_run_in_two_places_at_once_but_not_one_after_another():
    log = FleetLog()
    for run in (a_run("a", 1, 0, 2), a_run("b", 1, 2, 3), a_run("a", 2, 0, 2), a_run("b", 2, 1, 3)):
        log.add_run(run)
    found = log.concurrent_runs(UID)
    assert len(found) == 1 and found[0].startswith("task 2:"), found


@pytest.mark.unit
def test_go_durations_are_read_as_kwok_reads_them_and_bare_numbers_are_refused():
    assert sim.parse_go_duration("10s500ms") == 10.5
    assert sim.parse_go_duration("1.5s") == 1.5
    with pytest.raises(ValueError, match="Go duration"):
        sim.parse_go_duration("10")
