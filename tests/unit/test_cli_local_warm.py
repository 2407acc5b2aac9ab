"""`gpubatch run` with `worker.mode: Warm`: one long-lived program per slot, fed the tasks one
at a time from the shared queue, every task still tracked, retried and skipped on its own.

The programs are this Python running a small script (or the example stand-in), so the tests
need nothing else; the machine has no GPU, so runs use CPU slots. Each program appends a line
to a load file when it starts, so the tests count loads instead of timing them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpubatch.cli.main import main
from gpubatch.local.journal import AttemptRecord, read_attempts

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "warm" / "simulated_model.py"
_SCRIPT = Path(sys.executable).with_name("gpubatch")
GPUBATCH = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gpubatch.cli"]

#: A warm program: records its load (LOAD_SECONDS long), then writes each task's output; the
#: environment says which task fails how on its first attempt (FAIL_N: a failed reply; CRASH_N:
#: the program dies in the middle of it; SLOW_N: it takes a minute), and HOLD: wait while that
#: file exists.
PROGRAM = """
import os, sys, time
import gpubatch.worker

with open(os.environ["LOADS"], "a") as loads:
    loads.write(str(os.getpid()) + "\\n")
if os.environ.get("DIE_LOADING"):
    sys.exit(4)
time.sleep(float(os.environ.get("LOAD_SECONDS", "0")))
for task in gpubatch.worker.tasks():
    with task:
        n = int(task.params["n"])
        if os.environ.get("PIDS"):
            open(os.path.join(os.environ["PIDS"], str(os.getpid())), "w").close()
        while os.environ.get("HOLD") and os.path.exists(os.environ["HOLD"]):
            time.sleep(0.05)
        if task.attempt == 0 and str(n) == os.environ.get("FAIL_N"):
            raise ValueError("unreadable input " + str(n))
        if task.attempt == 0 and str(n) == os.environ.get("CRASH_N"):
            os._exit(7)
        if task.attempt == 0 and str(n) == os.environ.get("SLOW_N"):
            time.sleep(60)
        with open(task.write_to[0], "w") as out:
            out.write("task " + str(n) + " by " + str(os.getpid()))
"""


def warm_batch(tmp_path: Path, *, tasks: int = 8, env: dict[str, str], **spec: Any) -> Path:
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    container = {
        "name": "model",
        "image": "registry.example.com/unused:1",
        "command": [sys.executable, str(program)],
        "env": [{"name": "LOADS", "value": str(tmp_path / "loads")}]
        + [{"name": k, "value": v} for k, v in env.items()],
    }
    return write_batch(tmp_path, tasks, container, spec)


def write_batch(
    tmp_path: Path, tasks: int, container: dict[str, Any], spec: dict[str, Any]
) -> Path:
    body = {
        "tasks": {"range": {"param": "n", "start": 0, "stop": tasks}},
        "outputRoot": str(tmp_path / "out"),
        "outputs": ["n{n}.txt"],
        "retry": {"limit": 1, "backoffSeconds": 0},
        "worker": {"mode": "Warm", "requireGPU": False},
        "template": {"spec": {"containers": [container]}},
        **spec,
    }
    path = tmp_path / "warm.yaml"
    batch = {"apiVersion": "gpubatch.io/v1alpha1", "kind": "GPUBatch"}
    path.write_text(yaml.safe_dump({**batch, "metadata": {"name": "warm"}, "spec": body}))
    return path


def run(path: Path, tmp_path: Path, slots: int = 2) -> int:
    state = tmp_path / "state"
    command = ["run", str(path), "--slots", str(slots), "--state-dir", str(state)]
    return main([*command, "--no-progress"])


def loads(tmp_path: Path) -> int:
    file = tmp_path / "loads"
    return len(file.read_text().splitlines()) if file.exists() else 0


def outputs(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")}


def attempts(tmp_path: Path) -> dict[int, list[AttemptRecord]]:
    by_task: dict[int, list[AttemptRecord]] = {}
    for record in read_attempts(tmp_path / "state"):
        by_task.setdefault(record.index, []).append(record)
    return by_task


def test_the_example_program_loads_once_per_slot_and_writes_every_output(tmp_path):
    container = {
        "name": "model",
        "image": "registry.example.com/unused:1",
        "command": [
            sys.executable,
            str(EXAMPLE),
            "--load-seconds",
            "0.3",
            "--seconds-per-task",
            "0.02",
        ],
    }
    path = write_batch(
        tmp_path,
        10,
        container,
        {"worker": {"mode": "Warm", "requireGPU": False, "atomicOutputs": True}},
    )
    assert run(path, tmp_path) == 0
    assert outputs(tmp_path) == {f"n{i}.txt" for i in range(10)}
    # The stand-in says "model loaded" once per load, in its slot's program log.
    logs = sorted((tmp_path / "state" / "logs").glob("warm-*.log"))
    assert sum(log.read_text().count("model loaded") for log in logs) == 2
    records = attempts(tmp_path)
    assert sorted(records) == list(range(10))
    assert all(len(r) == 1 and r[0].outcome == "succeeded" for r in records.values())
    assert all(r[0].result and r[0].result.duration_seconds < 0.3 for r in records.values())


def test_a_rerun_skips_every_task_without_starting_a_program(tmp_path):
    path = warm_batch(tmp_path, env={})
    assert run(path, tmp_path) == 0
    assert loads(tmp_path) == 2
    before = len(read_attempts(tmp_path / "state"))
    assert run(path, tmp_path) == 0
    assert loads(tmp_path) == 2  # every task was skipped before any program was needed
    assert len(read_attempts(tmp_path / "state")) == before  # and none was even attempted


def test_a_failing_input_fails_alone_and_is_retried_as_its_own_task(tmp_path):
    path = warm_batch(tmp_path, env={"FAIL_N": "2"})
    assert run(path, tmp_path) == 0
    records = attempts(tmp_path)
    assert [(r.attempt, r.exit_code) for r in records[2]] == [(0, 1), (1, 0)]
    assert "unreadable input 2" in (records[2][0].result.message if records[2][0].result else "")
    assert all(len(records[i]) == 1 for i in records if i != 2)
    assert outputs(tmp_path) == {f"n{i}.txt" for i in range(8)}
    assert loads(tmp_path) == 2  # a failed reply does not end the program


def test_a_non_retriable_exit_code_from_the_program_fails_the_task_at_once(tmp_path):
    path = warm_batch(
        tmp_path,
        env={"FAIL_N": "5"},
        retry={"limit": 3, "backoffSeconds": 0, "nonRetriableExitCodes": [1]},
    )
    assert run(path, tmp_path) == 1
    records = attempts(tmp_path)
    assert [(r.attempt, r.exit_code) for r in records[5]] == [(0, 1)]
    assert outputs(tmp_path) == {f"n{i}.txt" for i in range(8) if i != 5}


def test_a_crash_mid_task_is_one_counted_failure_and_the_slot_restarts_its_program(tmp_path):
    path = warm_batch(tmp_path, env={"CRASH_N": "3"})
    assert run(path, tmp_path, slots=1) == 0
    records = attempts(tmp_path)
    assert [(r.attempt, r.exit_code) for r in records[3]] == [(0, 7), (1, 0)]
    assert all(len(records[i]) == 1 and records[i][0].exit_code == 0 for i in records if i != 3)
    assert outputs(tmp_path) == {f"n{i}.txt" for i in range(8)}
    assert loads(tmp_path) == 2  # one slot: its first program, then the fresh one after the crash


def test_the_task_deadline_stops_a_slow_task_alone_and_does_not_count_the_load(tmp_path):
    # The load (2 s) is longer than the task deadline (1 s): the ready notice starts the clock.
    env = {"SLOW_N": "4", "LOAD_SECONDS": "2"}
    path = warm_batch(tmp_path, env=env, taskDeadlineSeconds=1)
    state = tmp_path / "state"
    command = ["run", str(path), "--slots", "2", "--state-dir", str(state), "--grace", "1"]
    assert main([*command, "--no-progress"]) == 0
    records = attempts(tmp_path)
    assert [(r.attempt, r.exit_code) for r in records[4]] == [(0, 81), (1, 0)]  # 81: deadline
    assert all(len(records[i]) == 1 for i in records if i != 4)
    assert outputs(tmp_path) == {f"n{i}.txt" for i in range(8)}


def test_a_program_that_dies_loading_fails_tasks_instead_of_restarting_for_ever(tmp_path):
    path = warm_batch(tmp_path, tasks=3, env={"DIE_LOADING": "1"})
    assert run(path, tmp_path) == 1
    records = attempts(tmp_path)
    # Each start fails the task it was started for: two attempts each (retry limit 1).
    assert {i: [r.exit_code for r in records[i]] for i in records} == {i: [4, 4] for i in range(3)}
    assert loads(tmp_path) == 6
    assert not (tmp_path / "out").exists() or not outputs(tmp_path)


def test_after_kill_9_of_the_runner_no_warm_program_is_left_alive(tmp_path):
    hold, pids = tmp_path / "hold", tmp_path / "pids"
    hold.write_text("")
    pids.mkdir()
    path = warm_batch(tmp_path, env={"HOLD": str(hold), "PIDS": str(pids)})
    command = [*GPUBATCH, "run", str(path), "--slots", "2", "--no-progress"]
    command += ["--state-dir", str(tmp_path / "state")]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2:
        assert first.poll() is None and time.monotonic() < deadline, "two programs never started"
        time.sleep(0.05)
    first.kill()  # SIGKILL: the runner can clean up nothing
    first.wait()
    try:
        # The programs wait for HOLD, so only a kill ends them: the runner's watchdog's.
        programs = [int(p.name) for p in pids.iterdir()]
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in programs):
            assert time.monotonic() < deadline, "warm programs outlived the killed runner"
            time.sleep(0.02)
    finally:
        hold.unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert outputs(tmp_path) == {f"n{i}.txt" for i in range(8)}


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_ctrl_c_stops_the_warm_programs_and_a_rerun_continues(tmp_path):
    hold, pids = tmp_path / "hold", tmp_path / "pids"
    hold.write_text("")
    pids.mkdir()
    path = warm_batch(tmp_path, env={"HOLD": str(hold), "PIDS": str(pids)})
    command = [*GPUBATCH, "run", str(path), "--slots", "2", "--no-progress", "--grace", "5"]
    command += ["--state-dir", str(tmp_path / "state")]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2:
        assert first.poll() is None and time.monotonic() < deadline, "two programs never started"
        time.sleep(0.05)
    first.send_signal(2)  # SIGINT, as Ctrl-C
    _, stderr = first.communicate(timeout=60)
    assert first.returncode != 0
    programs = [int(p.name) for p in pids.iterdir()]
    assert not any(_alive(pid) for pid in programs), stderr
    hold.unlink()
    assert run(path, tmp_path) == 0
    assert outputs(tmp_path) == {f"n{i}.txt" for i in range(8)}
    assert os.path.exists(tmp_path / "loads")


def test_the_warm_quickstart_example_runs_from_the_repository_root(tmp_path):
    """examples/warm-quickstart.yaml as written (its program path is relative to the repository
    root), only its outputs moved and python3 pointed at this Python, which has gpubatch."""
    example = yaml.safe_load((REPO / "examples" / "warm-quickstart.yaml").read_text())
    example["spec"]["outputRoot"] = str(tmp_path / "out")
    command = example["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["python3", "examples/warm/simulated_model.py"]
    command[0] = sys.executable
    path = tmp_path / "warm-quickstart.yaml"
    path.write_text(yaml.safe_dump(example))
    done = subprocess.run(
        [*GPUBATCH, "run", str(path), "--slots", "2", "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert done.returncode == 1, done.stderr  # the corrupt image fails, alone, after its retry
    assert "24 tasks: 23 succeeded, 1 failed" in done.stdout
    assert "cannot decode image corrupt-image-13" in done.stderr
    logs = sorted((tmp_path / "state" / "logs").glob("warm-*.log"))
    assert sum(log.read_text().count("model loaded") for log in logs) == 2
