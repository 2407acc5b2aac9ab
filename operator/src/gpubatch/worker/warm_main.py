"""`gpubatch-worker --warm`: a warm worker as a process, for executors that drive it over pipes.

    gpubatch-worker --warm [--tasks PATH] --results PATH -- PROGRAM [ARGS...]
    gpubatch-worker --warm --lease [--termination-log PATH] [--grace S] [--load-deadline S]
                    -- PROGRAM [ARGS...]        (a warm pod on a cluster: worker.lease_loop)

Reads tasks, one JSON object per line, from PATH (default `-`, stdin): each is the task's
GPUBATCH_* environment as `TaskEnvironment.to_environ()` writes it (the same contract, and the
same error messages, as the per-task worker). Runs them one at a time through one PROGRAM
(`worker.warm.WarmWorker`) and appends one line per task to the results PATH:

    {"index": 3, "attempt": 0, "result": {<TaskResult>}}

and finally `{"unrun": [<indexes>], "end": "<why the program ended>"}`. Each line is flushed
before the next task is read, so an executor can stream: write a task, read its result, write
the next (the local runner, one process per slot); or hand over a whole set in a file (a pod).
The program's stdout and stderr are this process' own: the task log.

Why a process mode at all: the executors (the CLI's local runner, the operator) may not import
the worker package (import-linter keeps them apart), and a process gives each slot its own
environment and signal handling, exactly as the per-task worker does.

Exit code: 0 once every task has a result or is listed as unrun; WORKER_ERROR for a task line
that cannot be read (the tasks after it are not read, and the ones before keep their results).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from types import FrameType
from typing import IO

from gpubatch.api.result import DEFAULT_TERMINATION_MESSAGE_PATH, ExitCode, TaskResult
from gpubatch.api.taskenv import DEFAULT_GRACE_SECONDS, TaskEnvironment, TaskEnvironmentError
from gpubatch.worker.lease_loop import serve_leases
from gpubatch.worker.run import StopRequest
from gpubatch.worker.task import logger
from gpubatch.worker.warm import WarmWorker, run_set


class _BadTaskLine(Exception):
    pass


def warm_main(args: Sequence[str]) -> int:
    """Run `gpubatch-worker --warm ...` (args after `--warm`); returns the exit code."""
    parser = argparse.ArgumentParser(prog="gpubatch-worker --warm", add_help=True)
    parser.add_argument("--tasks", default="-", help="JSON lines of tasks (default: stdin)")
    parser.add_argument(
        "--results",
        help="where result lines are appended (a file or /dev/fd/N; not stdout, the task log)",
    )
    lease = parser.add_argument_group(
        "a warm pod on a cluster (tasks leased from the operator; see worker.lease_loop)"
    )
    lease.add_argument(
        "--lease", action="store_true", help="get tasks from the operator (GPUBATCH_LEASE_*)"
    )
    lease.add_argument(
        "--termination-log",
        default=DEFAULT_TERMINATION_MESSAGE_PATH,
        help="where the lease's progress is kept (default: %(default)s)",
    )
    lease.add_argument(
        "--grace", type=float, default=DEFAULT_GRACE_SECONDS, help="seconds from SIGTERM to SIGKILL"
    )
    lease.add_argument(
        "--load-deadline", type=float, help="seconds the program may load (default: no limit)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args(list(args))
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("give the program after `--`: gpubatch-worker --warm -- prog args...")
    if options.lease:
        if options.results is not None or options.tasks != "-":
            parser.error("--lease gets its tasks from the operator: drop --tasks and --results")
        return serve_leases(
            command,
            termination_log=options.termination_log,
            grace_seconds=options.grace,
            load_seconds_allowed=options.load_deadline,
        )
    if options.results is None:
        parser.error("--results PATH is required (or --lease, in a warm pod on a cluster)")

    stop = StopRequest()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _forward_to(stop))
    with ExitStack() as files:
        source = (
            sys.stdin
            if options.tasks == "-"
            else files.enter_context(open(options.tasks, encoding="utf-8"))
        )
        sink = files.enter_context(open(options.results, "a", encoding="utf-8"))
        reader = _TaskReader(source)
        report = run_set(WarmWorker(command, stop=stop), reader, _writer(sink))
        unrun = [task.task_index for task in report.unrun]
        _emit(sink, {"unrun": unrun, "end": report.end.why})
        if reader.error is not None:
            logger.error("%s", reader.error)
            return int(ExitCode.WORKER_ERROR)
    return 0


class _TaskReader:
    """The task lines as TaskEnvironments; stops at the first bad line and keeps its error."""

    def __init__(self, source: IO[str]) -> None:
        self._source = source
        self.error: str | None = None

    def __iter__(self) -> Iterator[TaskEnvironment]:
        for number, line in enumerate(self._source, start=1):
            if not line.strip():
                continue
            try:
                yield _parse(line)
            except _BadTaskLine as err:
                self.error = f"task line {number}: {err}"
                return


def _parse(line: str) -> TaskEnvironment:
    try:
        environ = json.loads(line)
    except json.JSONDecodeError as err:
        raise _BadTaskLine(f"not JSON ({err.msg})") from None
    if not isinstance(environ, dict) or not all(isinstance(v, str) for v in environ.values()):
        raise _BadTaskLine(
            "must be a JSON object of GPUBATCH_* variables with string values, e.g. "
            '{"GPUBATCH_BATCH": "b", "GPUBATCH_TASK_INDEX": "3"}'
        )
    try:
        return TaskEnvironment.from_env(environ)
    except TaskEnvironmentError as err:
        raise _BadTaskLine(str(err)) from None


def _writer(sink: IO[str]) -> Callable[[TaskEnvironment, TaskResult], None]:
    def write(task: TaskEnvironment, result: TaskResult) -> None:
        record = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        _emit(sink, {"index": task.task_index, "attempt": task.attempt, "result": record})

    return write


def _emit(sink: IO[str], record: dict[str, object]) -> None:
    sink.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
    sink.flush()


def _forward_to(stop: StopRequest) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.request(signum)

    return handler
