"""Issue 15 targets 1-3: warm workers (worker.mode: Warm, tasks leased to long-lived pods)
against pod-per-task and the Indexed Job, side by side on one 64-GPU test bed.

The warm pods' program is tests/testbed/warmsim.py (kwok runs no containers): it loads once,
then leases tasks from the real operator over HTTPS and sleeps each task's seeded duration.
Pod-per-task pods and the Indexed Job's pods pay the same load on every pod: kwok adds
`sim.gpubatch.io/load` to each pod's duration, as a program started per task loads per task.

1. makespan: `warm_tasks` log-normal tasks (mean `warm_mean_seconds`, the makespan scenario's
   sigma and seed) with a `warm_load_seconds` load on 64 GPUs; makespan / lower bound, the bound
   being one load plus max(total work / GPUs, longest task);
2. rate: `warm_rate_tasks` tasks of `warm_rate_seconds`, no load: tasks finished per second;
3. cost: the operator's CPU seconds and API requests (audit log) per 1,000 tasks in both warm
   runs.

Every warm run is also checked for completeness (`*_exact`): every task succeeded exactly once
in the status, the simulator saw each success acknowledged exactly once and no task ran in two
places at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import BenchEnv, bench_env
from bench.simulate import LOGNORMAL_SEED, LOGNORMAL_SIGMA, lower_bound_seconds
from support.batches import warm_batch
from support.pods import gpu_pod_template
from testbed import GpuNodePool, sim
from testbed.warmsim import WarmFleet

if TYPE_CHECKING:
    from bench.scenarios import Scale

GPUS = 64


def _template(
    *, lognormal: str | None = None, duration: str = "1s", load: str = ""
) -> dict[str, Any]:
    template = gpu_pod_template(duration=duration)
    annotations = template["metadata"]["annotations"]
    if lognormal:
        annotations[sim.LOGNORMAL] = lognormal
    if load:
        annotations[sim.LOAD] = load
    return template


def _warm_run(
    env: BenchEnv, fleet: WarmFleet, prefix: str, template: dict[str, Any], n: int, timeout: float
) -> dict[str, Any]:
    """One warm batch of `n` tasks on all GPUs: seconds, cost and completeness."""
    from bench.scenarios import _run_batch  # bench.scenarios imports this module

    body = warm_batch(prefix, template=template, tasks={"range": {"stop": n}}, parallelism=GPUS)
    requests_before = fleet.log.requests
    elapsed, _, obj, cost = _run_batch(env, prefix, body, timeout)
    uid = obj["metadata"]["uid"]
    status = obj["status"]
    acked = fleet.log.acknowledged_successes(uid)
    concurrent = fleet.log.concurrent_runs(uid)
    return {
        "s": elapsed,
        "succeeded": status["counts"]["succeeded"],
        "exact": status["counts"]["succeeded"] == n
        and status.get("succeededIndexes") == (f"0-{n - 1}" if n > 1 else "0")
        and acked == dict.fromkeys(range(n), 1)
        and not concurrent,
        "concurrent_runs": len(concurrent),
        "ended": [  # why the batch ended, for a run that is not exact
            f"{c['type']}: {c.get('reason', '')}: {c.get('message', '')}"
            for c in status.get("conditions") or []
            if c["type"] in ("Complete", "Failed") and c["status"] == "True"
        ],
        "cpu_s_per_1k": cost["cpu_seconds"] / n * 1000,
        "requests_per_1k": cost["requests"] / n * 1000,
        "lease_requests_per_1k": (fleet.log.requests - requests_before) / n * 1000,
    }


def warm(scale: Scale, workdir: Path) -> dict[str, Any]:
    from bench.scenarios import _gpubatch, _indexed_job, _run_batch, _run_job

    n, load_s = scale.warm_tasks, scale.warm_load_seconds
    mean_ms = scale.warm_mean_seconds * 1000
    durations = [
        sim.lognormal_ms(i, mean_ms, LOGNORMAL_SIGMA, LOGNORMAL_SEED) / 1000 for i in range(n)
    ]
    bound = load_s + lower_bound_seconds(durations, GPUS)
    lognormal = sim.lognormal_annotation(mean_ms, LOGNORMAL_SIGMA, LOGNORMAL_SEED)
    loaded = _template(lognormal=lognormal, load=sim.go_duration(load_s))
    rate_n = scale.warm_rate_tasks
    short = _template(duration=sim.go_duration(scale.warm_rate_seconds))
    results: dict[str, Any] = {
        "tasks": n,
        "gpus": GPUS,
        "load_s": load_s,
        "mean_task_s": scale.warm_mean_seconds,
        "lower_bound_s": bound,
        "rate_tasks": rate_n,
        "rate_task_s": scale.warm_rate_seconds,
    }
    pools = [GpuNodePool(name="gpu", count=8, gpus=8)]
    with bench_env(workdir, pools) as env, WarmFleet(env.testbed) as fleet:
        began = time.monotonic()
        warm_run = _warm_run(env, fleet, "warm-mk", loaded, n, scale.timeout)
        results.update({f"warm_{k}": v for k, v in warm_run.items()})
        results["warm_ratio"] = warm_run["s"] / bound
        per_task_s, _, obj, _ = _run_batch(
            env,
            "pertask-mk",
            _gpubatch("pertask-mk", tasks={"range": {"stop": n}}, template=loaded),
            scale.timeout,
        )
        results["per_task_s"] = per_task_s
        results["per_task_ratio"] = per_task_s / bound
        results["per_task_succeeded"] = obj["status"]["counts"]["succeeded"]
        job_s, _ = _run_job(env, "job-mk", _indexed_job("mk", n, GPUS, loaded), scale.timeout)
        results["job_s"] = job_s
        results["job_ratio"] = job_s / bound
        results["per_task_over_warm"] = per_task_s / warm_run["s"]

        rate = _warm_run(env, fleet, "warm-rate", short, rate_n, scale.timeout)
        results.update({f"warm_rate_{k}": v for k, v in rate.items()})
        results["warm_rate_tasks_per_s"] = rate_n / rate["s"]
        per_task_rate_s, _, obj, _ = _run_batch(
            env,
            "pertask-rate",
            _gpubatch("pertask-rate", tasks={"range": {"stop": rate_n}}, template=short),
            scale.timeout,
        )
        results["per_task_rate_succeeded"] = obj["status"]["counts"]["succeeded"]
        results["per_task_rate_tasks_per_s"] = rate_n / per_task_rate_s
        results["warm_over_per_task_rate"] = results["warm_rate_tasks_per_s"] / (
            rate_n / per_task_rate_s
        )
        results["sim_requests"] = fleet.log.requests
        results["sim_repeated_requests"] = fleet.log.retries
        results["sim_errors"] = fleet.log.errors[:5]
        results["runs_s"] = time.monotonic() - began
    return results
