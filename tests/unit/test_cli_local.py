"""`gpubatch run`, end to end: real `gpubatch-worker` processes running real task commands.

Task commands are this Python (`sys.executable -c ...`), so the tests need nothing else. The
machine has no GPU: runs use CPU slots (`--slots 2`), and the two tests about GPU pinning use
FAKE device records (named as such) - they check which CUDA_VISIBLE_DEVICES a task is given,
not that a GPU was used. Scripts avoid braces: `{...}` is a placeholder in a task's command.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpubatch.api.status import GPUBatchStatus, TaskCounts
from gpubatch.cli.batchfile import load_batch_file, prepare
from gpubatch.cli.main import main
from gpubatch.cli.preview import scan_outputs
from gpubatch.edges.nvml import GpuDevice, GpuReport
from gpubatch.local.journal import Journal, LocalState, read_attempts
from gpubatch.local.runner import LocalRunner, RunOptions
from gpubatch.local.slots import GpuThreshold, Slot

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("gpubatch")
GPUBATCH = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gpubatch.cli"]

WRITE = "import sys; open(sys.argv[1], 'w').write('shot ' + sys.argv[2])"
FAIL_TASK_2 = (
    "import sys; n = int(sys.argv[2]); "
    "sys.exit(3) if n == 2 else open(sys.argv[1], 'w').write('ok')"
)
FAIL_FIRST_ATTEMPT = (
    "import os, sys; sys.exit(5) if os.environ['GPUBATCH_ATTEMPT'] == '0' "
    "else open(sys.argv[1], 'w').write('ok')"
)


def batch_file(
    tmp_path: Path, script: str, *, name: str = "shots", tasks: int = 4, **spec: Any
) -> Path:
    """A batch of `tasks` tasks running `script` with argv [output, n]."""
    container: dict[str, Any] = {
        "name": "task",
        "image": "registry.example.com/unused:1",
        "command": [sys.executable, "-c", script, "{outputs[0]}", "{n}"],
    }
    if "env" in spec:
        container["env"] = spec.pop("env")
    body = {
        "tasks": {"range": {"param": "n", "start": 0, "stop": tasks}},
        "outputRoot": str(tmp_path / "out"),
        "outputs": ["n{n}.txt"],
        "retry": {"limit": 0, "backoffSeconds": 0},
        "worker": {"requireGPU": False},
        "template": {"spec": {"containers": [container]}},
        **spec,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "gpubatch.io/v1alpha1",
                "kind": "GPUBatch",
                "metadata": {"name": name},
                "spec": body,
            }
        )
    )
    return path


def run(path: Path, tmp_path: Path, *extra: str) -> int:
    state = tmp_path / "state"
    return main(
        ["run", str(path), "--slots", "2", "--state-dir", str(state), "--no-progress", *extra]
    )


def outputs(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "out"
    return {p.name: p.read_text() for p in sorted(folder.iterdir())} if folder.exists() else {}


def records(tmp_path: Path) -> list[Any]:
    return read_attempts(tmp_path / "state")


def test_run_executes_every_task_under_the_supervisor_and_records_each_attempt(tmp_path, capsys):
    path = batch_file(tmp_path, WRITE)
    assert run(path, tmp_path) == 0
    assert outputs(tmp_path) == {f"n{i}.txt": f"shot {i}" for i in range(4)}
    done = records(tmp_path)
    assert sorted(r.index for r in done) == [0, 1, 2, 3]
    assert {r.outcome for r in done} == {"succeeded"}
    assert {r.slot for r in done} <= {"cpu0", "cpu1"}
    log = Path(done[0].log).read_text()
    assert "[gpubatch] task " in log and "succeeded" in log
    out = capsys.readouterr().out
    assert "shots: Complete - 4 tasks: 4 succeeded, 0 failed, 0 skipped" in out
    assert "speed-up over one slot" in out
    state = json.loads((tmp_path / "state" / "status.json").read_text())
    assert state["status"]["succeededIndexes"] == "0-3"


def test_running_again_skips_finished_tasks_without_starting_any_worker(tmp_path, capsys):
    path = batch_file(tmp_path, WRITE)
    assert run(path, tmp_path) == 0
    first = records(tmp_path)
    capsys.readouterr()
    assert run(path, tmp_path) == 0
    assert len(records(tmp_path)) == len(first)  # no new attempt
    captured = capsys.readouterr()
    assert "0 to run, 4 already done" in captured.err
    assert "4 tasks: 0 succeeded, 0 failed, 4 skipped" in captured.out


def test_a_partly_done_batch_runs_only_the_missing_tasks(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "n1.txt").write_text("from an earlier run")
    assert run(batch_file(tmp_path, WRITE), tmp_path) == 0
    assert sorted(r.index for r in records(tmp_path)) == [0, 2, 3]
    assert outputs(tmp_path)["n1.txt"] == "from an earlier run"


def test_a_failing_task_does_not_stop_the_others_and_the_run_exits_1(tmp_path, capsys):
    assert run(batch_file(tmp_path, FAIL_TASK_2), tmp_path) == 1
    assert set(outputs(tmp_path)) == {"n0.txt", "n1.txt", "n3.txt"}
    captured = capsys.readouterr()
    assert "task 2 attempt 0" in captured.err and "failed for good" in captured.err
    assert "NonZeroExit: the command exited with code 3" in captured.err
    assert "4 tasks: 3 succeeded, 1 failed" in captured.out
    assert "NonZeroExit" in captured.out  # the failures table


def test_a_failed_attempt_is_retried_as_spec_retry_says(tmp_path, capsys):
    path = batch_file(
        tmp_path, FAIL_FIRST_ATTEMPT, tasks=2, retry={"limit": 1, "backoffSeconds": 1}
    )
    assert run(path, tmp_path) == 0
    attempts = sorted((r.index, r.attempt, r.outcome) for r in records(tmp_path))
    assert attempts == [
        (0, 0, "failed"),
        (0, 1, "succeeded"),
        (1, 0, "failed"),
        (1, 1, "succeeded"),
    ]
    # The line says what the reader waits for: the backoff, not the failed attempt's run time.
    assert re.search(
        r"will be retried as attempt 1 after a backoff of [01]\.\ds", capsys.readouterr().err
    )


def test_a_non_retriable_exit_code_fails_the_task_at_once(tmp_path):
    path = batch_file(
        tmp_path,
        FAIL_FIRST_ATTEMPT,
        tasks=2,
        retry={"limit": 3, "backoffSeconds": 0, "nonRetriableExitCodes": [5]},
    )
    assert run(path, tmp_path) == 1
    assert sorted((r.index, r.attempt) for r in records(tmp_path)) == [(0, 0), (1, 0)]


def test_more_failures_than_max_failed_tasks_fail_the_batch_and_stop_dispatch(tmp_path, capsys):
    path = batch_file(tmp_path, "import sys; sys.exit(4)", tasks=8, maxFailedTasks=0)
    assert run(path, tmp_path) == 1
    assert len(records(tmp_path)) < 8
    assert "shots: Failed" in capsys.readouterr().out


def test_the_batch_deadline_stops_running_tasks_and_fails_the_batch(tmp_path, capsys):
    path = batch_file(tmp_path, "import time; time.sleep(60)", tasks=3, activeDeadlineSeconds=1)
    began = time.monotonic()
    assert run(path, tmp_path, "--grace", "1") == 1
    assert time.monotonic() - began < 20
    assert "shots: Failed" in capsys.readouterr().out
    assert {r.outcome for r in records(tmp_path)} == {"stopped"}
    assert outputs(tmp_path) == {}


def test_an_output_written_by_a_failed_attempt_is_removed_so_it_never_counts_as_done(tmp_path):
    half_then_fail = "import sys; open(sys.argv[1], 'w').write('half'); sys.exit(1)"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "n1.txt").write_text("finished long ago")
    assert run(batch_file(tmp_path, half_then_fail, tasks=2), tmp_path) == 1
    assert outputs(tmp_path) == {"n1.txt": "finished long ago"}


def test_a_task_whose_output_escapes_the_output_root_fails_alone(tmp_path, capsys):
    path = batch_file(
        tmp_path,
        "import sys; open(sys.argv[1], 'w').write('ok')",
        tasks=2,
        outputs=["{n}.txt"],
    )
    # Make task 1's output absolute, outside outputRoot, through its parameter.
    text = yaml.safe_load(path.read_text())
    text["spec"]["tasks"] = {"items": [{"n": "ok"}, {"n": "/etc/escape"}]}
    path.write_text(yaml.safe_dump(text))
    assert run(path, tmp_path) == 1
    assert outputs(tmp_path) == {"ok.txt": "ok"}
    assert [r.index for r in records(tmp_path)] == [0]  # task 1 never started
    assert "InvalidTask" in capsys.readouterr().out


def test_a_task_on_a_cpu_slot_gets_the_task_contract_and_no_gpu(tmp_path):
    dump = (
        "import json, os, sys; keys = ['GPUBATCH_TASK_INDEX', 'GPUBATCH_PARAMS', "
        "'GPUBATCH_NODE_NAME', 'CUDA_VISIBLE_DEVICES', 'SHOT']; "
        "json.dump([os.environ.get(k) for k in keys], open(sys.argv[1], 'w'))"
    )
    path = batch_file(tmp_path, dump, tasks=1, env=[{"name": "SHOT", "value": "shot-{n}"}])
    assert run(path, tmp_path) == 0
    index, params, node, visible, shot = json.loads(outputs(tmp_path)["n0.txt"])
    assert (index, json.loads(params), visible, shot) == ("0", {"n": 0}, "", "shot-0")
    assert node.endswith(("/cpu0", "/cpu1"))


def fake_gpu(index: int, free_gib: int) -> GpuDevice:
    """A FAKE device record (no GPU behind it), to check the pinning a task is given."""
    return GpuDevice(
        index=index,
        name="FAKE-GPU",
        uuid=f"GPU-fake-{index}",
        memory_total_bytes=80 << 30,
        memory_used_bytes=(80 - free_gib) << 30,
        memory_free_bytes=free_gib << 30,
    )


def runner_on_fake_gpus(
    tmp_path: Path,
    tasks: int,
    report: GpuReport,
    *,
    readings: Any = None,
    display: Any = None,
    **options: Any,
) -> LocalRunner:
    """A runner on one slot per FAKE device of `report`; `readings` (default: `report` every
    time) is what NVML answers at each dispatch."""
    dump = "import os, sys; open(sys.argv[1], 'w').write(os.environ['CUDA_VISIBLE_DEVICES'])"
    loaded = load_batch_file(batch_file(tmp_path, dump, tasks=tasks))
    prepared = prepare(loaded)
    slots = tuple(Slot(f"gpu{d.index}", (d,)) for d in report.devices)
    return LocalRunner(
        loaded.name,
        prepared,
        scan_outputs(prepared),
        slots,
        RunOptions(state_dir=tmp_path / "state", **options),
        gpu_reporter=readings or (lambda: report),
        display=display,
    )


def test_a_gpu_slot_pins_its_task_with_the_fake_devices_uuid(tmp_path):
    report = GpuReport(devices=(fake_gpu(0, 70), fake_gpu(1, 70)))
    outcome = runner_on_fake_gpus(tmp_path, 2, report).run()
    assert outcome.status.counts.succeeded == 2
    given = {r.slot: outputs(tmp_path)[f"n{r.index}.txt"] for r in outcome.records}
    assert given == {"gpu0": "GPU-fake-0", "gpu1": "GPU-fake-1"}


def test_freest_first_gives_the_first_task_to_the_fake_card_with_most_free_memory(tmp_path):
    report = GpuReport(devices=(fake_gpu(0, 5), fake_gpu(1, 60)))
    outcome = runner_on_fake_gpus(tmp_path, 1, report, freest_first="bytes").run()
    assert [r.slot for r in outcome.records] == ["gpu1"]
    assert outputs(tmp_path) == {"n0.txt": "GPU-fake-1"}


class Messages:
    """The runner's Reporter, keeping the messages."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)

    def progress(self, counts: TaskCounts, *, force: bool = False) -> None:
        pass


def test_a_fake_card_below_the_free_memory_threshold_gets_no_task_until_it_frees_up(tmp_path):
    # NVML readings as recorded on a shared workstation: at the first dispatch someone else's
    # job holds 75 of card 0's 80 GiB; at every later reading it has ended.
    readings = iter([GpuReport(devices=(fake_gpu(0, 5), fake_gpu(1, 70)))])
    freed = GpuReport(devices=(fake_gpu(0, 70), fake_gpu(1, 70)))
    messages = Messages()
    runner = runner_on_fake_gpus(
        tmp_path,
        3,
        freed,
        readings=lambda: next(readings, freed),
        display=messages,
        gpu_threshold=GpuThreshold(min_free_bytes=16 << 30),
    )
    outcome = runner.run()
    assert outcome.status.counts.succeeded == 3
    first = min(outcome.records, key=lambda r: r.start)
    assert first.slot == "gpu1"
    assert messages.lines[0].startswith(
        "slot gpu0 passed over: GPU 0 has 5.0 GiB free, less than 16.0 GiB"
    )
    assert messages.lines[1].startswith("slot gpu0 takes tasks again")


def test_the_task_deadline_stops_a_task_that_runs_too_long(tmp_path, capsys):
    path = batch_file(tmp_path, "import time; time.sleep(60)", tasks=1, taskDeadlineSeconds=1)
    began = time.monotonic()
    assert run(path, tmp_path, "--grace", "1") == 1
    assert time.monotonic() - began < 20
    (only,) = records(tmp_path)
    assert only.result is not None and only.result.reason == "DeadlineExceeded"


SLOW_UNLESS_TASK_0 = """\
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
out = open(path, 'w')
out.write('half')
out.flush()
if n:
    folder = os.path.dirname(os.path.abspath(path))
    open(os.path.join(os.environ['PIDS'], str(n)), 'w').write(str(os.getpid()))
    while os.path.exists(os.environ['HOLD']):
        time.sleep(0.05)
out.write(' and the rest')
"""


@pytest.mark.parametrize("atomic", [False, True], ids=["plain-outputs", "atomic-outputs"])
def test_ctrl_c_stops_every_task_leaves_no_half_output_and_a_rerun_continues(tmp_path, atomic):
    pids, hold = tmp_path / "pids", tmp_path / "hold"
    pids.mkdir()
    hold.write_text("")
    path = batch_file(
        tmp_path,
        SLOW_UNLESS_TASK_0,
        worker={"requireGPU": False, "atomicOutputs": atomic},
        env=[{"name": "PIDS", "value": str(pids)}, {"name": "HOLD", "value": str(hold)}],
    )
    command = [
        *GPUBATCH,
        "run",
        str(path),
        "--slots",
        "2",
        "--grace",
        "3",
        "--state-dir",
        str(tmp_path / "state"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(pids.iterdir())) < 2:  # tasks 1 and 2 are running (task 0 is done)
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "tasks 1 and 2 never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "stopping: SIGINT passed to 2 running task(s)" in stderr
    assert "interrupted" in stdout
    for pid_file in pids.iterdir():  # every task process is gone
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)
    assert sorted(os.listdir(tmp_path / "out")) == ["n0.txt"]  # no half or partial outputs
    state = json.loads((tmp_path / "state" / "status.json").read_text())
    assert state["interrupted"] is True
    assert state["status"]["counts"]["failed"] == 0  # stopped attempts are not failures
    stopped = [r for r in records(tmp_path) if r.outcome == "stopped"]
    assert sorted(r.index for r in stopped) == [1, 2]

    hold.unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "3 to run, 1 already done" in rerun.stderr
    assert outputs(tmp_path) == {f"n{i}.txt": "half and the rest" for i in range(4)}


# Task n: holds an flock on its own lock file while it runs (a second copy running at the same
# time cannot take it and records itself in `overlap`), writes half its output, waits until
# the test lets it go on (the HOLD file is gone), then finishes the output.
EXCLUSIVE_HALF_THEN_REST = """
import fcntl, os, sys, time
if 'PIDS' in os.environ:
    open(os.environ['PIDS'] + '/' + sys.argv[2], 'w').write(str(os.getpid()))
guard = open(os.environ['OVERLAP'] + '.lock-' + sys.argv[2], 'w')
try:
    fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    open(os.environ['OVERLAP'], 'a').write(sys.argv[2] + ' ')
out = open(sys.argv[1], 'w')
out.write('half')
out.flush()
while os.path.exists(os.environ['HOLD']):
    time.sleep(0.05)
out.write(' and the rest')
"""


@pytest.mark.parametrize("atomic", [False, True], ids=["plain-outputs", "atomic-outputs"])
def test_after_kill_9_of_the_runner_a_rerun_completes_every_output_running_each_task_once(
    tmp_path, atomic
):
    hold, overlap, pids = tmp_path / "hold", tmp_path / "overlap", tmp_path / "pids"
    hold.write_text("")
    pids.mkdir()
    path = batch_file(
        tmp_path,
        EXCLUSIVE_HALF_THEN_REST,
        tasks=6,
        worker={"requireGPU": False, "atomicOutputs": atomic},
        env=[
            {"name": "HOLD", "value": str(hold)},
            {"name": "OVERLAP", "value": str(overlap)},
            {"name": "PIDS", "value": str(pids)},
        ],
    )
    command = [*GPUBATCH, "run", str(path), "--slots", "2", "--no-progress"]
    command += ["--state-dir", str(tmp_path / "state")]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    halves = tmp_path / "out"
    deadline = time.monotonic() + 60
    while len([p for p in halves.glob("*") if p.name.endswith((".txt", ".partial"))]) < 2:
        assert first.poll() is None and time.monotonic() < deadline, "two tasks never started"
        time.sleep(0.05)
    first.kill()  # SIGKILL: the runner can clean up nothing
    first.wait()
    try:
        # The running tasks wait for HOLD, so only a kill ends them: the runner's watchdog's.
        running = [int(p.read_text()) for p in pids.iterdir()]
        assert running
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in running):
            assert time.monotonic() < deadline, "tasks outlived the killed runner"
            time.sleep(0.02)
    finally:
        hold.unlink()  # from now on every task can finish (also any that outlived the runner)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert rerun.returncode == 0, rerun.stderr
    assert "0 already done" in rerun.stderr  # the two half-written outputs were not taken
    assert outputs(tmp_path) == {f"n{i}.txt": "half and the rest" for i in range(6)}
    assert not overlap.exists()  # no task ever ran twice at once


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_second_run_of_a_batch_still_running_is_refused_with_what_to_do(tmp_path, capsys):
    hold, overlap = tmp_path / "hold", tmp_path / "overlap"
    hold.write_text("")
    path = batch_file(
        tmp_path,
        EXCLUSIVE_HALF_THEN_REST,
        tasks=2,
        env=[{"name": "HOLD", "value": str(hold)}, {"name": "OVERLAP", "value": str(overlap)}],
    )
    command = [*GPUBATCH, "run", str(path), "--slots", "2", "--no-progress"]
    command += ["--state-dir", str(tmp_path / "state")]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(list((tmp_path / "out").glob("*.txt"))) < 2:
            assert first.poll() is None and time.monotonic() < deadline, "tasks never started"
            time.sleep(0.05)
        assert run(path, tmp_path) == 3
        assert "this batch is already running from" in capsys.readouterr().err
        hold.unlink()
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert outputs(tmp_path) == {f"n{i}.txt": "half and the rest" for i in range(2)}
    assert not overlap.exists()


def test_status_and_report_read_the_local_records_and_plot_a_timeline(tmp_path, capsys):
    path = batch_file(tmp_path, FAIL_TASK_2)
    assert run(path, tmp_path) == 1
    capsys.readouterr()
    state = ["--local", "--state-dir", str(tmp_path / "state")]
    assert main(["status", "shots", *state]) == 1
    status = capsys.readouterr().out
    assert "state: Failed" in status and "failed tasks: 2" in status
    plot = tmp_path / "timeline.png"
    assert main(["report", "shots", *state, "--plot", str(plot)]) == 0
    report = capsys.readouterr().out
    assert "CPU (no GPU)" in report and "speed-up" in report
    assert "recent failures (1, newest last)" in report
    assert "per slot (all 1 run(s))" in report
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_after_a_rerun_that_skipped_everything_shows_the_batch_history(tmp_path, capsys):
    path = batch_file(tmp_path, WRITE)
    assert run(path, tmp_path) == 0
    assert run(path, tmp_path) == 0  # every task skipped: this run made no attempt
    capsys.readouterr()
    state = ["--local", "--state-dir", str(tmp_path / "state")]
    plot = tmp_path / "timeline.png"
    assert main(["report", "shots", *state, "--plot", str(plot)]) == 0
    report = capsys.readouterr().out
    assert "runs with attempts (1, oldest first)" in report
    assert "cpu0" in report and "cpu1" in report
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["status", "shots", *state]) == 0
    assert "runs with attempts (oldest first)" in capsys.readouterr().out


def test_status_of_a_local_run_still_going_exits_0_until_something_fails(tmp_path, capsys):
    counts = TaskCounts(total=4, succeeded=1, running=2, pending=1)
    Journal(tmp_path / "state", "r1").save(
        LocalState(
            name="shots",
            run="r1",
            updated=datetime.now(UTC),
            slots=[],
            status=GPUBatchStatus(counts=counts, progress=counts.progress()),
        )
    )
    args = ["status", "shots", "--local", "--state-dir", str(tmp_path / "state")]
    assert main(args) == 0
    assert "1/4" in capsys.readouterr().out


def test_report_of_a_batch_never_run_here_says_where_records_come_from(tmp_path, capsys):
    assert main(["report", "nothing", "--local", "--state-dir", str(tmp_path / "x")]) == 3
    assert "gpubatch run FILE" in capsys.readouterr().err


def test_the_quickstart_example_runs_on_cpu_slots_with_the_console_script(tmp_path):
    example = yaml.safe_load((REPO / "examples" / "quickstart-local.yaml").read_text())
    example["spec"]["outputRoot"] = str(tmp_path / "out")
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(example))
    done = subprocess.run(
        [*GPUBATCH, "run", str(path), "--slots", "2", "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "12 tasks: 12 succeeded" in done.stdout
    assert "CPU slot(s) as asked (--slots)" in done.stderr
    assert (tmp_path / "out" / "gamma-4.txt").read_text() == "gamma gamma gamma gamma\n"


def test_a_command_that_cannot_start_stops_the_batch_instead_of_retrying(tmp_path, capsys):
    path = batch_file(tmp_path, "unused", tasks=6, retry={"limit": 3, "backoffSeconds": 0})
    text = yaml.safe_load(path.read_text())
    text["spec"]["template"]["spec"]["containers"][0]["command"] = ["pyhton3-no-such", "{n}"]
    path.write_text(yaml.safe_dump(text))
    assert run(path, tmp_path) == 2
    captured = capsys.readouterr()
    assert "cannot start 'pyhton3-no-such'" in captured.err
    assert "no other task starts; fix the command" in captured.err
    assert len(records(tmp_path)) <= 2  # the attempts already running on the 2 slots, no retry


def test_an_output_folder_that_cannot_be_written_is_found_before_any_task_runs(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses even root
        unwritable = "/sys/gpubatch-no-such-folder"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        unwritable = str(tmp_path / "ro")
    path = batch_file(tmp_path, WRITE, outputRoot=unwritable)
    assert run(path, tmp_path) == 3
    assert f"cannot write outputs to {unwritable}" in capsys.readouterr().err
    assert records(tmp_path) == []


def test_outputs_beyond_the_first_scan_are_checked_while_tasks_run(tmp_path, monkeypatch, capsys):
    from gpubatch.local import runner as runner_module

    monkeypatch.setattr(runner_module, "SCAN_FIRST", 2)
    monkeypatch.setattr(runner_module, "SCAN_CHUNK", 3)
    path = batch_file(tmp_path, WRITE, tasks=8)
    (tmp_path / "out").mkdir()
    for n in range(4, 8):  # done by an earlier run
        (tmp_path / "out" / f"n{n}.txt").write_text("earlier")
    assert run(path, tmp_path) == 0
    assert "the outputs of the other 6 are checked while tasks run" in capsys.readouterr().err
    assert outputs(tmp_path) == {
        **{f"n{n}.txt": f"shot {n}" for n in range(4)},
        **{f"n{n}.txt": "earlier" for n in range(4, 8)},  # skipped, never redone
    }
    state = json.loads((tmp_path / "state" / "status.json").read_text())
    assert state["status"]["counts"]["skipped"] == 4


def test_run_refuses_two_tasks_that_write_the_same_output_before_starting_any(tmp_path, capsys):
    path = batch_file(tmp_path, WRITE)
    body = yaml.safe_load(path.read_text())
    axes = {"n": {"range": {"stop": 2}}, "scale": {"values": ["a", "b"]}}
    body["spec"]["tasks"] = {"matrix": axes}
    path.write_text(yaml.safe_dump(body))
    assert run(path, tmp_path) == 2
    assert "tasks 0 and 1 both write output" in capsys.readouterr().err
    assert outputs(tmp_path) == {}
