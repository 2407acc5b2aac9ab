"""Benchmark scenarios: gpubatch against the Indexed Job (and a raw client) on one test bed.

Each scenario returns a flat dict of measured numbers. Sizes come from a `Scale`, so the same
code runs as a CI smoke test (tiny) and as `make bench` (the sizes the issue asks for).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from bench.harness import (
    BenchEnv,
    PodWatcher,
    bench_env,
    minimal_dispatcher,
    object_size,
    percentile,
    raw_create_ceiling,
    wait_batch,
    wait_job,
)
from bench.simulate import LOGNORMAL_SEED, LOGNORMAL_SIGMA, lower_bound_seconds
from support.pods import gpu_pod_template
from testbed import GpuNodePool, sim


@dataclass(frozen=True)
class Scale:
    dispatch_tasks: int = 10_000
    makespan_tasks: int = 10_000
    mean_seconds: float = 4.0
    mixed_tasks: int = 1_000
    cost_manifest_tasks: int = 100_000
    scan_outputs: int = 100_000
    s3_outputs: int = 10_000
    local_tiny_tasks: int = 2_000
    local_skewed_tasks: int = 200
    local_skewed_seconds: float = 332.0
    local_range_tasks: int = 100_000
    warm_local_tasks: int = 200
    warm_local_load_seconds: float = 2.0
    warm_local_sum_seconds: float = 332.0  # the local scenario's skewed list, plus a load
    warm_tasks: int = 5_000
    warm_mean_seconds: float = 0.5
    warm_load_seconds: float = 10.0
    warm_rate_tasks: int = 10_000
    warm_rate_seconds: float = 0.05
    timeout: float = 3600


SMOKE = Scale(
    dispatch_tasks=60,
    makespan_tasks=80,
    mean_seconds=0.2,
    mixed_tasks=48,
    cost_manifest_tasks=2_000,
    scan_outputs=2_000,
    s3_outputs=200,
    local_tiny_tasks=40,
    local_skewed_tasks=16,
    local_skewed_seconds=2.0,
    local_range_tasks=2_000,
    warm_local_tasks=12,
    warm_local_load_seconds=0.2,
    warm_local_sum_seconds=0.24,
    warm_tasks=40,
    warm_mean_seconds=0.2,
    warm_load_seconds=1.0,
    warm_rate_tasks=60,
    timeout=300,
)


def _gpubatch(
    name: str, *, tasks: dict[str, Any], template: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "gpubatch.io/v1alpha1",
        "kind": "GPUBatch",
        "metadata": {"name": name},
        "spec": {"tasks": tasks, "template": template, **spec},
    }


def _indexed_job(
    name: str, completions: int, parallelism: int, template: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": completions,
            "parallelism": parallelism,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": template,
        },
    }


def _create_batch(env: BenchEnv, namespace: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(env.testbed.api_client()).create_namespaced_custom_object(
        "gpubatch.io", "v1alpha1", namespace, "gpubatches", body
    )


def _create_job(env: BenchEnv, namespace: str, body: dict[str, Any]) -> None:
    client.BatchV1Api(env.testbed.api_client()).create_namespaced_job(namespace, body)


def _run_batch(
    env: BenchEnv, prefix: str, body: dict[str, Any], timeout: float
) -> tuple[float, PodWatcher, dict[str, Any], dict[str, float]]:
    ns = env.namespace(prefix)
    cpu0, req0 = env.operator.cpu_seconds(), env.audited_requests()
    with PodWatcher(env.testbed, ns) as watcher:
        began = time.monotonic()
        _create_batch(env, ns, body)
        obj = wait_batch(env.testbed, ns, body["metadata"]["name"], timeout)
        elapsed = time.monotonic() - began
    cost = {
        "cpu_seconds": env.operator.cpu_seconds() - cpu0,
        "requests": env.audited_requests() - req0,
    }
    return elapsed, watcher, obj, cost


def _run_job(
    env: BenchEnv, prefix: str, body: dict[str, Any], timeout: float
) -> tuple[float, PodWatcher]:
    ns = env.namespace(prefix)
    with PodWatcher(env.testbed, ns) as watcher:
        began = time.monotonic()
        _create_job(env, ns, body)
        wait_job(env.testbed, ns, body["metadata"]["name"], timeout)
        elapsed = time.monotonic() - began
    return elapsed, watcher


# ------------------------------------------------------------------------------- scenarios
def dispatch_rate(scale: Scale, workdir: Path) -> dict[str, Any]:
    """Pods created per second, side by side on one test bed: the bare-create ceiling of the API
    server, a minimal dispatcher running the same workload (the pipeline's ceiling), gpubatch
    and the Indexed Job. Also the fill rate: creates per second until the free GPUs are taken."""
    n = scale.dispatch_tasks
    gpus, max_pending = 1024, 512
    pools = [GpuNodePool(name="wide", count=8, gpus=gpus // 8)]
    fill = min(n, gpus)
    template = gpu_pod_template(duration="50ms")
    with bench_env(workdir, pools, operator_args=[f"--max-pending={max_pending}"]) as env:
        raw_ns = env.namespace("raw")
        ceiling = asyncio.run(raw_create_ceiling(env.testbed, raw_ns, n))
        # The raw pods stay (nobody schedules them): deleting 10k pods now would load the API
        # server while the others are measured.
        loop_ns = env.namespace("loop")
        with PodWatcher(env.testbed, loop_ns) as loop_watcher:
            began = time.monotonic()
            asyncio.run(minimal_dispatcher(env.testbed, loop_ns, n, gpus + max_pending, template))
            loop_elapsed = time.monotonic() - began
        elapsed, watcher, obj, cost = _run_batch(
            env,
            "gpub",
            _gpubatch(
                "rate", tasks={"range": {"stop": n}}, template=template, maxPending=max_pending
            ),
            scale.timeout,
        )
        job_elapsed, job_watcher = _run_job(
            env, "job", _indexed_job("rate", n, gpus, template), scale.timeout
        )
    ours = watcher.timeline.creation_rate()
    pipeline = loop_watcher.timeline.creation_rate()
    job = job_watcher.timeline.creation_rate()
    return {
        "tasks": n,
        "raw_ceiling_pods_per_s": ceiling,
        "minimal_dispatcher_pods_per_s": pipeline,
        "minimal_dispatcher_total_s": loop_elapsed,
        "gpubatch_pods_per_s": ours,
        "gpubatch_vs_ceiling": ours / ceiling,
        "gpubatch_vs_minimal_dispatcher": ours / pipeline,
        "gpubatch_total_s": elapsed,
        "job_pods_per_s": job,
        "job_total_s": job_elapsed,
        "gpubatch_vs_job": ours / job,
        "fill_gpus": fill,
        "minimal_dispatcher_fill_pods_per_s": loop_watcher.timeline.creation_rate(fill),
        "gpubatch_fill_pods_per_s": watcher.timeline.creation_rate(fill),
        "job_fill_pods_per_s": job_watcher.timeline.creation_rate(fill),
        "gpubatch_succeeded": obj["status"]["counts"]["succeeded"],
        "operator_cpu_s_per_1k": cost["cpu_seconds"] / n * 1000,
        "operator_requests_per_task": cost["requests"] / n,
    }


def makespan(scale: Scale, workdir: Path) -> dict[str, Any]:
    """10k log-normal tasks on 64 GPUs: makespan / lower bound for index order, longest-first
    and the Indexed Job; reaction latency from the same runs.

    Durations come from `sim.lognormal_ms` by task index, which kwok evaluates from one short
    annotation, so both systems run identical durations with no per-pod table."""
    n, gpus = scale.makespan_tasks, 64
    mean_ms, sigma, seed = scale.mean_seconds * 1000, LOGNORMAL_SIGMA, LOGNORMAL_SEED
    durations = [sim.lognormal_ms(i, mean_ms, sigma, seed) for i in range(n)]
    bound = lower_bound_seconds([ms / 1000 for ms in durations], gpus)
    template = gpu_pod_template()
    template["metadata"]["annotations"][sim.LOGNORMAL] = sim.lognormal_annotation(
        mean_ms, sigma, seed
    )
    # 10,000 tasks is where users keep the task list in a manifest, not inline in the object
    # (whose every status write would then echo the whole list to every watcher).
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = workdir / "tasks.jsonl"
    manifest.write_text("".join(f'{{"ms": {ms}}}\n' for ms in durations))
    pools = [GpuNodePool(name="gpu", count=8, gpus=8)]
    results: dict[str, Any] = {
        "tasks": n,
        "gpus": gpus,
        "lower_bound_s": bound,
        "total_work_s": sum(durations) / 1000,
        "mean_task_s": scale.mean_seconds,
        "longest_task_s": max(durations) / 1000,
    }
    with bench_env(workdir / "bed", pools) as env:
        for label, order in (
            ("index", {"by": "index"}),
            ("longest_first", {"by": "longestFirst", "costParam": "ms"}),
        ):
            body = _gpubatch(
                f"mk-{label.replace('_', '-')}",
                tasks={"manifest": {"path": str(manifest)}},
                template=template,
                order=order,
            )
            elapsed, watcher, obj, cost = _run_batch(env, f"mk-{label[:5]}", body, scale.timeout)
            latencies = watcher.timeline.reaction_latencies()
            results[f"gpubatch_{label}_s"] = elapsed
            results[f"gpubatch_{label}_ratio"] = elapsed / bound
            results[f"gpubatch_{label}_reaction_p50_ms"] = percentile(latencies, 0.5) * 1000
            results[f"gpubatch_{label}_reaction_p99_ms"] = percentile(latencies, 0.99) * 1000
            gaps = watcher.timeline.gpu_idle_gaps()
            results[f"gpubatch_{label}_gpu_idle_p50_ms"] = percentile(gaps, 0.5) * 1000
            results[f"gpubatch_{label}_gpu_idle_p99_ms"] = percentile(gaps, 0.99) * 1000
            results[f"gpubatch_{label}_cpu_s_per_1k"] = cost["cpu_seconds"] / n * 1000
            results[f"gpubatch_{label}_requests_per_task"] = cost["requests"] / n
            results[f"gpubatch_{label}_succeeded"] = obj["status"]["counts"]["succeeded"]
        job_elapsed, job_watcher = _run_job(
            env, "mk-job", _indexed_job("mk", n, gpus, template), scale.timeout
        )
        latencies = job_watcher.timeline.reaction_latencies()
        results["job_s"] = job_elapsed
        results["job_ratio"] = job_elapsed / bound
        results["job_reaction_p50_ms"] = percentile(latencies, 0.5) * 1000
        results["job_reaction_p99_ms"] = percentile(latencies, 0.99) * 1000
        gaps = job_watcher.timeline.gpu_idle_gaps()
        results["job_gpu_idle_p50_ms"] = percentile(gaps, 0.5) * 1000
        results["job_gpu_idle_p99_ms"] = percentile(gaps, 0.99) * 1000
        metrics = env.operator.metrics()
    results["operator_reaction_histogram"] = [
        line for line in metrics.splitlines() if line.startswith("gpubatch_reaction_seconds_")
    ]
    return results


def mixed_gpus(scale: Scale, workdir: Path) -> dict[str, Any]:
    """Half the GPUs twice as slow: one dynamic batch vs a static half/half split."""
    n = scale.mixed_tasks
    fast, slow = "NVIDIA-H100-80GB-HBM3", "Tesla-T4"
    pools = [
        GpuNodePool(name="fast", count=4, gpus=8, model=fast),
        GpuNodePool(name="slow", count=4, gpus=8, model=slow),
    ]
    # Long enough that the GPUs, not this 2-core machine's pod pipeline, are the bottleneck:
    # 32/5 s + 32/10 s = 9.6 tasks/s of GPU capacity, well below the ~35 pods/s pipeline.
    seconds = 0.5 if scale is SMOKE else 5.0
    template = gpu_pod_template(duration=f"{seconds * 1000:.0f}ms")
    template["metadata"]["annotations"]["sim.gpubatch.io/slow-duration"] = f"{seconds * 2000:.0f}ms"
    with bench_env(workdir, pools) as env:
        dyn_s, _, obj, _ = _run_batch(
            env,
            "dyn",
            _gpubatch(
                "dynamic", tasks={"range": {"stop": n}}, template=template, gpuModels=[fast, slow]
            ),
            scale.timeout,
        )
        ns = env.namespace("static")
        began = time.monotonic()
        half = n // 2
        _create_batch(
            env,
            ns,
            _gpubatch(
                "on-fast", tasks={"range": {"stop": half}}, template=template, gpuModels=[fast]
            ),
        )
        _create_batch(
            env,
            ns,
            _gpubatch(
                "on-slow",
                tasks={"range": {"start": half, "stop": n}},
                template=template,
                gpuModels=[slow],
            ),
        )
        wait_batch(env.testbed, ns, "on-fast", scale.timeout)
        wait_batch(env.testbed, ns, "on-slow", scale.timeout)
        static_s = time.monotonic() - began
    models = {m["model"]: m["succeeded"] for m in obj["status"]["gpuModels"]}
    # Ideal with speeds 2:1 on equal GPU counts: fast GPUs do 2/3 of the tasks.
    return {
        "tasks": n,
        "dynamic_s": dyn_s,
        "static_split_s": static_s,
        "static_over_dynamic": static_s / dyn_s,
        "dynamic_share_on_fast": models.get(fast, 0) / n,
    }


def cost_at_100k(scale: Scale, workdir: Path) -> dict[str, Any]:
    """Peak operator memory and GPUBatch object size with a 100k-task manifest batch."""
    n = scale.cost_manifest_tasks
    manifest = workdir / "manifest.jsonl"
    workdir.mkdir(parents=True, exist_ok=True)
    with manifest.open("w") as out:
        for i in range(n):
            out.write(f'{{"sample": "s{i:06d}", "ms": {50 + i % 200}}}\n')
    template = gpu_pod_template(duration="50ms")
    pools = [GpuNodePool(name="gpu", count=8, gpus=8)]
    with bench_env(workdir / "bed", pools) as env:
        ns = env.namespace("big")
        rss_before = env.operator.peak_rss_mib()
        began = time.monotonic()
        _create_batch(
            env,
            ns,
            _gpubatch(
                "big",
                tasks={"manifest": {"path": str(manifest)}},
                template=template,
                outputs=[str(workdir / "out" / "{sample}.npy")],
            ),
        )
        # Let it expand, scan outputs and run for a while, then measure.
        deadline = time.monotonic() + min(90.0, scale.timeout)
        obj: dict[str, Any] = {}
        api = client.CustomObjectsApi(env.testbed.api_client())
        while time.monotonic() < deadline:
            obj = api.get_namespaced_custom_object(
                "gpubatch.io", "v1alpha1", ns, "gpubatches", "big"
            )
            if (obj.get("status") or {}).get("counts", {}).get("succeeded", 0) >= min(500, n):
                break
            time.sleep(1)
        first_progress_s = time.monotonic() - began
        size = object_size(env.testbed, ns, "big")
        rss = env.operator.peak_rss_mib()
    return {
        "tasks": n,
        "operator_peak_rss_mib": rss,
        "operator_rss_before_mib": rss_before,
        "object_bytes_mid_run": size,
        "seconds_to_500_done": first_progress_s,
        "succeeded_when_measured": (obj.get("status") or {}).get("counts", {}).get("succeeded", 0),
    }


def skip_scan(scale: Scale, workdir: Path) -> dict[str, Any]:
    """Time to decide which of N tasks are done, half of whose outputs exist (no cluster)."""
    from gpubatch.controller.taskload import load_tasks, scan_outputs
    from gpubatch.core.indexset import IndexSet

    results: dict[str, Any] = {}
    n = scale.scan_outputs
    out = Path(tempfile.mkdtemp(prefix="scan-", dir=workdir if workdir.exists() else None))
    for i in range(0, n, 2):
        (out / f"task-{i}.npy").touch()
    spec = {
        "tasks": {"range": {"stop": n}},
        "outputs": [str(out) + "/task-{value}.npy"],
        "template": {"spec": {"containers": [{"name": "t", "image": "x", "command": ["run"]}]}},
    }
    began = time.monotonic()
    loaded = load_tasks(spec, 1)
    scanned = scan_outputs(loaded, IndexSet())
    results["local_outputs"] = n
    results["local_seconds"] = time.monotonic() - began
    results["local_found"] = len(scanned.complete)
    results.update(_s3_scan(scale.s3_outputs))
    return results


def _s3_scan(n: int) -> dict[str, Any]:
    """The same against moto's S3 server on loopback (the object-storage stand-in)."""
    import fsspec.config
    import s3fs
    from moto.server import ThreadedMotoServer

    from gpubatch.controller.taskload import load_tasks, scan_outputs
    from gpubatch.core.indexset import IndexSet

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "endpoint_url": f"http://{host}:{port}",
        "key": "bench",
        "secret": "bench",
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    previous = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = options
    try:
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        began = time.monotonic()
        fs.pipe({f"bench/out/task-{i}.npy": b"x" for i in range(0, n, 2)})
        upload = time.monotonic() - began
        spec = {
            "tasks": {"range": {"stop": n}},
            "outputs": ["s3://bench/out/task-{value}.npy"],
            "template": {"spec": {"containers": [{"name": "t", "image": "x", "command": ["run"]}]}},
        }
        began = time.monotonic()
        scanned = scan_outputs(load_tasks(spec, 1), IndexSet())
        return {
            "s3_outputs": n,
            "s3_seconds": time.monotonic() - began,
            "s3_found": len(scanned.complete),
            "s3_upload_seconds": upload,
        }
    finally:
        if previous is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = previous
        server.stop()


from bench.local import local_runs  # noqa: E402
from bench.warm import warm  # noqa: E402
from bench.warm_local import warm_local  # noqa: E402

SCENARIOS = {
    "dispatch": dispatch_rate,
    "makespan": makespan,
    "mixed": mixed_gpus,
    "cost": cost_at_100k,
    "scan": skip_scan,
    "local": local_runs,
    "warm-local": warm_local,
    "warm": warm,
}
