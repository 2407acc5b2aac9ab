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
- `worker.task.run_task`: each attempt is run by the task pods' own worker code, in a thread
  of this runner (`local.attempt`), so the skip re-check, atomic outputs, the deadline, signal
  forwarding, the output check and the result record are the pod's; only the command itself is
  a new process (no Python start per task). With `worker.mode: Warm` each slot keeps one
  program alive instead and feeds it the tasks it takes from the shared queue one at a time
  (`worker.warm.WarmWorker`, the same per-task promises), so the model is loaded once per slot.

What local mode adds: one slot per GPU, pinned with CUDA_VISIBLE_DEVICES (`slots`); Ctrl-C
forwarded to every task, which stops its command and removes partial outputs; one run per state
folder, held while anything it started is alive (`lock`); tasks that die with the runner (its
`watchdog` kills their process groups); and a record of each attempt in flight, so after a
`kill -9` the next run removes what the killed attempts half-wrote before it looks for finished
work.

The loop blocks on a queue of attempt ends (and signals), so a task that ends is replaced at
once, and every attempt that ended meanwhile is judged in one planner pass.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Final, Protocol

from gpubatch.api.result import Reason
from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.status import GPUBatchStatus, TaskCounts
from gpubatch.core import outputscan
from gpubatch.core.errors import TaskSpecError
from gpubatch.core.indexset import IndexSet
from gpubatch.core.invocation import task_invocation
from gpubatch.core.outcome import STOP_BATCH_ENDED
from gpubatch.core.outputscan import OutputScan
from gpubatch.core.partial import partial_paths
from gpubatch.core.planner import Limits, Observation, TaskAttempt, plan
from gpubatch.core.podview import PodView
from gpubatch.core.prepare import PreparedBatch
from gpubatch.edges import storage
from gpubatch.edges.nvml import GpuReport, probe_gpus
from gpubatch.local.attempt import (
    Attempt,
    AttemptEnd,
    Launch,
    PerTask,
    SlotRunner,
    SlotWorker,
    Warm,
)
from gpubatch.local.errors import LocalError
from gpubatch.local.journal import AttemptRecord, Journal, LocalState, SlotRecord
from gpubatch.local.lock import StateLock, claim
from gpubatch.local.messages import ended_lines
from gpubatch.local.slots import FreeBy, GpuThreshold, Slot, freest
from gpubatch.local.watchdog import Watchdog
from gpubatch.worker.run import Lifetime

#: At most this long between progress redraws (and checks of timers) when nothing happens.
IDLE_WAKE_SECONDS: Final = 0.25
#: How often status.json is rewritten while the run goes on.
SAVE_EVERY_SECONDS: Final = 1.0
#: After the tasks' own grace, how long the planner waits before it reports a stop as stuck.
KILL_AFTER_GRACE_SECONDS: Final = 5.0
#: Tasks whose outputs are checked before the first one starts (in dispatch order); the others
#: are checked in chunks by a background thread while tasks run, so a 100,000-task batch starts
#: its first task at once. A task started before its chunk was checked re-checks its own
#: outputs (the worker's skip check), so nothing runs twice either way.
SCAN_FIRST: Final = 5_000
SCAN_CHUNK: Final = 10_000
#: How often GPUs passed over (too little free memory, too busy) are read again while idle.
GPU_RECHECK_SECONDS: Final = 5.0
#: Results that mean the command cannot start at all: the batch's configuration is wrong.
CANNOT_START: Final = frozenset({Reason.COMMAND_NOT_FOUND, Reason.COMMAND_NOT_EXECUTABLE})


def scan_first(prepared: PreparedBatch) -> tuple[OutputScan, range]:
    """Check the outputs of the first SCAN_FIRST tasks in dispatch order; returns the scan and
    the dispatch positions left for the runner to check as it goes. When storage cannot answer,
    nothing is skipped up front (`problem` says why) and each task checks its own outputs."""
    total = len(prepared.tasks)
    if not prepared.spec.outputs:
        return OutputScan(), range(0)
    first = min(total, SCAN_FIRST)
    order = prepared.dispatch_order()
    try:
        scan = outputscan.scan_outputs(
            prepared, storage.existing, indexes=[order.at(p) for p in range(first)]
        )
    except storage.StorageError as err:
        return OutputScan(problem=f"could not check the outputs: {err}"), range(0)
    return scan, range(first, total)


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
    gpu_threshold: GpuThreshold = field(default_factory=GpuThreshold)
    verbose: bool = False


@dataclass
class LocalOutcome:
    """How a local run ended."""

    status: GPUBatchStatus
    records: list[AttemptRecord]
    wall_seconds: float
    interrupted: bool
    stopped_because: str | None = None  # the batch cannot run as configured


@dataclass
class _Ended:
    """An attempt that ended, waiting for the next planner pass to judge it."""

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
        lock: StateLock | None = None,
        scan_later: range = range(0),
    ) -> None:
        """`lock`: the state folder, already claimed (`local.lock.claim`) before the output scan;
        without one, `run` claims it. `scan_later`: dispatch positions whose outputs `scan` has
        not checked (see `scan_first`); a background thread checks them while tasks run."""
        if not slots:
            raise LocalError("no slots to run on")
        self.name = name
        self.prepared = prepared
        self.scan = scan
        self.slots = slots
        self.options = options
        self.display: Reporter = display if display is not None else _Silent()
        self._gpu_reporter = gpu_reporter
        self._lock = lock
        self._scan_later = scan_later
        self._found_later = IndexSet()  # found by the background scan since the last pass
        spec = prepared.spec
        parallelism = min(spec.parallelism or len(slots), len(slots))
        # The planner never starts more tasks than there are slots, and never holds any back
        # as "waiting to be scheduled": a local task starts the moment it is created.
        self._spec: GPUBatchSpec = spec.model_copy(
            update={"parallelism": parallelism, "max_pending": None}
        )
        self._order = prepared.dispatch_order()
        host = socket.gethostname().split(".")[0]
        self._node = {slot.name: f"{host}/{slot.name}" for slot in slots}
        self._node_models = {self._node[slot.name]: slot.model for slot in slots}
        # What every task's environment starts from: ours without any GPUBATCH_* of our own.
        self._base_environ = {k: v for k, v in os.environ.items() if not k.startswith("GPUBATCH_")}
        self._run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        self.journal: Journal | None = None
        self._status = GPUBatchStatus()
        self._cursor = 0
        self._active: dict[tuple[int, int], Attempt] = {}
        self._done: queue.SimpleQueue[AttemptEnd | OutputScan | None] = queue.SimpleQueue()
        self._ended: list[_Ended] = []
        self._invalid = dict(scan.invalid)
        self._idle: list[Slot] = list(slots)
        self._signals: deque[int] = deque()
        self._stopping = False
        self._replan = False
        self._interrupted = False
        self._cannot_start: str | None = None
        self._records: list[AttemptRecord] = []
        self._last_save = 0.0
        self._ready: list[Slot] = []  # idle slots that may take a task in this pass
        self._readings: GpuReport | None = None  # NVML, read again before each dispatch
        self._passed_over: dict[str, str] = {}
        self._workers: dict[str, SlotWorker] = {}
        self._pending_launch: list[tuple[Attempt, Launch]] = []

    # ------------------------------------------------------------------------------ checks
    def check(self) -> list[str]:
        """Render one task before anything starts: a batch whose command cannot run locally is
        refused now, not task by task. Returns notes about what local mode ignores."""
        index = next((i for i in range(len(self.prepared.tasks)) if i not in self._invalid), None)
        if index is None:
            return []
        rendered = self.prepared.render(index)
        self._check_writable(rendered.outputs)
        if not task_invocation(self.name, self.prepared.spec, rendered, 0).argv:
            raise LocalError(
                "the task container sets no command: local mode runs the command (and args) "
                "of the pod template's task container on this machine; set command"
            )
        return self._ignored_fields()

    @staticmethod
    def _check_writable(outputs: tuple[str, ...]) -> None:
        """A folder the outputs cannot be written to fails every attempt the same way, so it is
        found now, by creating (and removing) a file where the first task's outputs go."""
        for output in outputs:
            if storage.needs_fsspec(output):
                continue  # object storage has no folder to probe; the worker checks writes
            folder = os.path.dirname(output.removeprefix("file://").rstrip("/")) or "."
            try:
                os.makedirs(folder, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder, prefix=".gpubatch-write-check-"):
                    pass
            except OSError as err:
                raise LocalError(
                    f"cannot write outputs to {folder}: {err.strerror or err}. Every task would "
                    "fail the same way, so nothing was run; fix spec.outputRoot (or outputs) "
                    "or the folder's permissions",
                    environment=True,
                ) from None

    def _ignored_fields(self) -> list[str]:
        spec = self.prepared.spec
        container = spec.template.spec.containers[spec.task_container_index()]
        extra = container.model_extra or {}
        notes = []
        image = extra.get("image")
        ignored = [k for k in ("workingDir", "volumeMounts", "resources") if k in extra]
        what = f"the image ({image})" if image else "the image"
        notes.append(
            f"each task's command runs directly on this machine, supervised by gpubatch; {what}"
            + (f" and the container's {', '.join(ignored)} are" if ignored else " is")
            + " not used"
        )
        from_elsewhere = [v.name for v in container.env or [] if v.value is None]
        if from_elsewhere:
            notes.append(
                f"env {', '.join(from_elsewhere)} come from Kubernetes (valueFrom) and are not set"
            )
        if not spec.worker.wrap:
            notes.append("worker.wrap: false is set aside: local tasks are always supervised")
        if len(spec.template.spec.containers) > 1:
            notes.append("only the task container runs; the pod's other containers do not")
        return notes

    # -------------------------------------------------------------------------------- run
    def run(self) -> LocalOutcome:
        began = time.monotonic()
        lock = self._lock if self._lock is not None else claim(self.options.state_dir)
        self.journal = Journal(self.options.state_dir, self._run_id)
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        watchdog = Watchdog()  # forked before any thread of this run exists
        self._workers = {
            slot.name: SlotWorker(slot, self._done.put, self._slot_runner(slot))
            for slot in self.slots
        }
        if self._scan_later:
            threading.Thread(target=self._scan_rest, name="gpubatch-scan", daemon=True).start()
        try:
            self._loop(Lifetime(groups=watchdog, keep_inheritable_fds=True))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._abandon()
            for worker in self._workers.values():
                worker.close()
            watchdog.close()
            self._save(force=True)
            self._show(force=True)
            self.journal.close()
            lock.release()
        return LocalOutcome(
            status=self._status,
            records=self._records,
            wall_seconds=time.monotonic() - began,
            interrupted=self._interrupted,
            stopped_because=self._cannot_start,
        )

    def _slot_runner(self, slot: Slot) -> SlotRunner:
        """How the slot runs its attempts: a process each, or one warm program (worker.mode)."""
        worker = self.prepared.spec.worker
        if worker.mode != "Warm":
            return PerTask()
        assert self.journal is not None
        folder, run = self.journal.folder / "logs", self._run_id
        return Warm(
            lambda n: folder / f"warm-{slot.name}.program-{n}.{run}.log",
            load_seconds_allowed=worker.load_deadline_seconds,
            grace_seconds=self.options.grace_seconds,
        )

    def _loop(self, lifetime: Lifetime) -> None:
        """Wait for events (an attempt ended, a signal, a timer), then run one planner pass.

        Attempts report on a queue, so an ended task is seen at once, not at the next poll;
        every attempt that ended meanwhile is judged in the same pass.
        """
        first = True
        wake_at: float | None = None
        while True:
            now = time.monotonic()
            if first or self._replan:
                timeout = 0.0
            else:
                timeout = IDLE_WAKE_SECONDS
                if wake_at is not None:
                    timeout = max(0.0, min(timeout, wake_at - now))
            ended = self._collect(timeout)
            signalled = self._handle_signals()
            now = time.monotonic()
            due = wake_at is not None and now >= wake_at
            if first or ended or signalled or due or self._replan:
                self._replan = False
                wake_at = self._pass(first, now, lifetime)
                first = False
            if self._stopping and not self._active and not self._ended:
                return
            self._show()

    def _pass(self, first: bool, now: float, lifetime: Lifetime) -> float | None:
        """One planner pass and what it decided; returns when a timer needs the next one."""
        self._ready = self._ready_slots()
        decided = plan(
            Observation(
                spec=self._spec,
                generation=1,
                now=datetime.now(UTC),
                total=len(self.prepared.tasks),
                status=self._status,
                pods=[
                    *(a.view() for a in self._active.values()),
                    *(e.view for e in self._ended),
                ],
                order=self._order,
                cursor=self._cursor,
                outputs_exist=self._outputs_found(first),
                node_models=self._node_models,
                invalid_tasks=self._invalid,
                runs_warm=True,  # worker.mode: Warm is this runner's to carry out
                # As many creates as slots that may take a task now, so a task is never
                # created for a GPU that is passed over.
                limits=Limits(max_pending=len(self.slots), max_creates_per_pass=len(self._ready)),
            )
        )
        self._status, self._cursor = decided.status, decided.cursor
        assert self.journal is not None
        self.journal.flush()  # the ends judged in this pass, one write for all of them
        self._report_ended()
        for view, reason in decided.stop:
            self._stop(self._active.get(view.key), reason, signal.SIGTERM)
        if not self._stopping and decided.create:
            for create in decided.create:
                self._start(create, lifetime)
            self._launch_recorded()
            # On a cluster the new pods' events wake the next pass; here nothing would until
            # a task ends, and that pass sets the timers (batch deadline) that depend on the
            # start time the dispatching pass has just recorded.
            self._replan = self._spec.active_deadline_seconds is not None and first
        if decided.finished:  # Complete or Failed: nothing more starts
            self._stopping = True
        self._save()
        wake = [now + decided.wake_in] if decided.wake_in is not None else []
        if self._passed_over and not self._stopping:
            wake.append(now + GPU_RECHECK_SECONDS)  # a passed-over GPU may have freed up
        return min(wake, default=None)

    def _outputs_found(self, first: bool) -> IndexSet | None:
        """For the planner to record as skipped: the first scan on the first pass, then what
        the background scan has found since the previous pass."""
        if first:
            return self.scan.complete
        if not self._found_later:
            return None
        found, self._found_later = self._found_later, IndexSet()
        return found

    def _scan_rest(self) -> None:
        """The background scan: the rest of the batch in dispatch order, chunk by chunk, each
        chunk's result posted to the loop's queue. Storage errors end it quietly: the tasks
        check their own outputs anyway."""
        positions = self._scan_later
        for start in range(positions.start, positions.stop, SCAN_CHUNK):
            if self._stopping:
                return
            chunk = range(start, min(start + SCAN_CHUNK, positions.stop))
            indexes = [self._order.at(position) for position in chunk]
            try:
                found = outputscan.scan_outputs(self.prepared, storage.existing, indexes=indexes)
            except storage.StorageError:
                return
            self._done.put(found)

    def _ready_slots(self) -> list[Slot]:
        """The idle slots that may take a task now: all of them, unless GPU thresholds are set
        (then NVML is read again, and each GPU passed over or back in says so once)."""
        threshold = self.options.gpu_threshold
        self._readings = None
        if not (threshold.active or self.options.freest_first) or not any(
            s.is_gpu for s in self._idle
        ):
            return list(self._idle)
        self._readings = self._gpu_reporter()
        ready = []
        for slot in self._idle:
            why = threshold.passed_over(slot, self._readings) if threshold.active else None
            before = self._passed_over.get(slot.name)
            if why is None:
                ready.append(slot)
                if before is not None:
                    del self._passed_over[slot.name]
                    self.display.message(f"slot {slot.name} takes tasks again: {slot.describe()}")
            elif why != before:
                self._passed_over[slot.name] = why
                self.display.message(
                    f"slot {slot.name} passed over: {why} (GPUs are read again before each "
                    f"dispatch, and every {GPU_RECHECK_SECONDS:g}s while one waits)"
                )
        return ready

    # ------------------------------------------------------------------------------ start
    def _start(self, create: TaskAttempt, lifetime: Lifetime) -> None:
        assert self.journal is not None
        slot = self._take_slot()
        try:
            launch = self._launch(create.index, create.attempt, slot, lifetime)
        except TaskSpecError as err:
            # Fails this task alone, as in the operator; the next pass records it.
            self._idle.append(slot)
            self._invalid[create.index] = str(err)
            self._replan = True
            return
        self.journal.started(create.index, create.attempt, self._remove_if_unfinished(launch))
        attempt = Attempt(
            index=create.index,
            attempt=create.attempt,
            slot=slot,
            node=self._node[slot.name],
            log=self.journal.log_path(create.index, create.attempt),
            started=time.time(),
            deadline_slack=self.options.grace_seconds + KILL_AFTER_GRACE_SECONDS,
        )
        self._active[attempt.key] = attempt
        self._pending_launch.append((attempt, launch))
        if self.options.verbose:
            self.display.message(
                f"task {create.index} started on {slot.name} (attempt {create.attempt})"
            )

    def _launch_recorded(self) -> None:
        """Start the attempts this pass created, once their start records are on disk (one
        write for the pass, not one per task)."""
        assert self.journal is not None
        self.journal.flush()
        for attempt, launch in self._pending_launch:
            self._workers[attempt.slot.name].run(attempt, launch)
        self._pending_launch.clear()

    def _take_slot(self) -> Slot:
        # The planner creates at most as many attempts as there are ready slots.
        assert self._ready, "the planner started more tasks than there are ready slots"
        if self.options.freest_first and len(self._ready) > 1 and self._readings is not None:
            chosen = freest(self._ready, self._readings, self.options.freest_first)
        else:
            chosen = self._ready[0]
        self._ready.remove(chosen)
        self._idle.remove(chosen)
        return chosen

    def _launch(self, index: int, attempt: int, slot: Slot, lifetime: Lifetime) -> Launch:
        """What one attempt runs (core.invocation, exactly what a pod would run) with this
        slot's pinning in its environment."""
        invocation = task_invocation(
            self.name, self.prepared.spec, self.prepared.render(index), attempt
        )
        environ = dict(self._base_environ)
        environ.update(invocation.env)
        environ.update(slot.environ())
        task = invocation.task.model_copy(
            update={
                "node_name": self._node[slot.name],
                "grace_seconds": self.options.grace_seconds,
                # CPU slots were asked for (--slots): the task runs without a GPU.
                "require_gpu": invocation.task.require_gpu and slot.is_gpu,
            }
        )
        gpus = (
            GpuReport(devices=slot.devices)
            if slot.is_gpu
            else GpuReport(problem=f"{slot.name} is a CPU slot (--slots)")
        )
        return Launch(task, invocation.argv, environ, gpus, lifetime)

    def _remove_if_unfinished(self, launch: Launch) -> list[str]:
        """What a killed run must not leave behind for this attempt: in atomic mode its
        partial outputs; otherwise the outputs it may create (those absent now). If storage
        cannot say, nothing (an existing output is never deleted on a guess)."""
        task = launch.task
        if task.atomic_outputs:
            return list(task.partial_outputs or partial_paths(task.outputs))
        if not task.outputs:
            return []
        try:
            before = storage.existing(task.outputs)
        except storage.StorageError:
            return []
        return [path for path in task.outputs if path not in before]

    # ------------------------------------------------------------------------------- ends
    def _collect(self, timeout: float) -> bool:
        """Wait up to `timeout` for attempts to end; take every one that has. True if any."""
        try:
            first = self._done.get(timeout=timeout) if timeout > 0 else self._done.get_nowait()
        except queue.Empty:
            return False
        items = [first]
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self._done.get_nowait())
        news = False
        for item in items:
            if isinstance(item, AttemptEnd):
                self._ended.append(self._finish(item))
                news = True
            elif isinstance(item, OutputScan):  # a chunk of the background scan
                self._found_later = self._found_later.union(item.complete)
                self._invalid.update(item.invalid)
                news = True
            # None: a signal woke the loop; _handle_signals reads it
        return news

    def _finish(self, end: AttemptEnd) -> _Ended:
        assert self.journal is not None
        attempt = self._active.pop(end.key)
        self._idle.append(attempt.slot)
        self._idle.sort(key=self.slots.index)
        result = end.result
        record = AttemptRecord(
            run=self._run_id,
            index=attempt.index,
            attempt=attempt.attempt,
            slot=attempt.slot.name,
            model=(result.gpu_model or attempt.slot.model),
            start=attempt.started,
            end=end.ended_at,
            exit_code=result.exit_code,
            result=result,
            log=str(attempt.log),
            stopped=attempt.stop_reason == STOP_BATCH_ENDED,
        )
        self.journal.append(record)  # flushed once per pass (see _pass)
        self._records.append(record)
        if result.reason in CANNOT_START and self._cannot_start is None:
            self._cannot_start = result.message
            self._stop_everything(signal.SIGTERM)
            self.display.message(
                f"stopping: task {attempt.index} {result.message}. A command that cannot "
                "start is a problem of the batch file, not of one task, so no other task "
                "starts; fix the command (and its PATH) and run again."
            )
        view = attempt.view(
            phase="Succeeded" if result.exit_code == 0 else "Failed",
            exit_code=result.exit_code,
            message=result.encode(),
            finished_at=end.ended_at,
        )
        return _Ended(record, view)

    def _report_ended(self) -> None:
        """The lines about attempts that ended, now that the planner has judged them."""
        if not self._ended:
            return
        records = [ended.record for ended in self._ended]
        now = datetime.now(UTC)
        for line in ended_lines(records, self._status, now, verbose=self.options.verbose):
            self.display.message(line)
        self._ended.clear()

    # ------------------------------------------------------------------------------- stop
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)  # handled by the loop: no work inside a signal handler
        self._done.put(None)  # wakes the loop (SimpleQueue.put is safe in a signal handler)

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

    def _stop(self, attempt: Attempt | None, reason: str, signum: int) -> None:
        """Ask an attempt to stop (its supervisor signals the command's process group, then
        kills it after the grace)."""
        if attempt is None:
            return
        if attempt.stop_reason is None:
            attempt.stop_reason = reason
        attempt.stop.request(signum)

    def _stop_everything(self, signum: int) -> None:
        self._stopping = True
        for attempt in list(self._active.values()):
            self._stop(attempt, STOP_BATCH_ENDED, signum)

    def _abandon(self) -> None:
        """On the way out with attempts still running (an unexpected error): stop them and
        wait for their supervisors, which kill each command's group after the grace."""
        for attempt in self._active.values():
            attempt.stop.request(signal.SIGTERM)
        while self._active:  # each ends by the grace, when its supervisor kills the command
            self._collect(IDLE_WAKE_SECONDS)

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
        if self.journal is None or (not force and now - self._last_save < SAVE_EVERY_SECONDS):
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
