"""The seven commands, each a short assembly of the modules beside it.

Output convention: what the command produces (a listing, a table, a summary) goes to stdout, so
it can be piped or saved; progress, notes and per-task messages go to stderr. Each command
returns its exit code (`errors.Exit`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpubatch.api.names import DEFAULT_GPU_MODEL_LABEL, MANAGED_BY_MULTIKUEUE
from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.status import GPUBatchStatus
from gpubatch.cli.batchfile import BatchFile, load_batch_file, prepare
from gpubatch.cli.errors import CliError, Exit
from gpubatch.cli.preview import listing as task_listing
from gpubatch.cli.preview import scan_outputs, summary, task_rows
from gpubatch.cli.progress import ProgressDisplay, ProgressReporter
from gpubatch.cli.report import batch_report, local_report, runs_table, slot_table
from gpubatch.cli.statusview import (
    all_succeeded,
    batch_state,
    failures_table,
    model_table,
    status_text,
    summary_line,
)
from gpubatch.cli.timeline import bars_from_pods, bars_from_records, plot_timeline
from gpubatch.cli.watch import follow
from gpubatch.core.errors import SpecError, TaskSpecError
from gpubatch.core.kueueworkload import (
    MultiKueueSubmission,
    WorkloadError,
    batch_workload,
    for_multikueue,
)
from gpubatch.core.outputscan import OutputScan
from gpubatch.core.podspec import BatchRef, render_pod
from gpubatch.core.podview import pod_view
from gpubatch.core.prepare import PreparedBatch
from gpubatch.edges.nvml import GpuReport, probe_gpus
from gpubatch.local.journal import load_state, read_attempts, state_dir
from gpubatch.local.lock import StateLock, claim
from gpubatch.local.runner import LocalOutcome, LocalRunner, RunOptions, scan_first
from gpubatch.local.slots import GpuThreshold, SlotPlan, parse_memory, plan_slots


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _exit_for(status: GPUBatchStatus) -> int:
    """For a batch that has ended: 0 only if every task succeeded or was skipped."""
    return int(Exit.OK if all_succeeded(status) else Exit.TASKS_FAILED)


def _status_exit(status: GPUBatchStatus) -> int:
    """For a batch that may still run: 1 once something failed, else 0."""
    failed = status.counts.failed > 0 or batch_state(status) == "Failed"
    return int(Exit.TASKS_FAILED if failed else Exit.OK)


# ----------------------------------------------------------------------------- offline
def validate(args: argparse.Namespace) -> int:
    batch_file = load_batch_file(args.file)
    spec = batch_file.batch.spec
    if args.no_expand:
        print(f"{args.file}: valid GPUBatch {batch_file.name} (tasks not expanded: --no-expand)")
        return int(Exit.OK)
    prepared = prepare(batch_file)
    invalid = _unrenderable_tasks(prepared)
    first = next((i for i in range(len(prepared.tasks)) if i not in invalid), None)
    if first is not None:
        # The operator renders pods only when it dispatches; render one now so a problem it
        # would find then (a wrapped task container without a command) is found here.
        try:
            render_pod(
                BatchRef(batch_file.name, "validate", "validate"), spec, prepared.render(first), 0
            )
        except SpecError as err:
            raise CliError(f"{args.file}: {err}") from None
    if invalid:
        index, problem = next(iter(invalid.items()))
        raise CliError(
            f"{args.file}: {len(invalid)} of {len(prepared.tasks)} task(s) cannot run and would "
            f"fail without a pod, e.g. task {index}: {problem}"
        )
    container = spec.template.spec.containers[spec.task_container_index()]
    print(
        f"{args.file}: valid GPUBatch {batch_file.name}: {len(prepared.tasks)} tasks "
        f"(parameters: {', '.join(prepared.tasks.param_names) or 'none'}), "
        f"{len(spec.outputs)} output(s) per task, task container {container.name!r}"
    )
    return int(Exit.OK)


def _unrenderable_tasks(prepared: PreparedBatch) -> dict[int, str]:
    """Every task rendered (outputs, argv, env; no storage needed): the tasks that would fail
    alone."""
    invalid: dict[int, str] = {}
    for task in prepared.tasks.tasks(range(len(prepared.tasks))):
        try:
            prepared.renderer.render(task)
        except TaskSpecError as err:
            invalid[task.index] = err.problem
    return invalid


def expand(args: argparse.Namespace) -> int:
    batch_file = load_batch_file(args.file)
    prepared = prepare(batch_file)
    scan = scan_outputs(prepared)
    if scan.problem:
        _err(f"warning: {scan.problem}; every task is listed as 'run'")
    total = len(prepared.tasks)
    shown = total if args.all or args.limit is None else min(args.limit, total)
    rows = task_rows(prepared, scan, range(shown))
    if args.json:
        for row in rows:
            print(row.to_json())
        _err(summary(batch_file.name, prepared, scan))
        return int(Exit.OK)
    print(task_listing(rows, show_command=args.show_command))
    if shown < total:
        print(f"... {total - shown} more task(s) not listed (--all lists every task)")
    print(summary(batch_file.name, prepared, scan))
    return int(Exit.OK)


# ------------------------------------------------------------------------------- local
def run(args: argparse.Namespace) -> int:
    batch_file = load_batch_file(args.file)
    prepared = prepare(batch_file)
    spec = prepared.spec
    if spec.suspend:
        raise CliError(f"{args.file}: spec.suspend is true, so no task would start; remove it")
    report = (
        GpuReport(problem="not looked for: CPU slots were asked for")
        if args.slots is not None
        else probe_gpus()
    )
    slots = plan_slots(
        report,
        gpus=args.gpus,
        cpu_slots=args.slots,
        gpus_per_task=spec.gpus_per_task,
        gpu_models=spec.gpu_models,
        require_gpu=spec.worker.require_gpu,
    )
    folder = state_dir(batch_file.name, args.state_dir)
    # Claimed before the scan: a run still going (or its tasks) is refused, and what a killed
    # run left half-written is removed before anything is taken for finished work.
    lock = claim(folder)
    try:
        return _run_claimed(batch_file, prepared, slots, args, folder, lock)
    finally:
        lock.release()


def _run_claimed(
    batch_file: BatchFile,
    prepared: PreparedBatch,
    slots: SlotPlan,
    args: argparse.Namespace,
    folder: Path,
    lock: StateLock,
) -> int:
    scan, later = scan_first(prepared)
    display = ProgressDisplay(enabled=not args.no_progress)
    runner = LocalRunner(
        batch_file.name,
        prepared,
        scan,
        slots.slots,
        RunOptions(
            state_dir=folder,
            grace_seconds=args.grace,
            freest_first=args.free_by if args.freest_first else None,
            gpu_threshold=_gpu_threshold(args),
            verbose=args.verbose,
        ),
        display=ProgressReporter(batch_file.name, display, len(scan.complete) + len(scan.invalid)),
        lock=lock,
        scan_later=later,
    )
    notes = [*slots.notes, *runner.check()]
    _announce(batch_file.name, len(prepared.tasks), scan, later, slots, notes)
    _err(f"  records and logs: {folder}/")
    try:
        outcome = runner.run()
    finally:
        display.close()
    return _conclude(batch_file.name, outcome, runner)


def _announce(
    name: str, total: int, scan: OutputScan, later: range, slots: SlotPlan, notes: Sequence[str]
) -> None:
    """What the run is about to do, before the first task starts."""
    todo = total - len(scan.complete) - len(scan.invalid)
    invalid = f", {len(scan.invalid)} invalid" if scan.invalid else ""
    if later:
        _err(
            f"gpubatch run: {name}: {total} tasks; of the first {total - len(later)} in dispatch "
            f"order, {len(scan.complete)} already done (outputs exist){invalid}; the outputs of "
            f"the other {len(later)} are checked while tasks run"
        )
    else:
        _err(
            f"gpubatch run: {name}: {total} tasks, {todo} to run, "
            f"{len(scan.complete)} already done (outputs exist){invalid}"
        )
    for slot in slots.slots:
        _err(f"  slot {slot.describe()}")
    for note in notes:
        _err(f"  note: {note}")
    if scan.problem:
        _err(f"  note: {scan.problem}; each task checks its own outputs")


def _conclude(name: str, outcome: LocalOutcome, runner: LocalRunner) -> int:
    """The run's summary and its exit code."""
    status = outcome.status
    state = "interrupted" if outcome.interrupted else batch_state(status)
    print(f"{name}: {state} - {summary_line(status)}")
    if outcome.records:
        print("\nper slot (this run):")
        print(slot_table(outcome.records, runner.slot_records(), outcome.wall_seconds))
    if status.gpu_models:
        print("\nper GPU model:")
        print(model_table(status))
    if status.recent_failures:
        print("\nrecent failures (newest last):")
        print(failures_table(status, limit=10))
    if outcome.stopped_because:
        print(f"\nstopped: a task's command cannot start ({outcome.stopped_because}); fix it")
        return int(Exit.USAGE)
    if outcome.interrupted:
        print("\nstopped: run the same command again to continue (finished tasks are skipped)")
        return int(Exit.INTERRUPTED)
    if not all_succeeded(status):
        print(
            "\nsome tasks failed: fix the cause and run the same command again; "
            "finished tasks are skipped, failed ones run again"
        )
    return _exit_for(status)


def _gpu_threshold(args: argparse.Namespace) -> GpuThreshold:
    free_bytes, free_share = (
        parse_memory(args.min_free_memory) if args.min_free_memory else (None, None)
    )
    if args.max_utilization is not None and not 0 <= args.max_utilization <= 100:
        raise CliError("--max-utilization is a percentage from 0 to 100")
    return GpuThreshold(free_bytes, free_share, args.max_utilization)


# ----------------------------------------------------------------------------- cluster
def _cluster(args: argparse.Namespace, namespace: str | None = None) -> Any:
    from gpubatch.cli.kube import Cluster

    return Cluster(namespace=args.namespace or namespace, context=args.context)


def submit(args: argparse.Namespace) -> int:
    batch_file = load_batch_file(args.file)
    cluster = _cluster(args, batch_file.namespace)
    spec = batch_file.batch.spec
    mirrored = spec.managed_by == MANAGED_BY_MULTIKUEUE
    try:
        submission = for_multikueue(batch_file.document) if mirrored else None
    except WorkloadError as error:
        raise CliError(f"{batch_file.path}: {error}") from None
    obj, created = cluster.apply(submission.document if submission else batch_file.document)
    generation = (obj.get("metadata") or {}).get("generation")
    verb = "created" if created else "configured"
    print(f"{cluster.where(batch_file.name)} {verb} (generation {generation})")
    if submission is not None:
        _submit_workload(cluster, obj, spec, submission)
    if not args.watch:
        _err(f"follow it: gpubatch watch {batch_file.name} -n {cluster.namespace}")
        return int(Exit.OK)
    return _watch(cluster, batch_file.name, args)


def _submit_workload(
    cluster: Any, batch: dict[str, Any], spec: GPUBatchSpec, submission: MultiKueueSubmission
) -> None:
    """MultiKueue admits a batch through a Workload it owns: apply that Workload now that the
    batch (and its uid) exists. Nothing runs here: MultiKueue mirrors both to a worker."""
    try:
        workload = batch_workload(batch, spec, submission.queue, submission.workload)
    except WorkloadError as error:
        raise CliError(str(error)) from None
    cluster.apply_workload(workload)
    print(
        f"Kueue Workload {cluster.namespace}/{submission.workload} applied "
        f"({spec.parallelism} pods, LocalQueue {submission.queue}): MultiKueue runs the batch "
        "on a worker cluster and copies its status here"
    )


def status(args: argparse.Namespace) -> int:
    if args.local:
        folder = state_dir(args.name, args.state_dir)
        state = load_state(folder)
        note = ", interrupted" if state.interrupted else ""
        print(
            status_text(
                f"local batch {state.name} (latest run {state.run}{note}; {folder}/)",
                state.status,
            )
        )
        history = read_attempts(folder)
        if history:
            print("runs with attempts (oldest first):")
            print(runs_table(history))
        return _status_exit(state.status)
    from gpubatch.cli.kube import parse_status

    cluster = _cluster(args)
    obj = cluster.get(args.name)
    parsed = parse_status(obj)
    print(status_text(cluster.where(args.name), parsed))
    return _status_exit(parsed) if parsed is not None else int(Exit.OK)


def watch(args: argparse.Namespace) -> int:
    return _watch(_cluster(args), args.name, args)


def _watch(cluster: Any, name: str, args: argparse.Namespace) -> int:
    from gpubatch.cli.kube import parse_status

    display = ProgressDisplay(enabled=not args.no_progress)
    try:
        final = follow(
            cluster.where(name),
            lambda: cluster.find(name),
            parse_status,
            display,
            interval=args.interval,
            timeout=args.timeout,
        )
    finally:
        display.close()
    print(f"{cluster.where(name)}: {batch_state(final)} - {summary_line(final)}")
    print(model_table(final, indent="  "))
    if final.recent_failures:
        print("recent failures (newest last):")
        print(failures_table(final, limit=5, indent="  "))
    return _exit_for(final)


def report(args: argparse.Namespace) -> int:
    if args.local:
        folder = state_dir(args.name, args.state_dir)
        state = load_state(folder)
        records = read_attempts(folder)  # the batch's history, not only the latest run
        print(local_report(state, records))
        if args.plot:
            runs = len({r.run for r in records})
            title = f"{state.name}: {len(records)} attempts in {runs} local run(s)"
            plot_timeline(bars_from_records(records), args.plot, title)
            _err(f"timeline written to {args.plot}")
        return int(Exit.OK)
    from gpubatch.cli.kube import parse_status

    cluster = _cluster(args)
    obj = cluster.get(args.name)
    parsed = parse_status(obj) or GPUBatchStatus()
    print(batch_report(cluster.where(args.name), parsed, failures=args.failures))
    if args.plot:
        _plot_cluster(cluster, obj, parsed, Path(args.plot))
    return int(Exit.OK)


def _plot_cluster(cluster: Any, obj: dict[str, Any], parsed: GPUBatchStatus, path: Path) -> None:
    spec = obj.get("spec") or {}
    name = obj["metadata"]["name"]
    pods = cluster.task_pods(obj["metadata"]["uid"])
    views = [v for v in (pod_view(p, spec.get("taskContainer")) for p in pods) if v is not None]
    nodes = [v.node for v in views if v.node]
    models = cluster.node_labels(nodes, spec.get("gpuModelLabel") or DEFAULT_GPU_MODEL_LABEL)
    bars = bars_from_pods(views, models)
    shown = len({b.index for b in bars})
    title = f"{name}: {shown} of {parsed.counts.total} tasks from the pods that still exist"
    plot_timeline(bars, path, title)
    note = ""
    if shown < parsed.counts.total:
        note = (
            "; the others' pods are gone (deleted by podCleanup): set podCleanup.succeeded: "
            "Keep for a complete timeline"
        )
    _err(f"timeline written to {path} ({shown} of {parsed.counts.total} tasks{note})")
