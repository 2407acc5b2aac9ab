"""`gpubatch run`: the operator's decisions, carried out on this machine instead of a cluster.

Local mode is not a second implementation of gpubatch. It reuses, unchanged:

- `core.planner.plan`: every pass decides, exactly as in the operator, which tasks start, which
  attempts are retried after which backoff (spec.retry), which are final failures, when the batch
  is Complete or Failed (maxFailedTasks, activeDeadlineSeconds) and what the status says. Each
  running worker is presented to it as a `PodView`, as a kubelet would report a pod;
- `core.invocation.task_invocation`: what each attempt runs (argv, env values, the GPUBATCH_*
  task contract, the deadline), the same function `render_pod` puts into the operator's pods.
  The image, volumes and resources of the pod template are not used: the command runs directly
  on this machine;
- `gpubatch-worker`: each attempt is a `gpubatch-worker` process, the entrypoint of every task
  pod, so the skip check, the GPU check, atomic outputs, the deadline, signal handling and the
  result record are the pod's.

Why a worker process per attempt rather than calling `worker.task.run_task` in a thread: the
layering keeps the CLI and the worker apart (neither imports the other); a process gives each
task its own environment (CUDA_VISIBLE_DEVICES must be set before CUDA initialises, which a
thread cannot do), its own signal handling and result file, exactly as in a pod; and one bad
task cannot take the runner down. The cost is one Python start per attempt (about 0.3 s), small
next to a GPU task.

What local mode adds: one slot per GPU, pinned with CUDA_VISIBLE_DEVICES (`slots`); Ctrl-C
forwarded to every worker, which stops its command and removes partial outputs; and, for
batches without atomic outputs, removal of outputs that a failed or interrupted attempt created,
so a half-written file is never taken for finished work on the next run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final, Protocol

from gpubatch.api.result import Outcome, TaskResult, signal_exit_code
from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.status import GPUBatchStatus, TaskCounts
from gpubatch.api.taskenv import (
    ENV_GRACE_SECONDS,
    ENV_NODE_NAME,
    ENV_REQUIRE_GPU,
    ENV_RESULT_PATH,
)
from gpubatch.core.errors import TaskSpecError
from gpubatch.core.indexset import IndexSet
from gpubatch.core.invocation import task_invocation
from gpubatch.core.outcome import STOP_BATCH_ENDED
from gpubatch.core.outputscan import OutputScan
from gpubatch.core.planner import Limits, Observation, TaskAttempt, plan
from gpubatch.core.podspec import pod_name
from gpubatch.core.podview import PodView
from gpubatch.core.prepare import PreparedBatch
from gpubatch.edges import storage
from gpubatch.edges.nvml import GpuReport, probe_gpus
from gpubatch.local.errors import LocalError
from gpubatch.local.journal import AttemptRecord, Journal, LocalState, SlotRecord
from gpubatch.local.slots import FreeBy, Slot, freest

WORKER_ARGV: Final = (sys.executable, "-m", "gpubatch.worker.main", "--")
LOCAL_NAMESPACE: Final = "local"
#: How often finished workers and signals are looked at between planner passes.
POLL_SECONDS: Final = 0.05
#: How often status.json is rewritten while the run goes on.
SAVE_EVERY_SECONDS: Final = 1.0
#: After the workers' own grace, how long to wait before killing a worker that did not exit.
KILL_AFTER_GRACE_SECONDS: Final = 5.0


class Reporter(Protocol):
    """Where the runner reports as it goes (the CLI draws a progress line and prints messages)."""

    def message(self, text: str) -> None:
        """A line for the user: a task failed, the run is stopping."""

    def progress(self, counts: TaskCounts, *, force: bool = False) -> None:
        """The task counts now (`force`: draw even if one was drawn a moment ago)."""


class _Silent:
    def message(self, text: str) -> None:
        pass

    def progress(self, counts: TaskCounts, *, force: bool = False) -> None:
        pass


@dataclass(frozen=True)
class RunOptions:
    """How to run (the batch file says what to run)."""

    state_dir: Path
    grace_seconds: float = 10.0
    freest_first: FreeBy | None = None
    verbose: bool = False


@dataclass
class LocalOutcome:
    """How a local run ended."""

    status: GPUBatchStatus
    records: list[AttemptRecord]
    wall_seconds: float
    interrupted: bool


@dataclass
class _Attempt:
    """A task attempt whose worker is running in a slot."""

    index: int
    attempt: int
    slot: Slot
    process: subprocess.Popen[bytes]
    log: Path
    started: float
    created_by_us: Callable[[], list[str]]
    deadline_slack: float = 0.0
    stop_reason: str | None = None

    def view(self, node: str, **terminal: Any) -> PodView:
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
            node=node,
            deleting=self.stop_reason is not None,
            tracked=False,
            reason="",
            disruption=None,
            stop_reason=self.stop_reason,
            created_at=self.started,
            # The worker enforces taskDeadlineSeconds itself and reports DeadlineExceeded. The
            # planner stops attempts past the deadline too; shifting the start it sees by the
            # worker's grace makes that a backstop (as the kubelet's activeDeadlineSeconds is
            # on a cluster) instead of a race that would report the stop as Interrupted.
            started_at=self.started + self.deadline_slack,
            **fields,
        )


@dataclass
class _Ended:
    """An attempt whose worker exited, waiting for the next planner pass to judge it."""

    record: AttemptRecord
    view: PodView


class LocalRunner:
    """Runs one prepared batch on the given slots until it is Complete, Failed or interrupted."""

    def __init__(
        self,
        name: str,
        prepared: PreparedBatch,
        scan: OutputScan,
        slots: tuple[Slot, ...],
        options: RunOptions,
        *,
        display: Reporter | None = None,
        gpu_reporter: Callable[[], GpuReport] = probe_gpus,
    ) -> None:
        if not slots:
            raise LocalError("no slots to run on")
        self.name = name
        self.prepared = prepared
        self.scan = scan
        self.slots = slots
        self.options = options
        self.display: Reporter = display if display is not None else _Silent()
        self._gpu_reporter = gpu_reporter
        spec = prepared.spec
        parallelism = min(spec.parallelism or len(slots), len(slots))
        # The planner never starts more tasks than there are slots, and never holds any back
        # as "waiting to be scheduled": a local task starts the moment it is created.
        self._spec: GPUBatchSpec = spec.model_copy(
            update={"parallelism": parallelism, "max_pending": None}
        )
        self._limits = Limits(max_pending=len(slots), max_creates_per_pass=len(slots))
        self._order = prepared.dispatch_order()
        host = socket.gethostname().split(".")[0]
        self._node = {slot.name: f"{host}/{slot.name}" for slot in slots}
        self._node_models = {self._node[slot.name]: slot.model for slot in slots}
        self._run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        self.journal = Journal(options.state_dir, self._run_id)
        self._status = GPUBatchStatus()
        self._cursor = 0
        self._active: dict[tuple[int, int], _Attempt] = {}
        self._ended: list[_Ended] = []
        self._invalid = dict(scan.invalid)
        self._idle: list[Slot] = list(slots)
        self._signals: deque[int] = deque()
        self._stopping = False
        self._replan = False
        self._interrupted = False
        self._records: list[AttemptRecord] = []
        self._last_save = 0.0

    # ------------------------------------------------------------------------------ checks
    def check(self) -> list[str]:
        """Render one task before anything starts: a batch whose command cannot run locally is
        refused now, not task by task. Returns notes about what local mode ignores."""
        index = next((i for i in range(len(self.prepared.tasks)) if i not in self._invalid), None)
        if index is None:
            return []
        argv, _ = self._task_process(index, 0, self.slots[0])
        if not argv:
            raise LocalError(
                "the task container sets no command: local mode runs the command (and args) "
                "of the pod template's task container on this machine; set command"
            )
        return self._ignored_fields()

    def _ignored_fields(self) -> list[str]:
        spec = self.prepared.spec
        container = spec.template.spec.containers[spec.task_container_index()]
        extra = container.model_extra or {}
        notes = []
        image = extra.get("image")
        ignored = [k for k in ("workingDir", "volumeMounts", "resources") if k in extra]
        what = f"the image ({image})" if image else "the image"
        notes.append(
            f"each task's command runs directly on this machine through gpubatch-worker; {what}"
            + (f" and the container's {', '.join(ignored)} are" if ignored else " is")
            + " not used"
        )
        from_elsewhere = [v.name for v in container.env or [] if v.value is None]
        if from_elsewhere:
            notes.append(
                f"env {', '.join(from_elsewhere)} come from Kubernetes (valueFrom) and are not set"
            )
        if not spec.worker.wrap:
            notes.append(
                "worker.wrap: false is set aside: local tasks always run through the worker"
            )
        if len(spec.template.spec.containers) > 1:
            notes.append("only the task container runs; the pod's other containers do not")
        return notes

    # -------------------------------------------------------------------------------- run
    def run(self) -> LocalOutcome:
        began = time.monotonic()
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._loop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._abandon()
            self._save(force=True)
            self._show(force=True)
        return LocalOutcome(
            status=self._status,
            records=self._records,
            wall_seconds=time.monotonic() - began,
            interrupted=self._interrupted,
        )

    def _loop(self) -> None:
        first = True
        wake_at: float | None = None
        while True:
            ended = self._reap()
            signalled = self._handle_signals()
            now = time.monotonic()
            due = wake_at is not None and now >= wake_at
            if first or ended or signalled or due or self._replan:
                self._replan = False
                decided = plan(
                    Observation(
                        spec=self._spec,
                        generation=1,
                        now=datetime.now(UTC),
                        total=len(self.prepared.tasks),
                        status=self._status,
                        pods=[
                            *(a.view(self._node[a.slot.name]) for a in self._active.values()),
                            *(e.view for e in self._ended),
                        ],
                        order=self._order,
                        cursor=self._cursor,
                        outputs_exist=self.scan.complete if first else None,
                        node_models=self._node_models,
                        invalid_tasks=self._invalid,
                        limits=self._limits,
                    )
                )
                first = False
                self._status, self._cursor = decided.status, decided.cursor
                self._report_ended()
                for view, reason in decided.stop:
                    self._stop(self._active.get(view.key), reason, signal.SIGTERM)
                if not self._stopping and decided.create:
                    for create in decided.create:
                        self._start(create)
                    # On a cluster the new pods' events wake the next pass; here nothing would
                    # until a task ends, and that pass sets the timers (batch deadline) that
                    # depend on the start time the dispatching pass has just recorded.
                    self._replan = True
                wake_at = now + decided.wake_in if decided.wake_in is not None else None
                if decided.finished:  # Complete or Failed: nothing more starts
                    self._stopping = True
                self._save()
            if self._stopping and not self._active and not self._ended:
                return
            self._show()
            time.sleep(POLL_SECONDS)

    # ------------------------------------------------------------------------------ start
    def _start(self, create: TaskAttempt) -> None:
        slot = self._take_slot()
        try:
            argv, env = self._task_process(create.index, create.attempt, slot)
            outputs = self.prepared.renderer.outputs(self.prepared.tasks.task(create.index))
        except TaskSpecError as err:
            # Fails this task alone, as in the operator; the next pass records it.
            self._idle.append(slot)
            self._invalid[create.index] = str(err)
            self._replan = True
            return
        created_by_us = self._output_guard(outputs)
        log = self.journal.log_path(create.index, create.attempt)
        result_path = self.journal.result_path(slot.name)
        result_path.unlink(missing_ok=True)
        env[ENV_RESULT_PATH] = str(result_path)
        started = time.time()
        with open(log, "wb") as sink:
            process = subprocess.Popen(
                [*WORKER_ARGV, *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches only this runner, which
                # forwards it once to each worker (a second copy from the terminal would be a
                # second SIGINT to every task).
                start_new_session=True,
            )
        self._active[(create.index, create.attempt)] = _Attempt(
            index=create.index,
            attempt=create.attempt,
            slot=slot,
            process=process,
            log=log,
            started=started,
            created_by_us=created_by_us,
            deadline_slack=self.options.grace_seconds + KILL_AFTER_GRACE_SECONDS,
        )
        if self.options.verbose:
            self.display.message(
                f"task {create.index} started on {slot.name} (attempt {create.attempt})"
            )

    def _take_slot(self) -> Slot:
        # The planner starts at most `parallelism` (<= slots) tasks, counting running ones.
        assert self._idle, "the planner started more tasks than there are slots"
        if self.options.freest_first and len(self._idle) > 1 and self._idle[0].is_gpu:
            chosen = freest(self._idle, self._gpu_reporter(), self.options.freest_first)
        else:
            chosen = self._idle[0]
        self._idle.remove(chosen)
        return chosen

    def _task_process(
        self, index: int, attempt: int, slot: Slot
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of one attempt's worker (core.invocation, as a pod gets
        it): the task container's command and env values, the task contract, this slot's
        pinning."""
        invocation = task_invocation(
            self.name, self.prepared.spec, self.prepared.render(index), attempt
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBATCH_")}
        env.update(invocation.env)
        env.update(invocation.task.to_environ())
        env.update(slot.environ())
        env[ENV_NODE_NAME] = self._node[slot.name]
        env[ENV_GRACE_SECONDS] = f"{self.options.grace_seconds:g}"
        if not slot.is_gpu:
            env[ENV_REQUIRE_GPU] = "false"  # the user asked for CPU slots (--slots)
        return list(invocation.argv), env

    def _output_guard(self, outputs: tuple[str, ...]) -> Callable[[], list[str]]:
        """What to delete if this attempt does not succeed: outputs it created.

        Atomic mode needs nothing (the worker only promotes on success). Otherwise the
        command writes final paths directly, and a killed or failed command may leave a
        half-written file that the next run would take for finished work. Outputs that
        existed before the attempt are left alone; if storage cannot say, nothing is deleted.
        """
        if self.prepared.spec.worker.atomic_outputs or not outputs:
            return list
        try:
            before = storage.existing(outputs)
        except storage.StorageError:
            return list

        def created() -> list[str]:
            return [path for path in outputs if path not in before]

        return created

    # ------------------------------------------------------------------------------- reap
    def _reap(self) -> bool:
        """Collect every worker that exited; True when any did."""
        any_ended = False
        for key, attempt in list(self._active.items()):
            code = attempt.process.poll()
            if code is None:
                continue
            any_ended = True
            del self._active[key]
            self._idle.append(attempt.slot)
            self._idle.sort(key=self.slots.index)
            self._ended.append(self._finish(attempt, code))
        return any_ended

    def _finish(self, attempt: _Attempt, code: int) -> _Ended:
        ended_at = time.time()
        exit_code = signal_exit_code(-code) if code < 0 else code
        result_path = self.journal.result_path(attempt.slot.name)
        try:
            text = result_path.read_text(encoding="utf-8")
        except OSError:
            text = ""
        result = TaskResult.try_decode(text)
        if result is None or result.outcome is Outcome.FAILED:
            leftovers = attempt.created_by_us()
            if leftovers:
                with contextlib.suppress(storage.StorageError):
                    storage.remove(leftovers)
        record = AttemptRecord(
            run=self._run_id,
            index=attempt.index,
            attempt=attempt.attempt,
            slot=attempt.slot.name,
            model=(result.gpu_model if result else None) or attempt.slot.model,
            start=attempt.started,
            end=ended_at,
            exit_code=exit_code,
            result=result,
            log=str(attempt.log),
            stopped=attempt.stop_reason == STOP_BATCH_ENDED,
        )
        self.journal.append(record)
        self._records.append(record)
        view = attempt.view(
            self._node[attempt.slot.name],
            phase="Succeeded" if exit_code == 0 else "Failed",
            exit_code=exit_code,
            message=text,
            finished_at=ended_at,
        )
        return _Ended(record, view)

    def _report_ended(self) -> None:
        """One line per attempt that did not succeed (and per task with -v), after the planner
        has judged it, so the line can say whether it will be retried."""
        if not self._ended:
            return
        failed = IndexSet.parse(self._status.failed_indexes)
        retrying = {r.index: r for r in self._status.retries}
        for ended in self._ended:
            record = ended.record
            result = record.result
            outcome = record.outcome
            took = f"{record.end - record.start:.1f}s"
            if outcome in ("succeeded", "skipped"):
                if self.options.verbose:
                    self.display.message(
                        f"task {record.index} {outcome} on {record.slot} in {took}"
                    )
                continue
            if outcome == "stopped":
                verdict = "stopped"
            elif record.index in failed:
                verdict = "failed for good"
            elif record.index in retrying:
                verdict = f"will be retried (attempt {retrying[record.index].attempts})"
            else:
                verdict = "failed"
            why = (
                f"{result.reason}: {' '.join(result.message.split())[-300:]}"
                if result is not None
                else f"the worker exited with code {record.exit_code} and left no result"
            )
            self.display.message(
                f"task {record.index} attempt {record.attempt} on {record.slot} {verdict} "
                f"after {took} - {why} (log: {record.log})"
            )
        self._ended.clear()

    # ------------------------------------------------------------------------------- stop
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)  # handled by the loop: no work inside a signal handler

    def _handle_signals(self) -> bool:
        handled = False
        while self._signals:
            signum = self._signals.popleft()
            handled = True
            first = not self._interrupted
            self._interrupted = True
            self._stopping = True
            for attempt in list(self._active.values()):
                self._stop(attempt, STOP_BATCH_ENDED, signum)
            running = len(self._active)
            if first:
                self.display.message(
                    f"stopping: {signal.Signals(signum).name} passed to {running} running "
                    f"task(s); they have {self.options.grace_seconds:g}s to exit before they "
                    "are killed, and their partial outputs are removed. Nothing new starts."
                )
            elif running:
                self.display.message(f"still stopping {running} task(s)...")
        return handled

    def _stop(self, attempt: _Attempt | None, reason: str, signum: int) -> None:
        """Ask a worker to stop (it forwards the signal to its command's process group)."""
        if attempt is None:
            return
        if attempt.stop_reason is None:
            attempt.stop_reason = reason
        with contextlib.suppress(ProcessLookupError):
            attempt.process.send_signal(signum)

    def _abandon(self) -> None:
        """On the way out with workers still running (an unexpected error): stop them."""
        for attempt in self._active.values():
            with contextlib.suppress(ProcessLookupError):
                attempt.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.options.grace_seconds + KILL_AFTER_GRACE_SECONDS
        for attempt in self._active.values():
            try:
                attempt.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                attempt.process.kill()
                attempt.process.wait()
        if self._active:
            self._reap()

    def slot_records(self) -> list[SlotRecord]:
        return [
            SlotRecord(name=s.name, model=s.model, description=s.describe()) for s in self.slots
        ]

    # ---------------------------------------------------------------------------- display
    def _show(self, *, force: bool = False) -> None:
        # The status counts pods as of the last pass; the attempts started by that pass are
        # running too.
        status_counts = self._status.counts
        running = len(self._active)
        counts = status_counts.model_copy(
            update={
                "running": running,
                "pending": max(0, status_counts.total - status_counts.finished() - running),
            }
        )
        self.display.progress(counts, force=force)

    def _save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_save < SAVE_EVERY_SECONDS:
            return
        self._last_save = now
        self.journal.save(
            LocalState(
                name=self.name,
                run=self._run_id,
                updated=datetime.now(UTC),
                slots=self.slot_records(),
                interrupted=self._interrupted,
                status=self._status,
            )
        )
