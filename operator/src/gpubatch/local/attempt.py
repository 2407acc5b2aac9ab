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
time: the unit a later change can replace with a long-lived task process per slot (warm
workers), since the runner only needs `Attempt.stop` to ask for a stop and an `AttemptEnd` on
its queue when the attempt is over.
"""

from __future__ import annotations

import queue
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpubatch.api.result import ExitCode, Outcome, Reason, TaskResult
from gpubatch.api.taskenv import TaskEnvironment
from gpubatch.core.podspec import pod_name
from gpubatch.core.podview import PodView
from gpubatch.edges.nvml import GpuReport
from gpubatch.local.slots import Slot
from gpubatch.worker.run import Lifetime, StopRequest
from gpubatch.worker.task import run_task

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
            started_at=self.started + self.deadline_slack,
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


class SlotWorker:
    """The supervising thread of one slot, alive for the whole run, running one attempt at a
    time from its inbox (a thread started per task cost more than `true` itself).

    It is also the place a long-lived task process per slot (warm workers) would plug in: the
    runner only hands it attempts and reads `AttemptEnd`s from the shared queue.
    """

    def __init__(self, slot: Slot, report: Callable[[AttemptEnd], None]) -> None:
        """`report` receives each attempt's end, in this slot's thread."""
        self.slot = slot
        self._report = report
        self._inbox: queue.SimpleQueue[tuple[Attempt, Launch] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name=f"gpubatch-slot-{slot.name}", daemon=True
        )
        self._thread.start()

    def run(self, attempt: Attempt, launch: Launch) -> None:
        """Start the attempt (the slot must be idle); its end arrives on the done queue."""
        self._inbox.put((attempt, launch))

    def close(self) -> None:
        """Let the thread end once its current attempt has (call with the slot idle)."""
        self._inbox.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (item := self._inbox.get()) is not None:
            self._report(_supervise(*item))


def _supervise(attempt: Attempt, launch: Launch) -> AttemptEnd:
    began = time.monotonic()
    try:
        with open(attempt.log, "wb") as sink:
            sink.write(
                f"[gpubatch] task {attempt.index} attempt {attempt.attempt} on "
                f"{attempt.slot.name}: {shlex.join(launch.argv)}\n".encode()
            )
            sink.flush()
            result = run_task(
                launch.task,
                launch.argv,
                gpu_reporter=lambda: launch.gpus,
                stop=attempt.stop,
                base_environ=launch.environ,
                stdout=sink,
                stderr=sink,
                lifetime=launch.lifetime,
            )
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
