"""Warm workers, run for real: a long-lived program fed tasks one at a time by `WarmWorker`.

The programs are real processes: small Python programs using `gpubatch.worker.tasks()`, and a
bash program speaking the protocol by hand. Each program appends a line to a "loads" file when
it starts and one to a "seen" file per task it receives, so a test can tell how often the model
was loaded and which tasks reached the program. No GPU here: tasks say require_gpu=False.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from gpubatch.api.result import ExitCode, Outcome, Reason, TaskResult
from gpubatch.api.taskenv import TaskEnvironment
from gpubatch.core.partial import partial_paths
from gpubatch.worker.run import StopRequest
from gpubatch.worker.warm import SetReport, WarmWorker, run_set

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "warm" / "simulated_model.py"


def program(*body: str) -> list[str]:
    """A warm Python program: records its start in LOADS, each task it gets in SEEN, then runs
    the `body` parts, in order (with `task` bound), inside `with task:` for every task."""
    script = textwrap.dedent(
        """
        import os, sys, time
        import gpubatch.worker
        with open(os.environ["LOADS"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        for task in gpubatch.worker.tasks():
            with open(os.environ["SEEN"], "a") as f:
                f.write(f"{task.index}\\n")
            with task:
        """
    ) + "".join(textwrap.indent(textwrap.dedent(part), " " * 8) for part in body)
    return [sys.executable, "-c", script]


WRITE_OUTPUTS = """
for path in task.write_to:
    open(path, "w").write(str(task.index))
"""


class Bench:
    """Where a test's files live, and how to build its tasks and workers."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.loads = tmp_path / "loads"
        self.seen = tmp_path / "seen"

    def task(self, index: int, **fields: object) -> TaskEnvironment:
        settings: dict[str, object] = {
            "batch": "warm-test",
            "task_index": index,
            "params": {"image": f"img-{index}.png"},
            "outputs": (str(self.dir / "out" / f"{index}.txt"),),
            "require_gpu": False,
            "grace_seconds": 2.0,
        }
        settings |= fields
        if settings.get("atomic_outputs"):
            settings["partial_outputs"] = partial_paths(settings["outputs"])  # type: ignore[arg-type]
        return TaskEnvironment.model_validate(settings)

    def tasks(self, count: int, **fields: object) -> list[TaskEnvironment]:
        return [self.task(i, **fields) for i in range(count)]

    def worker(self, argv: Sequence[str], **options: object) -> WarmWorker:
        environ = dict(os.environ, LOADS=str(self.loads), SEEN=str(self.seen), OUT=str(self.dir))
        return WarmWorker(argv, environ=environ, grace_seconds=2.0, **options)  # type: ignore[arg-type]

    def output(self, index: int) -> Path:
        return self.dir / "out" / f"{index}.txt"

    def load_count(self) -> int:
        return len(self.loads.read_text().split()) if self.loads.exists() else 0

    def seen_indexes(self) -> list[int]:
        return [int(i) for i in self.seen.read_text().split()] if self.seen.exists() else []


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    return Bench(tmp_path)


def outcomes(report: SetReport) -> dict[int, tuple[Outcome, Reason]]:
    return {task.task_index: (r.outcome, r.reason) for task, r in report.results}


def result_of(report: SetReport, index: int) -> TaskResult:
    return next(r for task, r in report.results if task.task_index == index)


def unrun(report: SetReport) -> list[int]:
    return [task.task_index for task in report.unrun]


# ------------------------------------------------------------------------------ the happy path
def test_the_program_loads_once_and_runs_every_task(bench: Bench) -> None:
    report = run_set(bench.worker(program(WRITE_OUTPUTS)), bench.tasks(6))

    assert bench.load_count() == 1
    assert outcomes(report) == {i: (Outcome.SUCCEEDED, Reason.COMPLETED) for i in range(6)}
    assert [bench.output(i).read_text() for i in range(6)] == [str(i) for i in range(6)]
    assert report.unrun == ()
    assert report.end.returncode == 0


def test_each_result_is_handed_over_before_the_next_task_starts(bench: Bench) -> None:
    seen_when_reported: list[list[int]] = []
    run_set(
        bench.worker(program(WRITE_OUTPUTS)),
        bench.tasks(3),
        on_result=lambda _task, _result: seen_when_reported.append(bench.seen_indexes()),
    )

    assert seen_when_reported == [[0], [0, 1], [0, 1, 2]]


def test_the_task_message_carries_params_outputs_and_attempt(bench: Bench) -> None:
    dump = """
    import json
    json.dump({"params": task.params, "outputs": list(task.outputs), "attempt": task.attempt,
               "write_to": list(task.write_to), "deadline": task.deadline_seconds},
              open(os.environ["OUT"] + "/message.json", "w"))
    open(task.write_to[0], "w").write("x")
    """
    task = bench.task(
        4, attempt=2, params={"image": "a b;c.png"}, atomic_outputs=True, deadline_seconds=30
    )
    report = run_set(bench.worker(program(dump)), [task])

    assert json.loads((bench.dir / "message.json").read_text()) == {
        "params": {"image": "a b;c.png"},
        "outputs": list(task.outputs),
        "attempt": 2,
        "write_to": list(task.partial_outputs),
        "deadline": 30,
    }
    assert outcomes(report) == {4: (Outcome.SUCCEEDED, Reason.COMPLETED)}


def test_a_task_larger_than_the_pipe_buffer_still_arrives_whole(bench: Bench) -> None:
    # 1 MiB of parameters: the hand-over cannot be one write while the program is loading.
    big = "x" * (1 << 20)
    check = """
    assert task.params["caption"] == "x" * (1 << 20)
    """
    report = run_set(
        bench.worker(program(check, WRITE_OUTPUTS)), [bench.task(0, params={"caption": big})]
    )

    assert outcomes(report) == {0: (Outcome.SUCCEEDED, Reason.COMPLETED)}


# ------------------------------------------------------------------------------ isolation
def test_an_exception_in_one_task_fails_it_alone_and_the_loop_goes_on(bench: Bench) -> None:
    fail_two = """
    if task.index == 2:
        raise ValueError("cannot decode " + task.params["image"])
    """
    report = run_set(bench.worker(program(fail_two, WRITE_OUTPUTS)), bench.tasks(5))

    failed = result_of(report, 2)
    assert (failed.outcome, failed.reason, failed.exit_code) == (
        Outcome.FAILED,
        Reason.NON_ZERO_EXIT,
        1,
    )
    assert "ValueError: cannot decode img-2.png" in failed.message
    assert {i for i, (o, _) in outcomes(report).items() if o is Outcome.SUCCEEDED} == {0, 1, 3, 4}
    assert bench.load_count() == 1


def test_a_reported_failure_carries_its_exit_code_for_the_retry_rules(bench: Bench) -> None:
    report = run_set(
        bench.worker(program('task.fail("unreadable image", exit_code=3)')), bench.tasks(1)
    )

    assert (result_of(report, 0).exit_code, result_of(report, 0).reason) == (
        3,
        Reason.NON_ZERO_EXIT,
    )


def test_a_failed_turn_leaves_no_output_behind(bench: Bench) -> None:
    report = run_set(
        bench.worker(program(WRITE_OUTPUTS, 'task.fail("wrote half an image")')), bench.tasks(1)
    )

    assert outcomes(report) == {0: (Outcome.FAILED, Reason.NON_ZERO_EXIT)}
    assert not bench.output(0).exists()


# ------------------------------------------------------------------------------ outputs
def test_tasks_whose_outputs_exist_are_skipped_without_being_sent(bench: Bench) -> None:
    tasks = bench.tasks(4)
    bench.output(1).parent.mkdir(parents=True)
    bench.output(1).write_text("done before")
    report = run_set(bench.worker(program(WRITE_OUTPUTS)), tasks)

    assert outcomes(report)[1] == (Outcome.SKIPPED, Reason.OUTPUTS_EXIST)
    assert bench.seen_indexes() == [0, 2, 3]
    assert bench.output(1).read_text() == "done before"


def test_a_set_whose_tasks_are_all_done_never_starts_the_program(bench: Bench) -> None:
    tasks = bench.tasks(3)
    for i in range(3):
        bench.output(i).parent.mkdir(parents=True, exist_ok=True)
        bench.output(i).write_text("done")
    report = run_set(bench.worker(program(WRITE_OUTPUTS)), tasks)

    assert {o for o, _ in outcomes(report).values()} == {Outcome.SKIPPED}
    assert bench.load_count() == 0
    assert report.end.returncode is None


def test_an_ok_reply_whose_outputs_are_missing_is_output_missing(bench: Bench) -> None:
    body = "if task.index != 1:\n" + textwrap.indent(WRITE_OUTPUTS, "    ")
    report = run_set(bench.worker(program(body)), bench.tasks(3))

    assert outcomes(report) == {
        0: (Outcome.SUCCEEDED, Reason.COMPLETED),
        1: (Outcome.FAILED, Reason.OUTPUT_MISSING),
        2: (Outcome.SUCCEEDED, Reason.COMPLETED),
    }


def test_a_program_that_exits_0_without_replying_is_judged_by_its_outputs(bench: Bench) -> None:
    # Task 0 is answered; during task 1 the program writes its output and exits 0 unannounced.
    report = run_set(
        bench.worker(program(WRITE_OUTPUTS, "if task.index == 1:\n    os._exit(0)\n")),
        bench.tasks(4),
    )

    assert outcomes(report) == {
        0: (Outcome.SUCCEEDED, Reason.COMPLETED),
        1: (Outcome.SUCCEEDED, Reason.COMPLETED),
    }
    assert unrun(report) == [2, 3]


def test_a_program_that_exits_0_without_replying_or_writing_fails_its_task(bench: Bench) -> None:
    report = run_set(bench.worker(program("os._exit(0)")), bench.tasks(3))

    assert outcomes(report) == {0: (Outcome.FAILED, Reason.OUTPUT_MISSING)}
    assert unrun(report) == [1, 2]


def test_atomic_outputs_are_renamed_into_place_only_after_an_ok_turn(bench: Bench) -> None:
    tasks = bench.tasks(2, atomic_outputs=True)
    body = program(WRITE_OUTPUTS, 'if task.index == 1:\n    task.fail("bad")\n')
    report = run_set(bench.worker(body), tasks)

    assert outcomes(report) == {
        0: (Outcome.SUCCEEDED, Reason.COMPLETED),
        1: (Outcome.FAILED, Reason.NON_ZERO_EXIT),
    }
    assert bench.output(0).read_text() == "0"
    assert not Path(tasks[0].partial_outputs[0]).exists()
    assert not bench.output(1).exists()
    assert not Path(tasks[1].partial_outputs[0]).exists()


# ------------------------------------------------------------------------------ the program ends
def test_a_task_past_its_deadline_stops_the_program_and_leaves_the_rest_unrun(
    bench: Bench,
) -> None:
    body = program("if task.index == 1:\n    time.sleep(60)\n", WRITE_OUTPUTS)
    report = run_set(bench.worker(body), bench.tasks(4, deadline_seconds=3))

    assert outcomes(report) == {
        0: (Outcome.SUCCEEDED, Reason.COMPLETED),
        1: (Outcome.FAILED, Reason.DEADLINE_EXCEEDED),
    }
    assert result_of(report, 1).exit_code == ExitCode.DEADLINE_EXCEEDED
    assert unrun(report) == [2, 3]
    assert bench.seen_indexes() == [0, 1]


def test_the_model_load_does_not_count_against_the_first_deadline(bench: Bench) -> None:
    # The helper says "ready" after the load; the first task's clock starts there.
    slow_load = program(WRITE_OUTPUTS)
    slow_load[2] = slow_load[2].replace(
        "import gpubatch.worker", "import gpubatch.worker\ntime.sleep(4)"
    )
    worker = bench.worker(slow_load)
    report = run_set(worker, bench.tasks(2, deadline_seconds=3))

    assert outcomes(report) == {i: (Outcome.SUCCEEDED, Reason.COMPLETED) for i in range(2)}
    assert worker.load_seconds is not None and worker.load_seconds >= 4


def test_a_crash_mid_set_keeps_finished_tasks_and_fails_only_the_running_one(
    bench: Bench,
) -> None:
    body = program("if task.index == 2:\n    os.kill(os.getpid(), 9)\n", WRITE_OUTPUTS)
    report = run_set(bench.worker(body), bench.tasks(5))

    assert outcomes(report) == {
        0: (Outcome.SUCCEEDED, Reason.COMPLETED),
        1: (Outcome.SUCCEEDED, Reason.COMPLETED),
        2: (Outcome.FAILED, Reason.SIGNALED),
    }
    assert result_of(report, 2).exit_code == 128 + 9
    assert "killed by SIGKILL" in result_of(report, 2).message
    assert unrun(report) == [3, 4]
    assert bench.output(0).exists() and bench.output(1).exists()


def test_a_program_exiting_non_zero_mid_task_fails_that_task_with_its_code(bench: Bench) -> None:
    out_of_memory = """
    if task.index == 1:
        sys.stderr.write("CUDA error: out of memory\\n")
        os._exit(5)
    """
    report = run_set(bench.worker(program(out_of_memory, WRITE_OUTPUTS)), bench.tasks(3))

    crashed = result_of(report, 1)
    assert (crashed.outcome, crashed.reason, crashed.exit_code) == (
        Outcome.FAILED,
        Reason.NON_ZERO_EXIT,
        5,
    )
    assert "CUDA error: out of memory" in crashed.message
    assert unrun(report) == [2]


def test_a_stop_request_interrupts_the_running_task_and_keeps_the_finished_ones(
    bench: Bench,
) -> None:
    hang_on_one = """
    if task.index == 1:
        open(os.environ["OUT"] + "/running", "w").close()
        time.sleep(60)
    """
    stop = StopRequest()
    running = bench.dir / "running"

    def stop_when_running() -> None:
        while not running.exists():
            threading.Event().wait(0.02)
        stop.request(signal.SIGTERM)

    threading.Thread(target=stop_when_running, daemon=True).start()
    report = run_set(bench.worker(program(hang_on_one, WRITE_OUTPUTS), stop=stop), bench.tasks(4))

    assert outcomes(report) == {
        0: (Outcome.SUCCEEDED, Reason.COMPLETED),
        1: (Outcome.FAILED, Reason.INTERRUPTED),
    }
    assert result_of(report, 1).exit_code == 128 + signal.SIGTERM
    assert unrun(report) == [2, 3]


def test_a_stop_between_tasks_hands_over_nothing_more(bench: Bench) -> None:
    stop = StopRequest()
    worker = bench.worker(program(WRITE_OUTPUTS), stop=stop)
    first = worker.run(bench.task(0))
    stop.request(signal.SIGTERM)
    second = worker.run(bench.task(1))

    assert first is not None and first.outcome is Outcome.SUCCEEDED
    assert second is None
    assert worker.ended is not None and "SIGTERM" in worker.ended.why
    assert bench.seen_indexes() == [0]


def test_a_program_that_exits_between_tasks_leaves_the_next_task_unrun(bench: Bench) -> None:
    # It takes one task and then ends, as a program with a task budget might.
    report = run_set(
        bench.worker(program(WRITE_OUTPUTS, "task.done()\nos._exit(0)\n")), bench.tasks(3)
    )

    assert outcomes(report) == {0: (Outcome.SUCCEEDED, Reason.COMPLETED)}
    assert unrun(report) == [1, 2]


def test_a_program_that_never_reads_its_tasks_fails_the_first_with_a_hint(bench: Bench) -> None:
    report = run_set(bench.worker(["bash", "-c", "sleep 0.2; exit 0"]), bench.tasks(3))

    first = result_of(report, 0)
    assert (first.outcome, first.reason) == (Outcome.FAILED, Reason.WORKER_ERROR)
    assert "without reading task 0" in first.message and "PerTask" in first.message
    assert unrun(report) == [1, 2]


def test_a_program_that_dies_while_loading_fails_the_first_task_only(bench: Bench) -> None:
    load_fails = [sys.executable, "-c", "raise SystemExit('checkpoint not found')"]
    report = run_set(bench.worker(load_fails), bench.tasks(3))

    first = result_of(report, 0)
    assert (first.outcome, first.reason, first.exit_code) == (
        Outcome.FAILED,
        Reason.NON_ZERO_EXIT,
        1,
    )
    assert "checkpoint not found" in first.message
    assert unrun(report) == [1, 2]


def test_a_program_that_cannot_start_fails_the_first_task_only(bench: Bench) -> None:
    report = run_set(bench.worker([str(bench.dir / "no-such-program")]), bench.tasks(3))

    assert outcomes(report) == {0: (Outcome.FAILED, Reason.COMMAND_NOT_FOUND)}
    assert unrun(report) == [1, 2]


def test_a_reply_that_breaks_the_protocol_fails_the_task_and_ends_the_program(
    bench: Bench,
) -> None:
    body = 'os.write(int(os.environ["GPUBATCH_WARM_RESULT_FD"]), b"all good!\\n"); time.sleep(60)'
    report = run_set(bench.worker(program(body)), bench.tasks(2))

    broken = result_of(report, 0)
    assert (broken.outcome, broken.reason) == (Outcome.FAILED, Reason.WORKER_ERROR)
    assert "all good!" in broken.message and '"ok": true' in broken.message
    assert unrun(report) == [1]


# ---------------------------------------------------------------------- gpubatch-worker --warm
_CONSOLE_SCRIPT = Path(sys.executable).with_name("gpubatch-worker")
WORKER = (
    [str(_CONSOLE_SCRIPT)]
    if _CONSOLE_SCRIPT.exists()
    else [sys.executable, "-m", "gpubatch.worker.main"]
)


def task_line(task: TaskEnvironment) -> str:
    return json.dumps(task.to_environ()) + "\n"


def start_warm_worker(bench: Bench, argv: Sequence[str], results: Path) -> subprocess.Popen[str]:
    environ = dict(os.environ, LOADS=str(bench.loads), SEEN=str(bench.seen), OUT=str(bench.dir))
    return subprocess.Popen(
        [*WORKER, "--warm", "--results", str(results), "--", *argv],
        env=environ,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def read_records(results: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in results.read_text().splitlines()]


def test_the_warm_entrypoint_streams_a_result_per_task_before_reading_the_next(
    bench: Bench,
) -> None:
    results = bench.dir / "results.jsonl"
    worker = start_warm_worker(bench, program(WRITE_OUTPUTS), results)
    assert worker.stdin is not None
    seen_per_result = []
    for index in range(3):
        worker.stdin.write(task_line(bench.task(index)))
        worker.stdin.flush()
        while not results.exists() or len(results.read_text().splitlines()) <= index:
            threading.Event().wait(0.02)
        seen_per_result.append(bench.seen_indexes())
    worker.stdin.close()
    worker.wait(timeout=30)

    records = read_records(results)
    assert [r["index"] for r in records[:3]] == [0, 1, 2]
    assert [TaskResult.model_validate(r["result"]).outcome for r in records[:3]] == [
        Outcome.SUCCEEDED
    ] * 3
    assert records[3] == {"unrun": [], "end": "its input ended (no more tasks)"}
    assert seen_per_result == [[0], [0, 1], [0, 1, 2]]
    assert (worker.returncode, bench.load_count()) == (0, 1)


def test_the_warm_entrypoint_runs_a_set_given_as_a_file(bench: Bench) -> None:
    task_file = bench.dir / "set.jsonl"
    task_file.write_text("".join(task_line(bench.task(i)) for i in (4, 9, 2)))
    results = bench.dir / "results.jsonl"
    environ = dict(os.environ, LOADS=str(bench.loads), SEEN=str(bench.seen))
    argv = [*WORKER, "--warm", "--tasks", str(task_file), "--results", str(results)]
    done = subprocess.run(
        [*argv, "--", *program(WRITE_OUTPUTS)], env=environ, timeout=60, check=False
    )

    records = read_records(results)
    assert done.returncode == 0
    assert [(r["index"], r["result"]["outcome"]) for r in records[:-1]] == [  # type: ignore[index]
        (4, "succeeded"),
        (9, "succeeded"),
        (2, "succeeded"),
    ]
    assert records[-1]["unrun"] == []


def test_a_bad_task_line_stops_the_warm_entrypoint_with_the_variable_to_fix(
    bench: Bench,
) -> None:
    results = bench.dir / "results.jsonl"
    worker = start_warm_worker(bench, program(WRITE_OUTPUTS), results)
    bad = json.dumps({"GPUBATCH_BATCH": "b", "GPUBATCH_TASK_INDEX": "three"})
    _, _ = worker.communicate(task_line(bench.task(0)) + bad + "\n", timeout=30)

    records = read_records(results)
    assert worker.returncode == ExitCode.WORKER_ERROR
    assert [r.get("index") for r in records] == [0, None]
    assert bench.seen_indexes() == [0]


def test_sigterm_to_the_warm_entrypoint_stops_the_program_and_keeps_finished_tasks(
    bench: Bench,
) -> None:
    hang_on_one = """
    if task.index == 1:
        print("task 1 running", flush=True)
        time.sleep(60)
    """
    results = bench.dir / "results.jsonl"
    worker = start_warm_worker(bench, program(hang_on_one, WRITE_OUTPUTS), results)
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write("".join(task_line(bench.task(i)) for i in range(4)))
    worker.stdin.flush()
    for line in worker.stdout:
        if line.startswith("task 1 running"):
            worker.send_signal(signal.SIGTERM)
            break
    worker.stdin.close()
    worker.wait(timeout=30)

    records = read_records(results)
    by_index = {r["index"]: TaskResult.model_validate(r["result"]) for r in records[:-1]}
    assert by_index[0].outcome is Outcome.SUCCEEDED
    assert (by_index[1].outcome, by_index[1].reason) == (Outcome.FAILED, Reason.INTERRUPTED)
    assert records[-1]["unrun"] == [2, 3]
    assert not alive(int(bench.loads.read_text()))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in {"Z", "X"}


# ------------------------------------------------------------------------------ other languages
README = REPO / "worker-image" / "README.md"


def readme_bash_example() -> str:
    """The bash program documented in worker-image/README.md, run as written."""
    text = README.read_text()
    block = text.split("<!-- warm-bash-example:start -->")[1].split(
        "<!-- warm-bash-example:end -->"
    )[0]
    return block.split("```bash\n")[1].split("```")[0]


def test_the_documented_bash_program_speaks_the_protocol(bench: Bench) -> None:
    tasks = [bench.task(0), bench.task(1, params={"image": "corrupt.png"}), bench.task(2)]
    (bench.dir / "out").mkdir()
    script = bench.dir / "warm.sh"
    script.write_text(readme_bash_example())
    log = bench.dir / "log"
    with open(log, "wb") as sink:
        report = run_set(bench.worker(["bash", str(script)], stdout=sink), tasks)

    assert outcomes(report) == {
        0: (Outcome.SUCCEEDED, Reason.COMPLETED),
        1: (Outcome.FAILED, Reason.NON_ZERO_EXIT),
        2: (Outcome.SUCCEEDED, Reason.COMPLETED),
    }
    assert "corrupt input" in result_of(report, 1).message
    assert bench.output(2).read_text() == "mask 2\n"
    assert "task 2: writing" in log.read_text()


# ------------------------------------------------------------------------------ the example
def test_the_example_program_runs_warm_and_fails_a_corrupt_image_alone(bench: Bench) -> None:
    tasks = [
        bench.task(i, params={"image": f"{'corrupt' if i == 1 else 'cell'}-{i}.tif"})
        for i in range(3)
    ]
    argv = [sys.executable, str(EXAMPLE), "--load-seconds", "0.2", "--seconds-per-task", "0"]
    report = run_set(bench.worker(argv), tasks)

    assert outcomes(report) == {
        0: (Outcome.SUCCEEDED, Reason.COMPLETED),
        1: (Outcome.FAILED, Reason.NON_ZERO_EXIT),
        2: (Outcome.SUCCEEDED, Reason.COMPLETED),
    }
    assert "cannot decode image corrupt-1.tif" in result_of(report, 1).message


@pytest.mark.parametrize(("image", "code"), [("cell.tif", 0), ("corrupt.tif", 1)])
def test_the_example_program_also_runs_one_task_per_process(
    tmp_path: Path, image: str, code: int
) -> None:
    output = tmp_path / "mask.txt"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPUBATCH_")}
    environ |= {
        "GPUBATCH_BATCH": "b",
        "GPUBATCH_TASK_INDEX": "0",
        "GPUBATCH_PARAMS": json.dumps({"image": image}),
        "GPUBATCH_OUTPUTS": json.dumps([str(output)]),
    }
    argv = [sys.executable, str(EXAMPLE), "--load-seconds", "0", "--seconds-per-task", "0"]
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=60)

    assert done.returncode == code, done.stderr
    assert output.exists() == (code == 0)


def test_the_helper_imports_without_the_operator_dependencies() -> None:
    check = """
    import sys
    for name in ("kopf", "kubernetes", "fsspec", "aiohttp", "prometheus_client"):
        sys.modules[name] = None  # importing any of them now fails
    import gpubatch.worker
    from gpubatch.worker.warm import WarmWorker
    print(gpubatch.worker.tasks.__name__)
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(check)], capture_output=True, text=True, timeout=60
    )

    assert (done.returncode, done.stdout.strip()) == (0, "tasks"), done.stderr
