"""The worker, run for real: `gpubatch-worker` as a process, real user commands as children.

The user command is always `sys.executable -c <script>`, so tests need nothing but Python. This
machine has no GPU, so tasks run with GPUBATCH_REQUIRE_GPU=false unless a test is about the GPU
check itself; the no-GPU test observes the real NVML failure here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from s3_standin import S3StandIn, bucket, s3_server

from gpubatch.api.result import (
    TERMINATION_MESSAGE_MAX_BYTES,
    ExitCode,
    Outcome,
    Reason,
    TaskResult,
)
from gpubatch.api.taskenv import TaskEnvironment
from gpubatch.core.partial import partial_path, partial_paths
from gpubatch.edges import storage
from gpubatch.edges.nvml import GpuDevice, GpuReport, probe_gpus
from gpubatch.worker.run import StopRequest
from gpubatch.worker.task import run_task

pytestmark = pytest.mark.process
__all__ = ["bucket", "s3_server"]  # fixtures used by name below

_CONSOLE_SCRIPT = Path(sys.executable).with_name("gpubatch-worker")
WORKER = (
    [str(_CONSOLE_SCRIPT)]
    if _CONSOLE_SCRIPT.exists()
    else [
        sys.executable,
        "-m",
        "gpubatch.worker.main",
    ]
)


def py(script: str, *args: str) -> list[str]:
    """A user command: this Python running `script` with `args`."""
    return [sys.executable, "-c", textwrap.dedent(script), *args]


@dataclass
class WorkerRun:
    returncode: int
    stdout: str
    stderr: str
    result_text: str

    @property
    def result(self) -> TaskResult:
        return TaskResult.decode(self.result_text)


def worker_environ(tmp_path: Path, **task: str) -> dict[str, str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GPUBATCH_") and k != "CUDA_VISIBLE_DEVICES"
    }
    environ |= {
        "GPUBATCH_BATCH": "test-batch",
        "GPUBATCH_TASK_INDEX": "7",
        "GPUBATCH_REQUIRE_GPU": "false",
        "GPUBATCH_RESULT_PATH": str(tmp_path / "termination-log"),
        "GPUBATCH_NODE_NAME": "node-a",
    }
    environ |= {f"GPUBATCH_{name.upper()}": value for name, value in task.items()}
    return environ


def start_worker(tmp_path: Path, command: Sequence[str], **task: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*WORKER, "--", *command],
        env=worker_environ(tmp_path, **task),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], tmp_path: Path, timeout: float = 20) -> WorkerRun:
    stdout, stderr = process.communicate(timeout=timeout)
    log = tmp_path / "termination-log"
    return WorkerRun(process.returncode, stdout, stderr, log.read_text() if log.exists() else "")


def run_worker(tmp_path: Path, command: Sequence[str], **task: str) -> WorkerRun:
    return finish(start_worker(tmp_path, command, **task), tmp_path)


def outputs_env(*paths: Path | str) -> str:
    return json.dumps([str(p) for p in paths])


def wait_for(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in {"Z", "X"}


# -------------------------------------------------------------------------------- outcomes
def test_successful_command_succeeds_and_records_the_result(tmp_path: Path) -> None:
    out = tmp_path / "out" / "result.json"
    run = run_worker(
        tmp_path,
        py(
            """
            import json, os, sys
            print("working on", os.environ["GPUBATCH_TASK_INDEX"])
            with open(sys.argv[1], "w") as f:
                json.dump(json.loads(os.environ["GPUBATCH_PARAMS"]), f)
            """,
            str(out),
        ),
        outputs=outputs_env(out),
        params='{"video": "a.mp4"}',
    )
    assert run.returncode == 0, run.stderr
    assert "working on 7" in run.stdout  # the command's output is streamed through
    assert json.loads(out.read_text()) == {"video": "a.mp4"}  # parent dir was created for it
    result = run.result
    assert result.outcome is Outcome.SUCCEEDED
    assert (result.exit_code, result.reason) == (0, Reason.COMPLETED)
    assert result.node == "node-a"
    assert 0 < result.duration_seconds < 20
    assert "no GPU" in run.stderr  # the NVML report is logged even when no GPU is required


def test_failing_command_exit_code_is_propagated_and_recorded(tmp_path: Path) -> None:
    run = run_worker(
        tmp_path,
        py("import sys; print('model file is corrupt', file=sys.stderr); sys.exit(3)"),
    )
    assert run.returncode == 3
    result = run.result
    assert (result.outcome, result.exit_code, result.reason) == (
        Outcome.FAILED,
        3,
        Reason.NON_ZERO_EXIT,
    )
    assert result.message.endswith("model file is corrupt\n")  # why it failed, without logs
    assert "model file is corrupt" in run.stderr  # and the stderr still streamed


def test_command_killed_by_a_signal_reports_128_plus_n(tmp_path: Path) -> None:
    run = run_worker(tmp_path, py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert run.returncode == 137
    assert run.result.reason is Reason.SIGNALED
    assert "SIGKILL (often the out-of-memory killer)" in run.result.message


def test_command_not_found_exits_127(tmp_path: Path) -> None:
    run = run_worker(tmp_path, ["gpubatch-no-such-program-xyz", "--flag"])
    assert run.returncode == int(ExitCode.COMMAND_NOT_FOUND) == 127
    assert run.result.reason is Reason.COMMAND_NOT_FOUND


def test_command_that_is_not_executable_exits_126(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")  # no execute bit
    run = run_worker(tmp_path, [str(script)])
    assert run.returncode == int(ExitCode.COMMAND_NOT_EXECUTABLE) == 126


# --------------------------------------------------------------------------------- skipping
def test_task_whose_outputs_all_exist_is_skipped_without_running(tmp_path: Path) -> None:
    done = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for path in done:
        path.write_text("finished earlier")
    marker = tmp_path / "ran"
    run = run_worker(
        tmp_path, py("import sys; open(sys.argv[1], 'w')", str(marker)), outputs=outputs_env(*done)
    )
    assert run.returncode == 0
    assert not marker.exists()
    assert (run.result.outcome, run.result.reason) == (Outcome.SKIPPED, Reason.OUTPUTS_EXIST)


def test_task_is_skipped_even_without_a_gpu_when_its_outputs_exist(tmp_path: Path) -> None:
    done = tmp_path / "a.mp4"
    done.write_text("finished earlier")
    run = run_worker(tmp_path, py("pass"), outputs=outputs_env(done), require_gpu="true")
    assert run.returncode == 0
    assert run.result.outcome is Outcome.SKIPPED


def test_task_with_one_output_missing_runs(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("old")
    run = run_worker(
        tmp_path,
        py("import sys; open(sys.argv[1], 'w').write('new')", str(tmp_path / "b")),
        outputs=outputs_env(tmp_path / "a", tmp_path / "b"),
    )
    assert run.result.outcome is Outcome.SUCCEEDED
    assert (tmp_path / "b").read_text() == "new"


def test_task_without_declared_outputs_is_never_skipped(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    run = run_worker(tmp_path, py("import sys; open(sys.argv[1], 'w')", str(marker)))
    assert run.result.outcome is Outcome.SUCCEEDED
    assert marker.exists()


def test_skip_existing_false_runs_again(tmp_path: Path) -> None:
    out = tmp_path / "a"
    out.write_text("old")
    run = run_worker(
        tmp_path,
        py("import sys; open(sys.argv[1], 'w').write('new')", str(out)),
        outputs=outputs_env(out),
        skip_existing="false",
    )
    assert run.result.outcome is Outcome.SUCCEEDED
    assert out.read_text() == "new"


def test_command_exiting_zero_without_its_outputs_fails(tmp_path: Path) -> None:
    run = run_worker(tmp_path, py("pass"), outputs=outputs_env(tmp_path / "never.mp4"))
    assert run.returncode == ExitCode.OUTPUT_MISSING
    assert run.result.reason is Reason.OUTPUT_MISSING
    assert "never.mp4" in run.result.message


# ------------------------------------------------------------------------------------- GPU
def test_required_gpu_absent_fails_with_no_gpu_and_never_runs_the_command(
    tmp_path: Path,
) -> None:
    if probe_gpus().available:
        pytest.skip("this machine has a GPU; the no-GPU path cannot be observed here")
    marker = tmp_path / "ran-on-cpu"
    run = run_worker(
        tmp_path, py("import sys; open(sys.argv[1], 'w')", str(marker)), require_gpu="true"
    )
    assert run.returncode == ExitCode.NO_GPU
    assert not marker.exists()
    assert run.result.reason is Reason.NO_GPU
    assert run.result.message.startswith("no GPU: ")
    assert "GPUBATCH_REQUIRE_GPU=false" in run.result.message


def test_gpu_not_required_runs_on_a_machine_without_gpu(tmp_path: Path) -> None:
    run = run_worker(tmp_path, py("print('cpu is fine')"), require_gpu="false")
    assert run.returncode == 0
    assert run.result.gpus == ()


def test_worker_never_sets_cuda_visible_devices(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    run_worker(
        tmp_path,
        py(
            "import json, os, sys; json.dump(os.environ.get('CUDA_VISIBLE_DEVICES'),"
            " open(sys.argv[1], 'w'))",
            str(seen),
        ),
    )
    assert json.loads(seen.read_text()) is None


# ---------------------------------------------------------------------------------- atomic
ATOMIC_WRITER = """
    import json, os, sys
    partial = json.loads(os.environ["GPUBATCH_PARTIAL_OUTPUTS"])[0]
    final = json.loads(os.environ["GPUBATCH_OUTPUTS"])[0]
    with open(partial, "w") as f:
        f.write("frames...")
    print("final visible while writing:", os.path.exists(final))
    sys.exit(int(sys.argv[1]))
"""


def atomic_task(final: Path) -> dict[str, str]:
    return {
        "outputs": outputs_env(final),
        "partial_outputs": outputs_env(partial_path(str(final))),
        "atomic_outputs": "true",
    }


def test_atomic_output_appears_only_after_success(tmp_path: Path) -> None:
    final = tmp_path / "out" / "clip.mp4"
    run = run_worker(tmp_path, py(ATOMIC_WRITER, "0"), **atomic_task(final))
    assert run.returncode == 0, run.stderr
    assert "final visible while writing: False" in run.stdout
    assert final.read_text() == "frames..."
    assert not Path(partial_path(str(final))).exists()


def test_atomic_output_of_a_failed_command_is_never_promoted(tmp_path: Path) -> None:
    final = tmp_path / "clip.mp4"
    run = run_worker(tmp_path, py(ATOMIC_WRITER, "1"), **atomic_task(final))
    assert run.returncode == 1
    assert not final.exists()
    assert not Path(partial_path(str(final))).exists()  # the half-written file is removed


def test_failed_attempt_removes_the_outputs_it_wrote_so_a_retry_does_not_skip(
    tmp_path: Path,
) -> None:
    made = tmp_path / "made-by-this-attempt.bin"
    kept = tmp_path / "existed-before.bin"
    kept.write_text("from an earlier run")
    writer = """
        import json, os, sys
        for path in json.loads(os.environ["GPUBATCH_OUTPUTS"]):
            open(path, "a").write("half")
        sys.exit(3)
    """
    run = run_worker(tmp_path, py(writer), outputs=outputs_env(made, kept))
    assert run.returncode == 3
    assert not made.exists()  # half-written by the failed attempt: gone
    assert kept.exists()  # existed before the attempt: never touched


def test_stale_partial_of_a_killed_attempt_is_not_promoted(tmp_path: Path) -> None:
    final = tmp_path / "clip.mp4"
    Path(partial_path(str(final))).write_text("half of an earlier attempt")
    run = run_worker(tmp_path, py("pass"), **atomic_task(final))  # exits 0, writes nothing
    assert run.returncode == ExitCode.OUTPUT_MISSING
    assert not final.exists()
    assert "partial outputs (atomic mode)" in run.result.message


def test_atomic_outputs_on_s3_are_promoted_after_success(
    tmp_path: Path, s3_server: S3StandIn, bucket: str
) -> None:
    final = f"s3://{bucket}/out/x.npz"
    writer = """
        import json, os, fsspec
        partial = json.loads(os.environ["GPUBATCH_PARTIAL_OUTPUTS"])[0]
        with fsspec.open(partial, "wb") as f:
            f.write(b"npz")
    """
    process = subprocess.Popen(
        [*WORKER, "--", *py(writer)],
        env=worker_environ(
            tmp_path,
            outputs=json.dumps([final]),
            partial_outputs=json.dumps([partial_path(final)]),
            atomic_outputs="true",
        )
        | s3_server.fsspec_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = finish(process, tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    assert storage.existing([final, partial_path(final)]) == {final}


# ------------------------------------------------------------------------ signals, deadline
SIGNAL_RECORDER = """
    import pathlib, signal, sys, time
    record, ready = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    def stop(signum, frame):
        record.write_text(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ready.touch()
    time.sleep(30)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_is_forwarded_to_the_command(tmp_path: Path, signum: int) -> None:
    record, ready = tmp_path / "record", tmp_path / "ready"
    process = start_worker(tmp_path, py(SIGNAL_RECORDER, str(record), str(ready)))
    wait_for(ready)
    process.send_signal(signum)
    run = finish(process, tmp_path)
    assert record.read_text() == signal.Signals(signum).name  # the child got it
    assert run.returncode == 128 + signum
    assert run.result.reason is Reason.INTERRUPTED
    assert "its exit code: 0" in run.result.message


def test_deadline_stops_a_sleeping_command(tmp_path: Path) -> None:
    started = time.monotonic()
    run = run_worker(tmp_path, py("import time; time.sleep(60)"), deadline_seconds="0.5")
    assert time.monotonic() - started < 10
    assert run.returncode == ExitCode.DEADLINE_EXCEEDED
    assert run.result.reason is Reason.DEADLINE_EXCEEDED
    assert "deadline of 0.5s" in run.result.message


def test_deadline_kills_a_command_that_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    stubborn = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
    """
    started = time.monotonic()
    run = run_worker(tmp_path, py(stubborn), deadline_seconds="0.5", grace_seconds="0.5")
    assert time.monotonic() - started < 10
    assert run.returncode == ExitCode.DEADLINE_EXCEEDED
    assert "killed after the grace period" in run.result.message


def test_processes_left_behind_by_the_command_are_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    leaver = """
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open(sys.argv[1], "w").write(str(child.pid))
    """
    run = run_worker(tmp_path, py(leaver, str(pid_file)))
    assert run.returncode == 0
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


# ------------------------------------------------------------------------- result and argv
def test_termination_message_stays_under_4_kib_with_a_huge_message(tmp_path: Path) -> None:
    outputs = [tmp_path / f"{'very-long-output-name-' * 8}{i}.mp4" for i in range(60)]
    run = run_worker(
        tmp_path,
        py("import sys; sys.stderr.write('e' * 200_000)"),
        outputs=outputs_env(*outputs),
    )
    assert run.returncode == ExitCode.OUTPUT_MISSING
    assert len(run.result_text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    assert run.result.reason is Reason.OUTPUT_MISSING
    assert run.result.message.endswith("59.mp4")


def test_shell_metacharacters_are_passed_literally(tmp_path: Path) -> None:
    seen = tmp_path / "argv.json"
    tricky = ["a b", "; touch pwned", "$(touch pwned2)", "*", "|", "'\"", "$HOME", ""]
    run = run_worker(
        tmp_path,
        py("import json, sys; json.dump(sys.argv[2:], open(sys.argv[1], 'w'))", str(seen), *tricky),
    )
    assert run.returncode == 0
    assert json.loads(seen.read_text()) == tricky
    assert not (tmp_path / "pwned").exists()
    assert not Path("pwned2").exists()


def test_shell_mode_runs_the_joined_words_through_sh(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    run = run_worker(tmp_path, ["echo", "one", "&&", "echo", "two", ">", str(out)], shell="true")
    assert run.returncode == 0
    assert out.read_text() == "two\n"
    assert "one" in run.stdout


def test_worker_takes_the_program_from_args_without_double_dash(tmp_path: Path) -> None:
    process = subprocess.run(
        [*WORKER, *py("print('no dashes')")],
        env=worker_environ(tmp_path),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert process.returncode == 0
    assert "no dashes" in process.stdout


def test_unknown_worker_option_is_refused(tmp_path: Path) -> None:
    process = subprocess.run(
        [*WORKER, "--verbose", "python"],
        env=worker_environ(tmp_path),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert process.returncode == ExitCode.WORKER_ERROR
    assert "put the task's command after `--`" in process.stderr


def test_malformed_task_environment_fails_with_worker_error_and_a_result(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    run = run_worker(
        tmp_path, py("import sys; open(sys.argv[1], 'w')", str(marker)), task_index="seven"
    )
    assert run.returncode == ExitCode.WORKER_ERROR
    assert not marker.exists()
    assert "GPUBATCH_TASK_INDEX must be an integer" in run.result.message


def test_missing_command_is_a_worker_error(tmp_path: Path) -> None:
    run = run_worker(tmp_path, [])
    assert run.returncode == ExitCode.WORKER_ERROR
    assert "no command" in run.result.message


def test_report_gpus_prints_json_and_exits_no_gpu_here() -> None:
    process = subprocess.run([*WORKER, "--report-gpus"], capture_output=True, text=True, timeout=20)
    report = json.loads(process.stdout)
    expected = 0 if report["available"] else ExitCode.NO_GPU
    assert process.returncode == expected
    assert set(report) >= {"available", "driverVersion", "devices", "problem"}


def test_worker_runs_without_the_operator_dependencies(tmp_path: Path) -> None:
    """The worker extra is pydantic, PyYAML and nvidia-ml-py: nothing else may be imported."""
    blocked = ["kopf", "kubernetes", "aiohttp", "prometheus_client", "fsspec", "s3fs", "yaml"]
    launcher = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from gpubatch.worker.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "o.txt"
    process = subprocess.run(
        [sys.executable, "-c", launcher, "--", *py("import sys; open(sys.argv[1],'w')", str(out))],
        env=worker_environ(tmp_path, outputs=outputs_env(out)),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert process.returncode == 0, process.stderr
    assert (
        TaskResult.decode((tmp_path / "termination-log").read_text()).outcome is Outcome.SUCCEEDED
    )


# ----------------------------------------------------- run_task as a library (CLI local mode)
def a_task_env(tmp_path: Path, **changes: object) -> TaskEnvironment:
    fields: dict[str, object] = {
        "batch": "local",
        "task_index": 0,
        "require_gpu": False,
        "result_path": str(tmp_path / "result.json"),
    }
    fields.update(changes)
    return TaskEnvironment.model_validate(fields)


def report_of_a_fake_gpu() -> GpuReport:
    """A GpuReport as a FAKE NVML would give it: tests the recording, not a GPU."""
    device = GpuDevice(0, "FAKE GPU model", "GPU-fake-0001", 16 * 2**30, 2**30, 15 * 2**30)
    return GpuReport(devices=(device,), driver_version="fake")


def test_run_task_records_the_gpu_it_was_given(tmp_path: Path) -> None:
    env = a_task_env(tmp_path, require_gpu=True)
    result = run_task(env, py("pass"), gpu_reporter=report_of_a_fake_gpu)
    assert result.outcome is Outcome.SUCCEEDED
    assert result.gpu_model == "FAKE GPU model"
    assert [gpu.uuid for gpu in result.gpus] == ["GPU-fake-0001"]


def test_run_task_passes_the_task_contract_and_a_pinned_gpu_to_the_command(
    tmp_path: Path,
) -> None:
    seen = tmp_path / "env.json"
    env = a_task_env(tmp_path, task_index=5, params={"shot": 12})
    script = """
        import json, os, sys
        keys = ["GPUBATCH_TASK_INDEX", "GPUBATCH_PARAMS", "CUDA_VISIBLE_DEVICES"]
        json.dump({k: os.environ.get(k) for k in keys}, open(sys.argv[1], "w"))
    """
    base: Mapping[str, str] = dict(os.environ) | {"CUDA_VISIBLE_DEVICES": "GPU-local-pinned"}
    run_task(env, py(script, str(seen)), base_environ=base, gpu_reporter=report_of_a_fake_gpu)
    assert json.loads(seen.read_text()) == {
        "GPUBATCH_TASK_INDEX": "5",
        "GPUBATCH_PARAMS": '{"shot":12}',
        "CUDA_VISIBLE_DEVICES": "GPU-local-pinned",
    }


def test_run_task_stops_the_command_when_another_thread_asks(tmp_path: Path) -> None:
    record, ready = tmp_path / "record", tmp_path / "ready"
    stop = StopRequest()

    def press_ctrl_c() -> None:
        wait_for(ready)
        stop.request(signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    result = run_task(a_task_env(tmp_path), py(SIGNAL_RECORDER, str(record), str(ready)), stop=stop)
    presser.join()
    assert record.read_text() == "SIGINT"
    assert (result.exit_code, result.reason) == (130, Reason.INTERRUPTED)


def test_run_task_writes_command_output_to_the_given_sinks(tmp_path: Path) -> None:
    log_out, log_err = tmp_path / "task.out", tmp_path / "task.err"
    with log_out.open("wb") as out, log_err.open("wb") as err:
        result = run_task(
            a_task_env(tmp_path),
            py("import sys; print('to out'); print('to err', file=sys.stderr)"),
            stdout=out,
            stderr=err,
        )
    assert result.outcome is Outcome.SUCCEEDED
    assert log_out.read_text() == "to out\n"
    assert log_err.read_text() == "to err\n"


def test_run_task_does_not_start_the_command_after_a_stop_request(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    stop = StopRequest()
    stop.request(signal.SIGTERM)
    result = run_task(
        a_task_env(tmp_path), py("open(__import__('sys').argv[1], 'w')", str(marker)), stop=stop
    )
    assert not marker.exists()
    assert (result.exit_code, result.reason) == (143, Reason.INTERRUPTED)


def test_run_task_atomic_partials_are_named_by_core_partial(tmp_path: Path) -> None:
    finals = (str(tmp_path / "a.bin"), str(tmp_path / "b.bin"))
    env = a_task_env(
        tmp_path, outputs=finals, partial_outputs=partial_paths(finals), atomic_outputs=True
    )
    writer = """
        import json, os
        for p in json.loads(os.environ["GPUBATCH_PARTIAL_OUTPUTS"]):
            open(p, "w").write(os.path.basename(p))
    """
    result = run_task(env, py(writer))
    assert result.outcome is Outcome.SUCCEEDED
    assert Path(finals[0]).read_text() == Path(partial_path(finals[0])).name
