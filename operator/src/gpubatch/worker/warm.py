"""A warm worker: one long-lived user program, fed its tasks one at a time, each task judged alone.

`WarmWorker` is the per-task worker (`worker.task.run_task`) stretched over many tasks without
breaking any of its promises. The program is started once, lazily (a set whose tasks are all
done never pays the model load), and speaks the protocol in `gpubatch.api.warm`. For each task,
in the order `run_task` uses:

1. outputs that all exist make the task skipped; it is never sent;
2. a required GPU that is absent fails the task with NO_GPU; it is never sent;
3. stale partial outputs are removed, parent folders created, and (without atomic outputs) what
   already existed is remembered, so a failed turn's half-written files can be removed;
4. the task is handed over and the worker waits for the program's reply, its exit, the task's
   deadline or a stop request, whichever comes first;
5. the turn is judged against storage: an ok reply whose outputs are missing is OUTPUT_MISSING;
   a program that exits 0 without replying is judged by its outputs, exactly as a per-task
   program that exits 0 is; atomic outputs are renamed into place only after that.

A deadline, a stop request or the program's death ends the worker: the task that was running
gets the one failure, and every later `run` returns None, meaning "not run, re-queue it
uncounted". The caller decides whether to start a fresh worker (and pay the load again).

The worker is driven by its caller, one blocking `run` per task, so an executor keeps its own
queue: the local runner feeds one worker per slot from its queue; a task pod walks the set it
was given (`run_set`, which also hands each result to a callback as soon as it is decided, so a
pod can record progress before the next task starts); a warm pod on a cluster runs each lease
with `run_tasks` through one worker it keeps across leases (`worker.lease_loop`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from gpubatch.api.result import (
    ExitCode,
    GpuIdentity,
    Outcome,
    Reason,
    TaskResult,
    signal_exit_code,
    signal_name,
)
from gpubatch.api.taskenv import DEFAULT_GRACE_SECONDS, TaskEnvironment
from gpubatch.api.warm import (
    ENV_WARM_PROTOCOL,
    ENV_WARM_RESULT_FD,
    PROTOCOL_VERSION,
    WarmProtocolError,
    WarmReply,
    WarmTask,
)
from gpubatch.edges import storage
from gpubatch.edges.nvml import GpuReport, probe_gpus
from gpubatch.worker.run import (
    POLL_SECONDS,
    UNTIED,
    Lifetime,
    OutputSink,
    StopRequest,
    _signal_group,
    _StderrRelay,
)
from gpubatch.worker.task import (
    _check_outputs,
    _Finisher,
    logger,
    prepare_outputs,
    remove_leftovers,
)

#: A reply line longer than this is a protocol error (a program printing its log to the fd).
MAX_REPLY_BYTES: Final = 65536
_RELAY_JOIN_SECONDS: Final = 2.0


@dataclass(frozen=True)
class ProgramEnd:
    """Why the program is gone, for the pod's log and the executor's decision to start anew."""

    why: str
    returncode: int | None
    """Popen's code (-N for signal N); None when the program was never started."""
    stderr_tail: str = ""


@dataclass
class _Turn:
    """What happened while one task was with the program."""

    reply: WarmReply | None = None
    protocol_error: str | None = None
    exited: int | None = None
    stopped_by: int | None = None
    deadline_exceeded: bool = False
    killed_after_grace: bool = False
    term_sent_at: float | None = None
    loading: bool = False
    """The program has not said ready yet and this is its first task."""
    untaken: bool = False
    """The program exited without reading any of the task's line."""
    clock_start: float = field(default_factory=time.monotonic)
    """When the task's time started: its hand-over, or the ready notice that came after it."""

    @property
    def answered(self) -> bool:
        return self.reply is not None or self.protocol_error is not None


class WarmWorker:
    """Supervises one long-lived program and runs tasks through it, one `run` at a time."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        environ: Mapping[str, str] | None = None,
        cwd: str | None = None,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        load_seconds_allowed: float | None = None,
        stop: StopRequest | None = None,
        gpu_reporter: Callable[[], GpuReport] = probe_gpus,
        node_name: str | None = None,
        stdout: OutputSink = None,
        stderr: OutputSink = None,
        lifetime: Lifetime = UNTIED,
    ) -> None:
        """`environ` is the program's environment (default: ours) without any per-task variable;
        `load_seconds_allowed` is how long the program may load before its first task's own
        deadline starts to count (None: no limit); `lifetime` ties the program to its caller
        as a per-task command is tied (the local runner's watchdog and state lock)."""
        if not argv:
            raise ValueError("no command given for the warm worker")
        self._argv = list(argv)
        self._environ = dict(os.environ if environ is None else environ)
        self._cwd = cwd
        self._grace = grace_seconds
        self._load_allowed = load_seconds_allowed
        self.stop = stop if stop is not None else StopRequest()
        self._gpu_reporter = gpu_reporter
        self._gpus: GpuReport | None = None
        self._node = node_name
        self._stdout = stdout
        self._stderr = stderr
        self._lifetime = lifetime
        self._process: subprocess.Popen[bytes] | None = None
        self._relay: _StderrRelay | None = None
        self._replies: _ReplyReader | None = None
        self._started_at = 0.0
        self._ready_at: float | None = None
        self.ended: ProgramEnd | None = None
        """Set once the program is gone for good; `run` then returns None for every task."""
        self.tasks_handed_over = 0

    # ------------------------------------------------------------------------ public API
    @property
    def load_seconds(self) -> float | None:
        """Program start to its ready notice, when it sent one (the model load, measured)."""
        return None if self._ready_at is None else round(self._ready_at - self._started_at, 3)

    def run(self, task: TaskEnvironment) -> TaskResult | None:
        """Run one task through the program; None when it was not run (re-queue it, uncounted).

        Never raises for the task's or the program's failure.
        """
        if self.ended is not None:
            return None
        if self.stop.requested is not None:
            self.close()
            return None
        finish = _Finisher(task, time.monotonic())
        finish.gpus = self._gpu_identities(task)
        where = f"task {task.task_index} of batch {task.batch!r} (attempt {task.attempt})"
        skipped = self._skip_if_done(task, finish, where)
        if skipped is not None:
            return skipped
        if task.require_gpu and self._gpus is not None and not self._gpus.available:
            return finish(
                Outcome.FAILED,
                ExitCode.NO_GPU,
                Reason.NO_GPU,
                f"{self._gpus.summary()}; the task requires a GPU, so it was not handed to the "
                "program (a task that may run on the CPU must say so: worker.requireGPU: false)",
            )
        try:
            existed_before = prepare_outputs(task, where)
        except storage.StorageError as err:
            return finish(Outcome.FAILED, ExitCode.WORKER_ERROR, Reason.WORKER_ERROR, str(err))
        return self._take_turn(task, finish, existed_before, where)

    def _take_turn(
        self, task: TaskEnvironment, finish: _Finisher, existed_before: frozenset[str], where: str
    ) -> TaskResult | None:
        """Start the program if needed, hand the task over, judge the turn."""
        if self._process is None:
            failed_start = self._start(finish)
            if failed_start is not None:
                return failed_start
        logger.info("%s: handed to the warm program", where)
        turn = self._hand_over(task)
        if turn is None and self.tasks_handed_over == 0 and self.ended is not None:
            # It died loading (or never reads): the first task takes the one failure, or a
            # program that cannot load would be restarted for ever without anything counted.
            assert self.ended.returncode is not None
            return self._judge_exit(task, self.ended.returncode, True, finish)
        if turn is None:
            return None
        if turn.untaken and turn.exited == 0 and self.tasks_handed_over > 1:
            # It stopped between tasks, as it may: this one was never taken, so not counted.
            self._ended("it exited before taking the next task", turn.exited)
            return None
        finish = _Finisher(task, turn.clock_start)
        finish.gpus = self._gpu_identities(task)
        result = self._judge(task, turn, finish)
        if result.outcome is not Outcome.SUCCEEDED:
            remove_leftovers(task, existed_before, where)
        return result

    def close(self) -> ProgramEnd:
        """End the program: end of input, then (after the grace) SIGTERM, then SIGKILL.

        A stop request that is pending is forwarded at once instead of waiting for the program
        to notice the end of its input. Idempotent: returns the first ending.
        """
        if self.ended is not None:
            return self.ended
        if self._process is None:
            self.ended = ProgramEnd("no task needed the program, so it was never started", None)
            return self.ended
        process = self._process
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        signals = self.stop.take()
        for signum in signals:
            _signal_group(process.pid, signum)
        returncode = self._wait_or_stop(process)
        why = (
            f"stopped by {signal_name(signals[0])}"
            if signals
            else "its input ended (no more tasks)"
        )
        return self._ended(why, returncode)

    def __enter__(self) -> WarmWorker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ before the turn
    def _gpu_identities(self, task: TaskEnvironment) -> tuple[GpuIdentity, ...]:
        if self._gpus is None:
            self._gpus = self._gpu_reporter()
            logger.info("warm worker for batch %r: %s", task.batch, self._gpus.summary())
        return self._gpus.identities()

    def _skip_if_done(
        self, task: TaskEnvironment, finish: _Finisher, where: str
    ) -> TaskResult | None:
        if not (task.skip_existing and task.outputs):
            return None
        try:
            if not storage.all_exist(task.outputs):
                return None
        except storage.StorageError as err:
            logger.warning("%s: could not check outputs, running anyway: %s", where, err)
            return None
        logger.info("%s: all %d outputs exist, skipping", where, len(task.outputs))
        return finish(
            Outcome.SKIPPED,
            ExitCode.SUCCESS,
            Reason.OUTPUTS_EXIST,
            f"all {len(task.outputs)} outputs already exist",
        )

    def _start(self, finish: _Finisher) -> TaskResult | None:
        """Start the program; a failure to start is the first task's failure, and the end."""
        read_end, write_end = os.pipe()
        environ = {k: v for k, v in self._environ.items() if not k.startswith("GPUBATCH_")}
        environ[ENV_WARM_RESULT_FD] = str(write_end)
        environ[ENV_WARM_PROTOCOL] = str(PROTOCOL_VERSION)
        if self._node is not None:
            environ["GPUBATCH_NODE_NAME"] = self._node
        self._started_at = time.monotonic()
        try:
            process = subprocess.Popen(
                self._argv,
                env=environ,
                cwd=self._cwd,
                stdin=subprocess.PIPE,
                stdout=self._stdout,
                stderr=subprocess.PIPE,
                pass_fds=(write_end, *self._inherited_fds()),
                start_new_session=True,
            )
        except OSError as err:
            os.close(read_end)
            os.close(write_end)
            not_found = isinstance(err, FileNotFoundError)
            self.ended = ProgramEnd(f"cannot start {self._argv[0]!r}: {err}", None)
            return finish(
                Outcome.FAILED,
                ExitCode.COMMAND_NOT_FOUND if not_found else ExitCode.COMMAND_NOT_EXECUTABLE,
                Reason.COMMAND_NOT_FOUND if not_found else Reason.COMMAND_NOT_EXECUTABLE,
                f"cannot start {self._argv[0]!r}: {err.strerror or err}",
            )
        os.close(write_end)
        if self._lifetime.groups is not None:
            self._lifetime.groups.started(process.pid)  # its own session: pid = group id
        assert process.stdin is not None and process.stderr is not None
        os.set_blocking(process.stdin.fileno(), False)
        self._process = process
        self._replies = _ReplyReader(read_end)
        self._relay = _StderrRelay(process.stderr, self._stderr)
        self._relay.start()
        logger.info("warm program started: %s", self._argv)
        return None

    def _inherited_fds(self) -> tuple[int, ...]:
        """The caller's inheritable descriptors, when its lifetime asks the program to keep
        them (`pass_fds` closes all others; Python's own descriptors are not inheritable)."""
        if not self._lifetime.keep_inheritable_fds:
            return ()
        kept = []
        for name in os.listdir("/dev/fd"):
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
                if int(name) > 2 and os.get_inheritable(int(name)):
                    kept.append(int(name))
        return tuple(kept)

    # ------------------------------------------------------------------------ the turn
    def _hand_over(self, task: TaskEnvironment) -> _Turn | None:
        """Give the task to the program and wait until its turn is over; None if the program
        was already gone before it could take the task."""
        assert self._process is not None and self._replies is not None
        process, replies = self._process, self._replies
        assert process.stdin is not None
        stdin = process.stdin.fileno()
        line = WarmTask.from_environment(task).encode().encode()
        pending = self._send_first(process, line)
        if pending is None:
            return None
        self.tasks_handed_over += 1
        turn = _Turn(loading=self._ready_at is None and self.tasks_handed_over == 1)
        while True:
            if pending:
                with contextlib.suppress(BlockingIOError, BrokenPipeError):
                    pending = pending[os.write(stdin, pending) :]
            for reply in replies.read_lines(POLL_SECONDS, also_writable=stdin if pending else None):
                self._take_line(reply, task, turn)
            if turn.answered and turn.stopped_by is None and not turn.deadline_exceeded:
                return turn
            returncode = process.poll()
            if returncode is not None:
                for reply in replies.drain():
                    self._take_line(reply, task, turn)
                turn.exited = returncode
                turn.untaken = len(pending) + _unread_bytes(stdin) >= len(line)
                return turn
            self._enforce_limits(process.pid, task, turn)

    def _send_first(self, process: subprocess.Popen[bytes], line: bytes) -> bytes | None:
        """Write what the pipe takes of the task line now; the rest (None: the program is
        gone, e.g. it takes N tasks and then exits, and the task goes back unrun)."""
        assert process.stdin is not None
        returncode = process.poll()
        if returncode is None:
            try:
                return line[os.write(process.stdin.fileno(), line) :]
            except BlockingIOError:
                return line  # a full pipe (a huge task): written in the wait loop
            except BrokenPipeError:
                returncode = process.wait()
        self._ended("it exited before taking the next task", returncode)
        return None

    def _enforce_limits(self, pgid: int, task: TaskEnvironment, turn: _Turn) -> None:
        """Forward stop requests, stop the program at the deadline, kill it after the grace."""
        now = time.monotonic()
        for signum in self.stop.take():
            turn.stopped_by = turn.stopped_by if turn.stopped_by is not None else signum
            _signal_group(pgid, signum)
            turn.term_sent_at = turn.term_sent_at if turn.term_sent_at is not None else now
        limit = self._time_allowed(task, turn.loading)
        if turn.term_sent_at is None and limit is not None and now - turn.clock_start >= limit:
            turn.deadline_exceeded = True
            _signal_group(pgid, signal.SIGTERM)
            turn.term_sent_at = now
        sent = turn.term_sent_at
        if sent is not None and not turn.killed_after_grace and now - sent >= self._grace:
            _signal_group(pgid, signal.SIGKILL)
            turn.killed_after_grace = True

    def _time_allowed(self, task: TaskEnvironment, loading: bool) -> float | None:
        """The task's deadline, plus the load allowance while the program has not said ready
        (a program that never sends the notice has its first task's clock include the load)."""
        if task.deadline_seconds is None:
            return None
        if not loading:
            return task.deadline_seconds
        if self._load_allowed is None:
            return None
        return task.deadline_seconds + self._load_allowed

    def _take_line(self, line: bytes, task: TaskEnvironment, turn: _Turn) -> None:
        try:
            reply = WarmReply.decode(line)
        except WarmProtocolError as err:
            turn.protocol_error = turn.protocol_error or str(err)
            return
        if reply.is_ready_notice:
            if self._ready_at is None:
                self._ready_at = time.monotonic()
                logger.info("warm program ready after %.1fs", self._ready_at - self._started_at)
            if turn.loading:
                turn.loading, turn.clock_start = False, self._ready_at
            return
        if reply.index != task.task_index:
            turn.protocol_error = turn.protocol_error or (
                f"the program replied for task {reply.index} while task {task.task_index} was "
                "the one it had been given"
            )
            return
        if turn.reply is None:
            turn.reply = reply

    # ------------------------------------------------------------------------ after the turn
    def _judge(self, task: TaskEnvironment, turn: _Turn, finish: _Finisher) -> TaskResult:
        """Turn what happened during the turn, and what it left in storage, into the result."""
        index = task.task_index
        if turn.stopped_by is not None or turn.deadline_exceeded:
            return self._judge_stopped(task, turn, finish)
        if turn.reply is not None and turn.reply.ok:
            return _check_outputs(finish, task)
        if turn.reply is not None:
            message = turn.reply.message or "(no message)"
            return finish(
                Outcome.FAILED,
                turn.reply.failure_exit_code,
                Reason.NON_ZERO_EXIT,
                f"the program reported task {index} failed: {message}",
            )
        if turn.protocol_error is not None:
            # Its later replies could belong to any task: the program is not trusted further.
            self._ended(f"it broke the protocol during task {index}", None)
            return finish(
                Outcome.FAILED,
                ExitCode.WORKER_ERROR,
                Reason.WORKER_ERROR,
                f"{turn.protocol_error}; a reply is one line of JSON such as "
                f'{{"index": {index}, "ok": true}} on the descriptor in {ENV_WARM_RESULT_FD}',
            )
        assert turn.exited is not None
        return self._judge_exit(task, turn.exited, turn.untaken, finish)

    def _judge_exit(
        self, task: TaskEnvironment, returncode: int, untaken: bool, finish: _Finisher
    ) -> TaskResult:
        """The program ended on its own during the task's turn (or before its first task)."""
        index = task.task_index
        when = f"before reading task {index}" if untaken else f"while running task {index}"
        end = self._ended(f"it exited {when}", returncode)
        if returncode == 0 and untaken:
            return finish(
                Outcome.FAILED,
                ExitCode.WORKER_ERROR,
                Reason.WORKER_ERROR,
                f"the program exited 0 without reading task {index} from its stdin: a warm "
                "program reads one task per line until its input ends (is it a per-task "
                "program? then leave worker.mode at PerTask)",
            )
        if returncode == 0:
            # As for a per-task program that exits 0: its outputs say whether it did the work.
            return _check_outputs(finish, task)
        tail = f"; last stderr: {end.stderr_tail}" if end.stderr_tail else ""
        if returncode < 0:
            name = signal_name(-returncode)
            hint = " (often the out-of-memory killer)" if -returncode == signal.SIGKILL else ""
            return finish(
                Outcome.FAILED,
                signal_exit_code(-returncode),
                Reason.SIGNALED,
                f"the warm program was killed by {name}{hint} {when}{tail}",
            )
        return finish(
            Outcome.FAILED,
            returncode,
            Reason.NON_ZERO_EXIT,
            f"the warm program exited with code {returncode} {when}{tail}",
        )

    def _judge_stopped(self, task: TaskEnvironment, turn: _Turn, finish: _Finisher) -> TaskResult:
        """A stop or the deadline ended the program; the running task takes the failure."""
        assert turn.exited is not None
        killed = " and killed after the grace period" if turn.killed_after_grace else ""
        if turn.stopped_by is not None:
            end = self._ended(f"stopped by {signal_name(turn.stopped_by)}", turn.exited)
            tail = f"; last stderr: {end.stderr_tail}" if end.stderr_tail else ""
            return finish(
                Outcome.FAILED,
                signal_exit_code(turn.stopped_by),
                Reason.INTERRUPTED,
                f"stopped by {signal_name(turn.stopped_by)} forwarded to the warm program{killed} "
                f"while it ran task {task.task_index}{tail}",
            )
        end = self._ended(f"task {task.task_index} ran past its deadline", turn.exited)
        tail = f"; last stderr: {end.stderr_tail}" if end.stderr_tail else ""
        return finish(
            Outcome.FAILED,
            ExitCode.DEADLINE_EXCEEDED,
            Reason.DEADLINE_EXCEEDED,
            f"task {task.task_index} ran past its deadline of {task.deadline_seconds:g}s; the "
            f"warm program was sent SIGTERM{killed}{tail}",
        )

    # ------------------------------------------------------------------------ the end
    def _wait_or_stop(self, process: subprocess.Popen[bytes]) -> int:
        """Wait a grace period for the program to exit, then SIGTERM, then SIGKILL."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                return process.wait(timeout=self._grace)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signum)
        return process.wait()

    def _ended(self, why: str, returncode: int | None) -> ProgramEnd:
        """Record the program's end once (killing it if it still runs, `returncode` None);
        nothing it started outlives it."""
        if self.ended is not None:
            return self.ended
        assert self._process is not None
        _signal_group(self._process.pid, signal.SIGKILL)
        returncode = self._process.wait() if returncode is None else returncode
        if self._lifetime.groups is not None:
            self._lifetime.groups.ended(self._process.pid)
        tail = ""
        if self._relay is not None:
            self._relay.join(_RELAY_JOIN_SECONDS)
            tail = self._relay.tail()
        if self._replies is not None:
            self._replies.close()
        with contextlib.suppress(OSError):
            assert self._process.stdin is not None
            self._process.stdin.close()
        self.ended = ProgramEnd(why, returncode, tail)
        logger.info("warm program ended (%s), exit status %d", why, returncode)
        return self.ended


@dataclass(frozen=True)
class SetReport:
    """What became of a set of tasks: a result for each task that ran (or was skipped), in
    order, and the tasks that did not run and go back to the queue uncounted."""

    results: tuple[tuple[TaskEnvironment, TaskResult], ...]
    unrun: tuple[TaskEnvironment, ...]
    end: ProgramEnd


def run_set(
    worker: WarmWorker,
    tasks: Iterable[TaskEnvironment],
    on_result: Callable[[TaskEnvironment, TaskResult], None] | None = None,
) -> SetReport:
    """Run `tasks` in order through `worker` (see `run_tasks`), then close it."""
    results, unrun = run_tasks(worker, tasks, on_result)
    return SetReport(results, unrun, worker.close())


def run_tasks(
    worker: WarmWorker,
    tasks: Iterable[TaskEnvironment],
    on_result: Callable[[TaskEnvironment, TaskResult], None] | None = None,
) -> tuple[tuple[tuple[TaskEnvironment, TaskResult], ...], tuple[TaskEnvironment, ...]]:
    """Run `tasks` in order through `worker` and leave it open for more (a warm pod keeps one
    program across its leases): the results, in order, and the tasks that did not run.

    `on_result` is called with each result as soon as it is decided, before the next task is
    handed over, so a pod can record its progress where it survives its own death.
    """
    results: list[tuple[TaskEnvironment, TaskResult]] = []
    unrun: list[TaskEnvironment] = []
    for task in tasks:
        result = worker.run(task)
        if result is None:
            unrun.append(task)
            continue
        results.append((task, result))
        if on_result is not None:
            on_result(task, result)
    return tuple(results), tuple(unrun)


def _unread_bytes(fd: int) -> int:
    """Bytes written to a pipe and not yet read by the other side (FIONREAD)."""
    try:
        count = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(count, sys.byteorder, signed=True)


class _ReplyReader:
    """Reads the program's reply lines from the read end of its reply pipe, without blocking
    longer than asked (the caller also watches the deadline and stop requests)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._buffer = bytearray()

    def read_lines(self, timeout: float, also_writable: int | None = None) -> list[bytes]:
        """Complete lines that arrive within `timeout`; returns early, maybe with none, when
        `also_writable` (the rest of a long task line to send) can take more."""
        writable = [] if also_writable is None else [also_writable]
        readable, _, _ = select.select(
            [] if self._fd is None else [self._fd], writable, [], timeout
        )
        if not readable or self._fd is None:
            return []
        chunk = os.read(self._fd, 65536)
        if not chunk:
            self.close()
        self._buffer += chunk
        return self._lines(final=not chunk)

    def drain(self) -> list[bytes]:
        """Everything left once the program has exited (a reply written just before its exit
        still counts)."""
        lines: list[bytes] = []
        while self._fd is not None:
            lines += self.read_lines(0)
            if self._fd is not None and not select.select([self._fd], [], [], 0)[0]:
                break
        return lines + self._lines(final=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _lines(self, *, final: bool) -> list[bytes]:
        *complete, rest = (bytes(part) for part in self._buffer.split(b"\n"))
        if len(rest) > MAX_REPLY_BYTES or (final and rest.strip()):
            complete.append(rest[:MAX_REPLY_BYTES])  # a runaway line fails to parse, as it should
            rest = b""
        self._buffer = bytearray(rest)
        return [line for line in complete if line.strip()]
