"""A warm pod's life on a cluster: ask the operator for a lease, run it, report, ask again.

    gpubatch-worker --warm --lease [--termination-log PATH] [--grace S] [--load-deadline S]
                    -- PROGRAM [ARGS...]

Everything else comes from the environment the operator gives its warm pods
(`gpubatch.api.lease`: GPUBATCH_LEASE_URL, GPUBATCH_LEASE_CA, GPUBATCH_LEASE_TOKEN_FILE,
GPUBATCH_BATCH_UID). The loop:

1. the first request has seq 0 and no results; each later one carries the results of the lease
   it reports (seq = that lease's seq), the attempts the program never took (`unrun`) and, once
   known, the program's measured load time;
2. an answer with tasks is a lease: its tasks run in order through ONE `WarmWorker`, kept across
   leases, so the model loads once per pod. A program that ended (a crash, a deadline) is
   replaced by a fresh one (a new load) only when the operator leases more;
3. an empty answer is the end of a long poll: ask again at once (backing off only on errors);
   `done` closes the program and the pod exits 0.

Before each task and after each result the termination message (default /dev/termination-log)
is rewritten with `WarmProgress`, the record that outlives a pod killed mid-lease. SIGTERM and
SIGINT are forwarded to the program (the running task fails Interrupted, the rest are unrun),
then the pod reports once, briefly, and exits 128 + the signal.

Exit codes (`LeaseExit`): 0 done; 83 misconfigured (missing environment, a certificate or token
the operator refuses, any other 4xx: retrying cannot help); 84 the operator gave no answer for
15 minutes; 128+N stopped by signal N.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import IntEnum
from types import FrameType
from typing import Final

from gpubatch.api.lease import (
    AttemptResult,
    LeasedTask,
    LeaseRequest,
    LeaseResponse,
    WarmProgress,
)
from gpubatch.api.result import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    ExitCode,
    Outcome,
    Reason,
    TaskResult,
    signal_exit_code,
)
from gpubatch.api.taskenv import (
    DEFAULT_GRACE_SECONDS,
    ENV_NODE_NAME,
    TaskEnvironment,
    TaskEnvironmentError,
)
from gpubatch.worker.lease_client import (
    LeaseClient,
    LeaseRefused,
    LeaseSettings,
    OperatorUnreachable,
)
from gpubatch.worker.run import StopRequest
from gpubatch.worker.task import logger
from gpubatch.worker.warm import WarmWorker, run_tasks

#: How long a stopping pod waits for the operator to take its last results: well inside the
#: kubelet's default 30 s grace, which the program's own stop has already used part of.
FINAL_REPORT_SECONDS: Final = 5.0


class LeaseExit(IntEnum):
    """The warm pod's exit codes (its tasks' codes travel in the results, not here)."""

    DONE = 0
    MISCONFIGURED = int(ExitCode.WORKER_ERROR)
    OPERATOR_UNREACHABLE = 84


class _Stopped(BaseException):
    """Raised by the signal handler to end a wait for the operator (a long poll can last
    LONG_POLL_SECONDS, more than a pod's grace period leaves). A BaseException, so that no
    retry loop mistakes it for a failed request."""


class LeaseLoop:
    """Runs leases until the operator says done; see the module's docstring."""

    def __init__(
        self,
        client: LeaseClient,
        make_worker: Callable[[], WarmWorker],
        *,
        stop: StopRequest,
        termination_log: str = DEFAULT_TERMINATION_MESSAGE_PATH,
        node_name: str | None = None,
    ) -> None:
        """`make_worker` builds a fresh worker (sharing `stop`) whenever one is needed."""
        self._client = client
        self._make_worker = make_worker
        self.stop = stop
        self._termination_log = termination_log
        self._node = node_name
        self._worker: WarmWorker | None = None
        self._load_reported = False
        self._waiting = False
        self._last_run_seq = 0

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """The SIGTERM/SIGINT handler: forwarded to the program by the worker; a wait for the
        operator is cut short."""
        self.stop.request(signum)
        if self._waiting:
            raise _Stopped

    def run(self) -> int:
        """The pod's exit code."""
        request = LeaseRequest(batch_uid=self._client.settings.batch_uid)
        try:
            while self.stop.requested is None:
                response = self._ask(request)
                if response.done:
                    logger.info("the operator has no more work for this pod")
                    return int(LeaseExit.DONE)
                request = self._next_request(request, response)
        except _Stopped:
            pass
        except LeaseRefused as err:
            logger.error("%s", err)
            return int(LeaseExit.MISCONFIGURED)
        except OperatorUnreachable as err:
            logger.error("%s", err)
            return int(LeaseExit.OPERATOR_UNREACHABLE)
        finally:
            if self._worker is not None:
                self._worker.close()
        return self._report_and_stop(request)

    def _ask(self, request: LeaseRequest) -> LeaseResponse:
        self._waiting = True
        try:
            if self.stop.requested is not None:
                raise _Stopped
            return self._client.exchange(request)
        finally:
            self._waiting = False

    def _next_request(self, request: LeaseRequest, response: LeaseResponse) -> LeaseRequest:
        """Run the answer's lease (if it is one to run) and build the request reporting it."""
        uid = self._client.settings.batch_uid
        if not response.tasks:
            return LeaseRequest(batch_uid=uid, seq=response.seq)
        if response.seq <= self._last_run_seq:
            # A lease already run (or one without a number) is never run twice: repeat the
            # report, after a pause that counts towards giving up on a confused operator.
            self._waiting = True
            try:
                self._client.wait_before_retry(
                    f"the answer was lease {response.seq} again, which this pod already ran"
                )
            finally:
                self._waiting = False
            return request
        self._last_run_seq = response.seq
        results, unrun = self.run_lease(response.seq, response.tasks)
        return LeaseRequest(
            batch_uid=uid,
            seq=response.seq,
            results=results,
            unrun=unrun,
            load_seconds=self._new_load_seconds(),
        )

    def run_lease(
        self, seq: int, leased: Sequence[LeasedTask]
    ) -> tuple[tuple[AttemptResult, ...], tuple[tuple[int, int], ...]]:
        """Run lease `seq`'s tasks in order: their results and the attempts that did not run."""
        progress = _Progress(seq, self._write_progress)
        results: list[AttemptResult] = []
        runnable: list[TaskEnvironment] = []
        for task in leased:
            environment = self._environment(task)
            if isinstance(environment, TaskResult):  # never handed over: nothing to run
                results.append(
                    AttemptResult(index=task.index, attempt=task.attempt, result=environment)
                )
                progress.finished(task.index, task.attempt, environment)
            else:
                runnable.append(environment)
        ran, unrun = run_tasks(self._live_worker(), progress.announce(runnable), progress.on_result)
        results += (
            AttemptResult(index=env.task_index, attempt=env.attempt, result=result)
            for env, result in ran
        )
        return tuple(results), tuple((env.task_index, env.attempt) for env in unrun)

    def _environment(self, task: LeasedTask) -> TaskEnvironment | TaskResult:
        """The leased task's environment, or the failure that says why it cannot be run."""
        environ = dict(task.environ)
        if self._node is not None:
            environ.setdefault(ENV_NODE_NAME, self._node)
        try:
            environment = TaskEnvironment.from_env(environ)
        except TaskEnvironmentError as err:
            return self._cannot_run(f"task {task.index} of the lease: {err}")
        if (environment.task_index, environment.attempt) != (task.index, task.attempt):
            return self._cannot_run(
                f"the lease names task {task.index} attempt {task.attempt} but its environment "
                f"task {environment.task_index} attempt {environment.attempt}"
            )
        return environment

    def _cannot_run(self, message: str) -> TaskResult:
        logger.error("%s", message)
        return TaskResult(
            outcome=Outcome.FAILED,
            exit_code=ExitCode.WORKER_ERROR,
            reason=Reason.WORKER_ERROR,
            duration_seconds=0.0,
            node=self._node,
            message=message,
        )

    def _live_worker(self) -> WarmWorker:
        """The pod's worker; a fresh one (a new load) when the last one's program ended."""
        if self._worker is None or self._worker.ended is not None:
            if self._worker is not None and self._worker.ended is not None:
                logger.info("starting the program again (%s)", self._worker.ended.why)
            self._worker = self._make_worker()
            self._load_reported = False
        return self._worker

    def _new_load_seconds(self) -> float | None:
        """The program's measured load time, in the first report after it became known."""
        if self._load_reported or self._worker is None:
            return None
        load = self._worker.load_seconds
        self._load_reported = load is not None
        return load

    def _report_and_stop(self, request: LeaseRequest) -> int:
        """After a stop: one short try to hand over the results, then the signal's exit code."""
        signum = self.stop.requested or signal.SIGTERM
        if request.results or request.unrun:
            logger.info("stopping; reporting lease %d to the operator once", request.seq)
            self._client.post_once(request, FINAL_REPORT_SECONDS)
        return signal_exit_code(signum)

    def _write_progress(self, progress: WarmProgress) -> None:
        """Rewrite the termination message; a failure is logged (the results still travel
        with the next request, this is only the record for a pod that dies first)."""
        try:
            text = progress.encode()
            with open(self._termination_log, "w", encoding="utf-8") as handle:
                handle.write(text)
        except (OSError, ValueError) as err:
            logger.warning(
                "could not write the lease progress to %s: %s", self._termination_log, err
            )


class _Progress:
    """The current lease's `WarmProgress`, rewritten before each task and after each result."""

    def __init__(self, seq: int, write: Callable[[WarmProgress], None]) -> None:
        self._seq = seq
        self._write = write
        self._done: list[tuple[int, int, int, float]] = []
        self._running: tuple[int, int] | None = None
        self._flush()

    def announce(self, tasks: Iterable[TaskEnvironment]) -> Iterator[TaskEnvironment]:
        """`tasks`, each marked running while it is with the worker."""
        for task in tasks:
            self._running = (task.task_index, task.attempt)
            self._flush()
            yield task
            if self._running is not None:  # not run after all: it is not running any more
                self._running = None
                self._flush()

    def on_result(self, task: TaskEnvironment, result: TaskResult) -> None:
        self.finished(task.task_index, task.attempt, result)

    def finished(self, index: int, attempt: int, result: TaskResult) -> None:
        self._done.append((index, attempt, result.exit_code, result.duration_seconds))
        self._running = None
        self._flush()

    def _flush(self) -> None:
        self._write(WarmProgress(seq=self._seq, done=tuple(self._done), running=self._running))


def serve_leases(
    command: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    termination_log: str = DEFAULT_TERMINATION_MESSAGE_PATH,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    load_seconds_allowed: float | None = None,
) -> int:
    """`gpubatch-worker --warm --lease`: the whole pod, signals included; its exit code."""
    environ = os.environ if environ is None else environ
    try:
        client = LeaseClient(LeaseSettings.from_env(environ))
    except LeaseRefused as err:
        logger.error("%s", err)
        return int(LeaseExit.MISCONFIGURED)
    stop = StopRequest()
    node = environ.get(ENV_NODE_NAME) or None

    def make_worker() -> WarmWorker:
        return WarmWorker(
            command,
            environ=environ,
            grace_seconds=grace_seconds,
            load_seconds_allowed=load_seconds_allowed,
            stop=stop,
            node_name=node,
        )

    loop = LeaseLoop(
        client, make_worker, stop=stop, termination_log=termination_log, node_name=node
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, loop.on_signal)
    return loop.run()
