"""One task attempt, start to result: the part of the worker that pods and local mode share.

`run_task` is the seeds' per-task habits made uniform: look at the GPU first, skip work that is
already done, never run a GPU task on the CPU by accident, isolate the command's failure into a
result instead of an exception, and only let a finished output look finished. It returns a
`TaskResult`; writing it somewhere and exiting is the caller's business (`worker.main` in a pod,
the CLI's local runner on a workstation).

Order of checks, and why:
1. an empty command is a worker error (nothing sensible can run);
2. the GPU report is taken and logged first, so every log shows what the task would run on;
3. outputs that all exist make the task "skipped" even without a GPU: the work is done, and
   failing it for a missing GPU would only cause a pointless retry;
4. a required GPU that is absent fails the task with NO_GPU before the command starts;
5. the command runs; its result is checked against the declared outputs: a command that exits 0
   without writing them failed (OUTPUT_MISSING), in atomic mode and plain mode alike, because a
   "succeeded" task whose outputs are absent would be silently redone on the next run.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence

from gpubatch.api.result import (
    ExitCode,
    GpuIdentity,
    Outcome,
    Reason,
    TaskResult,
    signal_exit_code,
    signal_name,
)
from gpubatch.api.taskenv import TaskEnvironment
from gpubatch.edges import storage
from gpubatch.edges.nvml import GpuReport, probe_gpus
from gpubatch.worker.run import (
    UNTIED,
    CommandOutcome,
    Lifetime,
    OutputSink,
    StopRequest,
    build_command,
    run_command,
)

logger = logging.getLogger("gpubatch.worker")


def run_task(
    env: TaskEnvironment,
    argv: Sequence[str],
    *,
    gpu_reporter: Callable[[], GpuReport] = probe_gpus,
    stop: StopRequest | None = None,
    base_environ: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdout: OutputSink = None,
    stderr: OutputSink = None,
    lifetime: Lifetime = UNTIED,
) -> TaskResult:
    """Run one task attempt and describe how it ended. Never raises for a task's failure.

    `base_environ` is the command's environment before the task's GPUBATCH_* variables are laid
    over it (default: ours). The worker never adds CUDA_VISIBLE_DEVICES: on Kubernetes the
    device plugin pins the GPU; a local runner that pins one puts it in `base_environ`.
    """
    started = time.monotonic()
    stop = stop if stop is not None else StopRequest()
    finish = _Finisher(env, started)
    where = f"task {env.task_index} of batch {env.batch!r} (attempt {env.attempt})"
    try:
        command = build_command(argv, shell=env.shell)
    except ValueError:
        return finish(
            Outcome.FAILED,
            ExitCode.WORKER_ERROR,
            Reason.WORKER_ERROR,
            "no command: give the task's command after `--`: gpubatch-worker -- prog args...",
        )

    report = gpu_reporter()
    logger.info("%s: %s", where, report.summary())
    finish.gpus = report.identities()

    if env.skip_existing and env.outputs:
        try:
            if storage.all_exist(env.outputs):
                logger.info("%s: all %d outputs exist, skipping", where, len(env.outputs))
                return finish(
                    Outcome.SKIPPED,
                    ExitCode.SUCCESS,
                    Reason.OUTPUTS_EXIST,
                    f"all {len(env.outputs)} outputs already exist",
                )
        except storage.StorageError as err:
            logger.warning("%s: could not check outputs, running anyway: %s", where, err)

    if env.require_gpu and not report.available:
        return finish(
            Outcome.FAILED,
            ExitCode.NO_GPU,
            Reason.NO_GPU,
            f"{report.summary()}; the task requires a GPU, so the command was not run "
            "(a task that may run on the CPU must say so: worker.requireGPU: false in the "
            "batch spec, GPUBATCH_REQUIRE_GPU=false for the worker)",
        )

    try:
        existed_before = prepare_outputs(env, where)
    except storage.StorageError as err:
        return finish(Outcome.FAILED, ExitCode.WORKER_ERROR, Reason.WORKER_ERROR, str(err))

    if stop.requested is not None:
        return finish(
            Outcome.FAILED,
            signal_exit_code(stop.requested),
            Reason.INTERRUPTED,
            f"stopped by {signal_name(stop.requested)} before the command started",
        )

    environ = dict(os.environ if base_environ is None else base_environ)
    environ.update(env.to_environ())
    logger.info("%s: running %s", where, command)
    try:
        outcome = run_command(
            command,
            env=environ,
            cwd=cwd,
            deadline_seconds=env.deadline_seconds,
            grace_seconds=env.grace_seconds,
            stop=stop,
            stdout=stdout,
            stderr=stderr,
            lifetime=lifetime,
        )
    except OSError as err:
        not_found = isinstance(err, FileNotFoundError)
        return finish(
            Outcome.FAILED,
            ExitCode.COMMAND_NOT_FOUND if not_found else ExitCode.COMMAND_NOT_EXECUTABLE,
            Reason.COMMAND_NOT_FOUND if not_found else Reason.COMMAND_NOT_EXECUTABLE,
            f"cannot start {command[0]!r}: {err.strerror or err}",
        )

    result = _judge(finish, env, outcome)
    if result.outcome is not Outcome.SUCCEEDED:
        remove_leftovers(env, existed_before, where)
    return result


def prepare_outputs(env: TaskEnvironment, where: str) -> frozenset[str]:
    """Make the task's outputs ready to be written; return what existed before (non-atomic).

    Without atomic outputs, a failed attempt may leave a half-written output that the next
    attempt would take for finished work and skip; so what existed before is remembered. With
    them, a leftover partial from a killed attempt must never be promoted as this one's output.
    Raises storage.StorageError when storage cannot be read or prepared.
    """
    writes = env.write_paths()
    existed_before = frozenset() if env.atomic_outputs else frozenset(storage.existing(env.outputs))
    if env.atomic_outputs:
        storage.remove(writes)
    for problem in storage.ensure_parent_dirs(writes):
        logger.warning("%s: %s", where, problem)
    return existed_before


def remove_leftovers(env: TaskEnvironment, existed_before: frozenset[str], where: str) -> None:
    """A failed attempt's outputs must not be taken for finished work by the next run."""
    leftovers = (
        list(env.partial_outputs)
        if env.atomic_outputs
        else [path for path in env.outputs if path not in existed_before]
    )
    try:
        storage.remove(leftovers)
    except storage.StorageError as err:
        logger.warning("%s: could not remove outputs of the failed attempt: %s", where, err)


def _judge(finish: _Finisher, env: TaskEnvironment, outcome: CommandOutcome) -> TaskResult:
    """Turn how the command ended, and what it left in storage, into the task's result."""
    tail = f"; last stderr: {outcome.stderr_tail}" if outcome.stderr_tail else ""
    killed = " and killed after the grace period" if outcome.killed_after_grace else ""
    if outcome.stopped_by is not None:
        return finish(
            Outcome.FAILED,
            signal_exit_code(outcome.stopped_by),
            Reason.INTERRUPTED,
            f"stopped by {signal_name(outcome.stopped_by)} forwarded to the command{killed} "
            f"(its exit code: {outcome.exit_code}){tail}",
        )
    if outcome.deadline_exceeded:
        return finish(
            Outcome.FAILED,
            ExitCode.DEADLINE_EXCEEDED,
            Reason.DEADLINE_EXCEEDED,
            f"the command ran past its deadline of {env.deadline_seconds:g}s and was sent "
            f"SIGTERM{killed}{tail}",
        )
    if outcome.returncode < 0:
        name = signal_name(-outcome.returncode)
        hint = " (often the out-of-memory killer)" if -outcome.returncode == signal.SIGKILL else ""
        return finish(
            Outcome.FAILED,
            outcome.exit_code,
            Reason.SIGNALED,
            f"the command was killed by {name}{hint}{tail}",
        )
    if outcome.returncode != 0:
        return finish(
            Outcome.FAILED,
            outcome.returncode,
            Reason.NON_ZERO_EXIT,
            f"the command exited with code {outcome.returncode}{tail}",
        )
    return _check_outputs(finish, env)


def _check_outputs(finish: _Finisher, env: TaskEnvironment) -> TaskResult:
    writes = env.write_paths()
    note = ""
    try:
        present = storage.existing(writes)
    except storage.StorageUnavailable as err:
        if env.atomic_outputs:
            return finish(Outcome.FAILED, ExitCode.WORKER_ERROR, Reason.WORKER_ERROR, str(err))
        present, note = set(writes), f"outputs not verified: {err}"
    except storage.StorageError as err:
        return finish(Outcome.FAILED, ExitCode.WORKER_ERROR, Reason.WORKER_ERROR, str(err))
    missing = [path for path in writes if path not in present]
    if missing:
        which = "partial outputs (atomic mode)" if env.atomic_outputs else "outputs"
        return finish(
            Outcome.FAILED,
            ExitCode.OUTPUT_MISSING,
            Reason.OUTPUT_MISSING,
            f"the command exited 0 but did not write {len(missing)} of its {len(writes)} "
            f"{which}: {', '.join(missing)}",
        )
    if env.atomic_outputs:
        try:
            for partial, final in zip(env.partial_outputs, env.outputs, strict=True):
                storage.promote(partial, final)
        except storage.StorageError as err:
            return finish(Outcome.FAILED, ExitCode.WORKER_ERROR, Reason.WORKER_ERROR, str(err))
    return finish(Outcome.SUCCEEDED, ExitCode.SUCCESS, Reason.COMPLETED, note)


class _Finisher:
    """Builds the result with the fields every exit path shares (duration, GPUs, node)."""

    def __init__(self, env: TaskEnvironment, started: float) -> None:
        self._node = env.node_name
        self._started = started
        self.gpus: tuple[GpuIdentity, ...] = ()

    def __call__(self, outcome: Outcome, code: int, reason: Reason, message: str) -> TaskResult:
        return TaskResult(
            outcome=outcome,
            exit_code=int(code),
            reason=reason,
            duration_seconds=round(time.monotonic() - self._started, 3),
            gpus=self.gpus,
            node=self._node,
            message=message,
        )


def write_result(result: TaskResult, path: str) -> bool:
    """Write the encoded result (for the kubelet's termination message, or a local record).

    A failure to write is logged, not raised: the exit code still carries the outcome, and the
    task's work must not be thrown away because /dev/termination-log is absent outside a pod.
    """
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(result.encode())
    except OSError as err:
        logger.warning("could not write the task result to %s: %s", path, err)
        return False
    return True
