"""`make demo` as a newcomer runs it: its own test bed, the operator, the demo batch, the table.

The demo's batch file promises that the fast GPUs do about two thirds of the work (they are twice
as fast and the queue is dynamic). This runs the same command the Makefile runs and checks the
split it prints, so the first thing a user sees stays true.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_LINE = re.compile(r"^\s+(?P<model>\S+)\s+tasks\s+(?P<tasks>\d+)\s", re.MULTILINE)


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ, GPUBATCH_TESTBED_DIR=str(tmp_path / "testbed"), PYTHONPATH="tests")
    yield env
    subprocess.run(
        [sys.executable, "-m", "testbed", "down"], cwd=REPO, env=env, timeout=120, check=False
    )


@pytest.mark.integration
def test_demo_fast_gpus_do_about_two_thirds_of_the_work(demo_dir: dict[str, str]) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "testbed", "demo", "--timeout", "240"],
        cwd=REPO,
        env=demo_dir,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    tasks = {m["model"]: int(m["tasks"]) for m in MODEL_LINE.finditer(demo.stdout)}
    assert set(tasks) == {"NVIDIA-H100-80GB-HBM3", "Tesla-T4"}, demo.stdout
    assert sum(tasks.values()) == 160, demo.stdout
    fast_share = tasks["NVIDIA-H100-80GB-HBM3"] / 160
    assert 0.58 <= fast_share <= 0.75, demo.stdout
