"""One task attempt on one slot, supervised by a thread of the runner.

The runner does not start a `gpubatch-worker` Python process per task (about 0.3 s of
interpreter start and imports, every task): a thread of the runner calls the worker's own
`run_task`, which starts the task's command directly and keeps every promise a task pod's
worker keeps: the skip re-check, atomic outputs, the deadline, forwarding of stop signals to
the command's process group, the output check and the stderr tail in the result. What a process
per task gave besides, this keeps too: each command gets its own environment (CUDA_VISIBLE_DEVICES
is set before it starts, in its environment, not ours), its own session and process group, and a
crash of one task cannot take the runner down (`run_task` turns every task failure into a result).

Ties to the runner's life (`worker.run.Lifetime`): the runner's watchdog learns each command's
process group and kills it if the runner dies (`local.watchdog`), and the command inherits the
state lock, so a second run cannot start while anything of this one is alive.

Each slot has one supervising thread for the whole run (`SlotWorker`), fed one attempt at a
time, and one way to run an attempt, chosen by `spec.worker.mode`: `PerTask` starts the command
for each attempt (`run_task`); `Warm` keeps one long-lived program per slot (`WarmWorker`,
started with the slot's CUDA_VISIBLE_DEVICES) and hands it each attempt in turn, starting a
fresh one when the last has ended (a crash, a deadline, a stop). Either way the runner only
needs `Attempt.stop` to ask for a stop and an `AttemptEnd` on its queue when the attempt is over.
"""

from __future__ import annotations

import queue
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from gpubatch.api.result import ExitCode, Outcome, Reason, TaskResult, signal_exit_code
from gpubatch.api.taskenv import TaskEnvironment
from gpubatch.core.podspec import pod_name
from gpubatch.core.podview import PodView
from gpubatch.edges.nvml import GpuReport
from gpubatch.local.slots import Slot
from gpubatch.worker.run import Lifetime, StopRequest
from gpubatch.worker.task import run_task
from gpubatch.worker.warm import WarmWorker

LOCAL_NAMESPACE = "local"


@dataclass(frozen=True)
class AttemptEnd:
    """What a supervising thread hands back: which attempt, how it ended, when."""

    key: tuple[int, int]
    result: TaskResult
    ended_at: float


@dataclass
class Attempt:
    """A task attempt running in a slot."""

    index: int
    attempt: int
    slot: Slot
    node: str
    log: Path
    started: float
    deadline_slack: float = 0.0
    stop: StopRequest = field(default_factory=StopRequest)
    stop_reason: str | None = None
    # False while a fresh warm program loads: its own load allowance (loadDeadlineSeconds)
    # applies, so the planner's backstop deadline must not count the load as task time.
    deadline_backstop: bool = True

    @property
    def key(self) -> tuple[int, int]:
        return (self.index, self.attempt)

    def view(self, **terminal: Any) -> PodView:
        """This attempt as the planner sees pods: Running, or terminal once it ended."""
        fields: dict[str, Any] = {
            "phase": "Running",
            "exit_code": None,
            "message": "",
            "finished_at": None,
        }
        fields.update(terminal)
        return PodView(
            name=pod_name("local", self.index, self.attempt),
            namespace=LOCAL_NAMESPACE,
            batch_uid=LOCAL_NAMESPACE,
            index=self.index,
            attempt=self.attempt,
            node=self.node,
            deleting=self.stop_reason is not None,
            tracked=False,
            reason="",
            disruption=None,
            stop_reason=self.stop_reason,
            created_at=self.started,
            # The supervisor enforces taskDeadlineSeconds itself and reports DeadlineExceeded.
            # The planner stops attempts past the deadline too; shifting the start it sees by
            # the grace makes that a backstop (as the kubelet's activeDeadlineSeconds is on a
            # cluster) instead of a race that would report the stop as Interrupted.
            started_at=self.started + self.deadline_slack if self.deadline_backstop else None,
            **fields,
        )


@dataclass(frozen=True)
class Launch:
    """Everything the supervising thread needs to run the attempt."""

    task: TaskEnvironment
    argv: Sequence[str]
    environ: Mapping[str, str]
    gpus: GpuReport
    lifetime: Lifetime


class SlotRunner(Protocol):
    """How a slot runs one attempt (`spec.worker.mode`), called from the slot's thread."""

    def run(self, attempt: Attempt, launch: Launch, log: IO[bytes]) -> TaskResult:
        """Run the attempt to its end; never raises for the task's failure."""

    def close(self) -> None:
        """The run is over: end whatever the slot keeps alive between attempts."""


class PerTask:
    """A process per attempt: the task pods' own `run_task`, in the slot's thread."""

    def run(self, attempt: Attempt, launch: Launch, log: IO[bytes]) -> TaskResult:
        return run_task(
            launch.task,
            launch.argv,
            gpu_reporter=lambda: launch.gpus,
            stop=attempt.stop,
            base_environ=launch.environ,
            stdout=log,
            stderr=log,
            lifetime=launch.lifetime,
        )

    def close(self) -> None:
        pass


class Warm:
    """One long-lived program per slot, fed one attempt at a time (`WarmWorker`).

    A program that has ended (a crash, a deadline, a stop) is replaced by a fresh one, which
    pays the load again. That cannot loop: a fresh program that dies loading fails its first
    task, so each restart costs the failing task an attempt, bounded by spec.retry.
    """

    def __init__(
        self,
        logs: Callable[[int], Path],
        *,
        load_seconds_allowed: float | None,
        grace_seconds: float,
    ) -> None:
        """`logs(n)`: where the slot's n-th program writes its stdout and stderr."""
        self._logs = logs
        self._load_allowed = load_seconds_allowed
        self._grace = grace_seconds
        self._worker: WarmWorker | None = None
        self._program_log: IO[bytes] | None = None
        self.programs_started = 0

    def run(self, attempt: Attempt, launch: Launch, log: IO[bytes]) -> TaskResult:
        # A program that exits 0 between tasks leaves this one unrun: the fresh one takes it.
        for _ in range(2):
            worker = self._program(launch)
            attempt.deadline_backstop = worker.tasks_handed_over > 0
            log.write(
                f"[gpubatch] handed to warm program {self.programs_started} of "
                f"{attempt.slot.name} (its output: {self._logs(self.programs_started)})\n".encode()
            )
            log.flush()
            worker.stop = attempt.stop  # the running attempt's stop reaches the program
            result = worker.run(launch.task)
            if result is not None:
                return result
            if attempt.stop.requested is not None:
                break
        signum = attempt.stop.requested
        if signum is None:  # two fresh programs in a row ended before reading: count it
            return TaskResult(
                outcome=Outcome.FAILED,
                exit_code=ExitCode.WORKER_ERROR,
                reason=Reason.WORKER_ERROR,
                duration_seconds=0.0,
                node=attempt.node,
                message="two warm programs in a row exited before taking the task",
            )
        return TaskResult(
            outcome=Outcome.FAILED,
            exit_code=signal_exit_code(signum),
            reason=Reason.INTERRUPTED,
            duration_seconds=0.0,
            node=attempt.node,
            message="stopped before the warm program took the task",
        )

    def _program(self, launch: Launch) -> WarmWorker:
        """The slot's live program, or a fresh one (started by its first task)."""
        if self._worker is not None and self._worker.ended is None:
            return self._worker
        self.close()
        self.programs_started += 1
        self._program_log = open(self._logs(self.programs_started), "ab")  # noqa: SIM115
        self._worker = WarmWorker(
            launch.argv,
            environ=launch.environ,
            grace_seconds=self._grace,
            load_seconds_allowed=self._load_allowed,
            gpu_reporter=lambda: launch.gpus,
            node_name=launch.task.node_name,
            stdout=self._program_log,
            stderr=self._program_log,
            lifetime=launch.lifetime,
        )
        return self._worker

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        if self._program_log is not None:
            self._program_log.close()
            self._program_log = None


class SlotWorker:
    """The supervising thread of one slot, alive for the whole run, running one attempt at a
    time from its inbox (a thread started per task cost more than `true` itself), the way
    its `SlotRunner` says: a process per task, or a warm program kept for the slot.
    """

    def __init__(
        self, slot: Slot, report: Callable[[AttemptEnd], None], runner: SlotRunner | None = None
    ) -> None:
        """`report` receives each attempt's end, in this slot's thread."""
        self.slot = slot
        self._report = report
        self._runner: SlotRunner = runner if runner is not None else PerTask()
        self._inbox: queue.SimpleQueue[tuple[Attempt, Launch] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name=f"gpubatch-slot-{slot.name}", daemon=True
        )
        self._thread.start()

    def run(self, attempt: Attempt, launch: Launch) -> None:
        """Start the attempt (the slot must be idle); its end arrives on the done queue."""
        self._inbox.put((attempt, launch))

    def close(self) -> None:
        """Let the thread end once its current attempt has (call with the slot idle), then end
        what the slot keeps alive (a warm program: end of input, then the grace)."""
        self._inbox.put(None)
        self._thread.join()
        self._runner.close()

    def _serve(self) -> None:
        while (item := self._inbox.get()) is not None:
            self._report(_supervise(*item, self._runner))


def _supervise(attempt: Attempt, launch: Launch, runner: SlotRunner) -> AttemptEnd:
    began = time.monotonic()
    try:
        with open(attempt.log, "wb") as sink:
            sink.write(
                f"[gpubatch] task {attempt.index} attempt {attempt.attempt} on "
                f"{attempt.slot.name}: {shlex.join(launch.argv)}\n".encode()
            )
            sink.flush()
            result = runner.run(attempt, launch, sink)
            sink.write(f"[gpubatch] {result.encode()}\n".encode())
    except Exception as err:  # a runner bug (or a log that cannot be opened) fails this attempt
        result = TaskResult(
            outcome=Outcome.FAILED,
            exit_code=ExitCode.WORKER_ERROR,
            reason=Reason.WORKER_ERROR,
            duration_seconds=round(time.monotonic() - began, 3),
            node=attempt.node,
            message=f"the local runner could not run the attempt: {err}",
        )
    return AttemptEnd(attempt.key, result, time.time())
