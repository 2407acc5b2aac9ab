"""The cluster commands against the real control plane: submit, status, watch, report.

The `gpubatch` command runs as a user would run it: a separate process whose KUBECONFIG points
at the test bed, with the operator running. Task pods are simulated by kwok (the
`sim.gpubatch.io/*` annotations set how long they run and how they exit).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.batches import Batches, batch
from support.operator_process import OperatorProcess
from testbed import Testbed, env_with_kubeconfig

pytestmark = pytest.mark.integration

_SCRIPT = Path(sys.executable).with_name("gpubatch")
GPUBATCH = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gpubatch.cli"]
TESTBED_MODEL = "NVIDIA-A100-SXM4-80GB"  # the test bed's default GPU node pool

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(testbed: Testbed, namespace: str, running_operator: OperatorProcess) -> Cli:
    """Runs `gpubatch ARGS -n <test namespace>` against the test bed."""
    env = env_with_kubeconfig(testbed)

    def call(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*GPUBATCH, *args, "-n", namespace],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return call


@pytest.fixture
def batches(testbed: Testbed, namespace: str) -> Batches:
    return Batches(testbed, namespace)


def batch_yaml(tmp_path: Path, body: dict[str, Any]) -> str:
    path = tmp_path / f"{body['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def test_submit_creates_updates_and_watch_follows_the_batch_to_its_summary(
    cli: Cli, batches: Batches, tmp_path: Path
):
    suspended = batch("cli-shots", duration="100ms", parallelism=4, suspend=True)
    created = cli("submit", batch_yaml(tmp_path, suspended))
    assert created.returncode == 0, created.stderr
    assert "cli-shots created (generation 1)" in created.stdout
    assert batches.wait_condition("cli-shots", "Suspended")

    # The file no longer says suspend: server-side apply removes the field, and it runs.
    running = batch("cli-shots", duration="100ms", parallelism=4)
    updated = cli("submit", batch_yaml(tmp_path, running))
    assert updated.returncode == 0, updated.stderr
    assert "cli-shots configured (generation 2)" in updated.stdout
    assert batches.get("cli-shots")["spec"].get("suspend", False) is False

    watched = cli("watch", "cli-shots", "--interval", "0.3", "--timeout", "120")
    assert watched.returncode == 0, watched.stderr
    assert "Complete - 10 tasks: 10 succeeded, 0 failed, 0 skipped" in watched.stdout
    assert TESTBED_MODEL in watched.stdout  # the per-model table
    assert "10/10 100%" in watched.stderr  # the final progress line

    status = cli("status", "cli-shots")
    assert status.returncode == 0, status.stderr
    assert "state: Complete" in status.stdout
    assert "AllTasksFinished" in status.stdout


def test_submit_with_watch_exits_1_when_the_batch_fails(cli: Cli, tmp_path: Path):
    failing = batch(
        "cli-fails",
        duration="100ms",
        annotations={"sim.gpubatch.io/exit-code": "3"},
        retry={"limit": 0},
        maxFailedTasks=0,
    )
    result = cli("submit", batch_yaml(tmp_path, failing), "--watch", "--timeout", "120")
    assert result.returncode == 1, result.stderr
    assert "cli-fails: Failed" in result.stdout
    assert "recent failures" in result.stdout


def test_report_shows_models_and_failures_and_plots_the_pods_that_exist(
    cli: Cli, batches: Batches, tmp_path: Path
):
    body = batch(
        "cli-report",
        duration="200ms",
        annotations={"sim.gpubatch.io/fail-indexes": "1,2"},
        tasks={"range": {"start": 0, "stop": 3}},
        retry={"limit": 0},
        podCleanup={"succeeded": "Keep"},
    )
    batches.create(body)
    batches.wait_condition("cli-report", "Failed")  # two tasks failed: Failed/TasksFailed
    plot = tmp_path / "timeline.png"
    report = cli("report", "cli-report", "--plot", str(plot))
    assert report.returncode == 0, report.stderr
    assert TESTBED_MODEL in report.stdout and "speed-up" in report.stdout
    assert "recent failures (2, newest last)" in report.stdout
    assert "timeline written" in report.stderr and "(3 of 3 tasks)" in report.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    status = cli("status", "cli-report")
    assert status.returncode == 1  # some tasks failed
    assert "failed tasks: 1-2" in status.stdout


def test_status_of_a_batch_that_does_not_exist_exits_3(cli: Cli):
    result = cli("status", "no-such-batch")
    assert result.returncode == 3
    assert "no-such-batch not found" in result.stderr
