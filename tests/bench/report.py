"""Render tests/bench/results/*.json as the Markdown tables quoted in BENCHMARKS.md.

`python -m bench.report` prints them; numbers are never typed by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _table(rows: list[tuple[str, Any, str]]) -> str:
    lines = ["| measure | result | target |", "| --- | --- | --- |"]
    lines += [f"| {name} | {_f(value)} | {target} |" for name, value, target in rows]
    return "\n".join(lines)


def render() -> str:
    parts: list[str] = []
    if (r := _load("dispatch")) is not None:
        parts.append(f"### 1. Dispatch rate ({r['tasks']} tasks, 50 ms each, 1,024 fake GPUs)\n")
        parts.append(
            _table(
                [
                    (
                        "raw async client, pods created / s (ceiling)",
                        r["raw_ceiling_pods_per_s"],
                        "",
                    ),
                    (
                        "minimal dispatcher, same workload, pods created / s",
                        r.get("minimal_dispatcher_pods_per_s", math.nan),
                        "",
                    ),
                    ("gpubatch, pods created / s", r["gpubatch_pods_per_s"], ""),
                    ("gpubatch / ceiling", r["gpubatch_vs_ceiling"], ">= 0.8"),
                    (
                        "gpubatch / minimal dispatcher",
                        r.get("gpubatch_vs_minimal_dispatcher", math.nan),
                        "",
                    ),
                    ("Indexed Job, pods created / s", r["job_pods_per_s"], ""),
                    ("gpubatch / Indexed Job", r["gpubatch_vs_job"], "> 1"),
                    (
                        "fill rate until the GPUs are taken, pods / s: "
                        "minimal dispatcher / gpubatch / Job",
                        " / ".join(
                            _f(r.get(f"{who}_fill_pods_per_s", math.nan))
                            for who in ("minimal_dispatcher", "gpubatch", "job")
                        ),
                        "",
                    ),
                    (
                        "minimal dispatcher total seconds",
                        r.get("minimal_dispatcher_total_s", math.nan),
                        "",
                    ),
                    ("gpubatch total seconds", r["gpubatch_total_s"], ""),
                    ("Indexed Job total seconds", r["job_total_s"], ""),
                    ("operator CPU seconds per 1k tasks", r["operator_cpu_s_per_1k"], "<= 2"),
                    (
                        "operator API requests per task (audit log)",
                        r["operator_requests_per_task"],
                        "",
                    ),
                ]
            )
        )
    if (r := _load("makespan")) is not None:
        parts.append(
            f"\n### 2-3. Makespan and reaction latency ({r['tasks']} log-normal tasks, "
            f"{r['gpus']} GPUs, mean task {r.get('mean_task_s', 2.0):g} s, "
            f"lower bound {r['lower_bound_s']:.0f} s)\n"
        )
        parts.append(
            _table(
                [
                    (
                        "gpubatch, index order: makespan / lower bound",
                        r["gpubatch_index_ratio"],
                        "<= 1.05",
                    ),
                    (
                        "gpubatch, longest first: makespan / lower bound",
                        r["gpubatch_longest_first_ratio"],
                        "<= 1.05",
                    ),
                    ("Indexed Job: makespan / lower bound", r["job_ratio"], ""),
                    (
                        "Indexed Job makespan / gpubatch longest-first makespan",
                        r["job_s"] / r["gpubatch_longest_first_s"],
                        "> 1",
                    ),
                    (
                        "gpubatch reaction p50 ms (index order)",
                        r["gpubatch_index_reaction_p50_ms"],
                        "<= 100",
                    ),
                    (
                        "gpubatch reaction p99 ms (index order)",
                        r["gpubatch_index_reaction_p99_ms"],
                        "<= 1000",
                    ),
                    (
                        "gpubatch reaction p50 / p99 ms (longest first)",
                        f"{r['gpubatch_longest_first_reaction_p50_ms']:.0f} / "
                        f"{r['gpubatch_longest_first_reaction_p99_ms']:.0f}",
                        "",
                    ),
                    ("Indexed Job reaction p50 ms", r["job_reaction_p50_ms"], ""),
                    ("Indexed Job reaction p99 ms", r["job_reaction_p99_ms"], ""),
                    (
                        "freed GPU waits for its next pod, p50 / p99 ms: "
                        "gpubatch index / longest first / Job",
                        " / ".join(
                            f"{_f(r.get(f'{who}_gpu_idle_p50_ms', math.nan), 0)}"
                            f" / {_f(r.get(f'{who}_gpu_idle_p99_ms', math.nan), 0)}"
                            for who in ("gpubatch_index", "gpubatch_longest_first", "job")
                        ),
                        "",
                    ),
                    (
                        "operator CPU seconds per 1k tasks (index order)",
                        r["gpubatch_index_cpu_s_per_1k"],
                        "<= 2",
                    ),
                    (
                        "operator API requests per task (index order)",
                        r["gpubatch_index_requests_per_task"],
                        "",
                    ),
                ]
            )
        )
    if (r := _load("mixed")) is not None:
        parts.append(
            f"\n### 4. Mixed GPU models ({r['tasks']} tasks, 32 fast + 32 slow GPUs, "
            "slow = 2x run time)\n"
        )
        parts.append(
            _table(
                [
                    ("dynamic (one batch) seconds", r["dynamic_s"], ""),
                    ("static half/half split seconds", r["static_split_s"], ""),
                    ("static / dynamic", r["static_over_dynamic"], "> 1"),
                    (
                        "share of tasks run on fast GPUs (dynamic)",
                        r["dynamic_share_on_fast"],
                        "ideal 0.67",
                    ),
                ]
            )
        )
    if (r := _load("cost")) is not None:
        parts.append(f"\n### 5. Cost at {r['tasks']} tasks (manifest source)\n")
        parts.append(
            _table(
                [
                    ("operator peak RSS MiB", r["operator_peak_rss_mib"], "<= 300"),
                    ("GPUBatch object bytes (mid-run)", r["object_bytes_mid_run"], "<= 65536"),
                    ("seconds from apply to 500 tasks done", r["seconds_to_500_done"], ""),
                ]
            )
        )
    if (r := _load("scan")) is not None:
        parts.append("\n### 6. Skip scan (half the outputs exist)\n")
        parts.append(
            _table(
                [
                    (
                        f"local filesystem, {r['local_outputs']} outputs, seconds",
                        r["local_seconds"],
                        "<= 5",
                    ),
                    (
                        f"S3 stand-in (moto), {r['s3_outputs']} outputs, seconds",
                        r["s3_seconds"],
                        "",
                    ),
                ]
            )
        )
    if (r := _load("local")) is not None:
        parts.append(_local_section(r))
    if (r := _load("warm-local")) is not None:
        parts.append(_warm_local_section(r))
    if (r := _load("warm")) is not None:
        parts.append(_warm_cluster_section(r))
    if (r := _load("kueue-admission")) is not None:
        parts.append(_kueue_section(r))
    chaos = sorted(RESULTS.glob("chaos-*.json"))
    if chaos:
        parts.append("\n### Chaos\n")
        lines = [
            "| run | tasks | fault | succeeded | extra attempts | concurrent attempts "
            "| pods left | ok |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for path in chaos:
            r = json.loads(path.read_text())
            fault = ", ".join(
                f"{k}={_f(v, 1)}"
                for k, v in r.items()
                if k
                in (
                    "operator_kills",
                    "apiserver_restart_seconds",
                    "etcd_kill_restart_seconds",
                    "node_deleted",
                    "warm_pods_deleted",
                )
            )
            lines.append(
                f"| {r['run']} | {r['tasks']} | {fault} | {r['succeeded']} | "
                f"{r['tasks_with_extra_attempts']} | "
                f"{r['concurrent_attempt_violations']} | {r['pods_left']} | "
                f"{r['ok']} |"
            )
        parts.append("\n".join(lines))
    return "\n".join(parts) + "\n"


_METHODS = (
    ("gpubatch_index", "`gpubatch run` (index order)"),
    ("gpubatch_longest_first", "`gpubatch run` (longest first)"),
    ("seed_queue", "seed-000 queue (Manager queue, process per slot)"),
    ("gnu_parallel", "GNU parallel `-j N`"),
    ("static_split", "seed-003 static split"),
)


def _local_section(r: dict[str, Any]) -> str:
    """One table, one column per workload, one row per method (seconds of wall time)."""
    columns = [
        (f"{r['tiny_2_slots']['tasks']} x `true`, 2 slots", r["tiny_2_slots"]),
        (f"{r['tiny_4_slots']['tasks']} x `true`, 4 slots", r["tiny_4_slots"]),
        (
            f"{r['skewed_4_slots']['tasks']} log-normal sleeps (sum "
            f"{r['skewed_4_slots']['sum_seconds']:.1f} s, lower bound "
            f"{r['skewed_4_slots']['lower_bound_seconds']:.1f} s), 4 slots",
            r["skewed_4_slots"],
        ),
    ]
    bound = r["skewed_4_slots"]["lower_bound_seconds"]
    lines = [
        f"\n### 7. `gpubatch run` against the users' scripts ({r['cpus']}-core machine, "
        "wall seconds)\n",
        "| method | " + " | ".join(name for name, _ in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for key, label in _METHODS:
        cells = []
        for _, data in columns:
            value = data.get(key)
            if value is None:
                cells.append("-")
            elif data is r["skewed_4_slots"]:
                cells.append(f"{value:.1f} ({value / bound:.2f}x)")
            else:
                cells.append(f"{value:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    big = r["range"]
    lines.append(
        f"\n{big['tasks']}-task range on {big['slots']} slots: first task ran "
        f"{big['first_task_seconds']:.2f} s after `gpubatch run` started (target <= 1 s); "
        f"peak memory {big['peak_rss_mib']:.0f} MiB (target <= 100 MiB)."
    )
    return "\n".join(lines)


_WARM_METHODS = (
    ("gpubatch_warm", "`gpubatch run`, worker.mode: Warm (one program per slot, shared queue)"),
    ("static_split", "seed-003 static split (one program per slot, fixed quarters)"),
    ("seed_queue", "seed-000 queue (a program per task: every task pays the load)"),
)


def _warm_local_section(r: dict[str, Any]) -> str:
    """Issue 15 target 4: one row per method, wall seconds and the ratio to the lower bound."""
    bound = r["lower_bound_seconds"]
    lines = [
        f"\n### 8. Warm workers on a workstation: {r['tasks']} log-normal tasks (sum "
        f"{r['sum_seconds']:.1f} s) behind a {r['load_seconds']:g} s model load, "
        f"{r['slots']} slots\n",
        f"Lower bound (one load + max(sum / slots, longest task)): {bound:.1f} s.\n",
        "| method | wall seconds | / lower bound | outputs written |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in _WARM_METHODS:
        lines.append(
            f"| {label} | {r[key]:.1f} | {r[key] / bound:.2f}x | {r[key + '_succeeded']} |"
        )
    return "\n".join(lines)


def _warm_cluster_section(r: dict[str, Any]) -> str:
    """Issue 15 targets 1-3: warm workers vs pod-per-task (and the Indexed Job) on the test bed."""
    return "\n".join(
        [
            f"\n### 9. Warm workers on a cluster: {r['tasks']} log-normal tasks "
            f"(mean {r['mean_task_s']:g} s) behind a {r['load_s']:g} s model load, "
            f"{r['gpus']} GPUs; {r['rate_tasks']} tasks of {r['rate_task_s'] * 1000:g} ms\n",
            f"Lower bound (one load per GPU + max(work / GPUs, longest task)): "
            f"{r['lower_bound_s']:.1f} s.\n",
            _table(
                [
                    ("warm workers, makespan / lower bound", r["warm_ratio"], "<= 1.10"),
                    ("pod-per-task, makespan / lower bound", r["per_task_ratio"], ""),
                    ("Indexed Job, makespan / lower bound", r["job_ratio"], ""),
                    ("pod-per-task makespan / warm makespan", r["per_task_over_warm"], ">= 5"),
                    ("warm workers, short tasks finished / s", r["warm_rate_tasks_per_s"], ""),
                    ("pod-per-task, short tasks finished / s", r["per_task_rate_tasks_per_s"], ""),
                    ("warm / pod-per-task, tasks / s", r["warm_over_per_task_rate"], ">= 10"),
                    (
                        "warm, operator CPU s per 1,000 tasks (long tasks)",
                        r["warm_cpu_s_per_1k"],
                        "<= 1",
                    ),
                    (
                        "warm, operator CPU s per 1,000 tasks (short tasks)",
                        r["warm_rate_cpu_s_per_1k"],
                        "<= 1",
                    ),
                    (
                        "warm, operator API requests per 1,000 tasks (long tasks)",
                        r["warm_requests_per_1k"],
                        "<= 300",
                    ),
                    (
                        "warm, operator API requests per 1,000 tasks (short tasks)",
                        r["warm_rate_requests_per_1k"],
                        "<= 300",
                    ),
                    (
                        "every task succeeded exactly once, nothing concurrent",
                        r["warm_exact"] and r["warm_rate_exact"],
                        "True",
                    ),
                ]
            ),
        ]
    )


def _kueue_section(r: dict[str, Any]) -> str:
    """Issue 18: admission latency through Kueue's plain-pod integration, and quota exhaustion."""
    without, with_kueue, full = r["without_kueue"], r["with_kueue"], r["quota_exhaustion"]
    return "\n".join(
        [
            f"\n### 10. Kueue admission: {with_kueue['pods']} task pods with and without Kueue; "
            f"{full['tasks']} tasks through a {full['quota_gpus']}-GPU queue\n",
            _table(
                [
                    ("pod seen -> bound, p50 ms, scheduler alone", without["p50_ms"], ""),
                    ("pod seen -> bound, p50 ms, through Kueue", with_kueue["p50_ms"], ""),
                    ("pod seen -> bound, p95 ms, scheduler alone", without["p95_ms"], ""),
                    ("pod seen -> bound, p95 ms, through Kueue", with_kueue["p95_ms"], ""),
                    ("most task pods running at once (quota)", full["max_running"], ""),
                    ("most task pods gated at once (maxPending)", full["max_unscheduled"], ""),
                    ("quota violations seen", len(full["violations"]), "0"),
                    ("tasks succeeded", full["succeeded"], str(full["tasks"])),
                    ("seconds to finish", full["seconds"], ""),
                    (
                        "lower bound (tasks x duration / quota), seconds",
                        full["lower_bound_seconds"],
                        "",
                    ),
                ]
            ),
        ]
    )


if __name__ == "__main__":
    print(render())
