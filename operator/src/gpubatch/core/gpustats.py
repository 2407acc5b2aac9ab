"""Per-GPU-model statistics in the status, updated one task result at a time.

Why incremental: the operator records each finished task once (then drops the pod's tracking
finalizer), so the aggregates must be updatable from the previous status alone, in bounded
space: counts, a sum, a max and a fixed-size histogram for p95 (see `histogram`).
"""

from __future__ import annotations

from collections.abc import Sequence

from gpubatch.api.status import UNKNOWN_GPU_MODEL, GPUBatchStatus, GpuModelStats
from gpubatch.core.histogram import DurationHistogram


def record_result(
    stats: Sequence[GpuModelStats],
    *,
    model: str | None,
    succeeded: bool,
    seconds: float | None = None,
) -> list[GpuModelStats]:
    """A new stats list with one task attempt recorded (sorted by model; inputs untouched).

    Run times count only for succeeded attempts (see `GpuModelStats`); a failed attempt only
    increments `failed`.
    """
    name = model or UNKNOWN_GPU_MODEL
    by_model = {entry.model: entry for entry in stats}
    current = by_model.get(name) or GpuModelStats(model=name)
    by_model[name] = _updated(current, succeeded=succeeded, seconds=seconds)
    return [by_model[key] for key in sorted(by_model)]


def _updated(entry: GpuModelStats, *, succeeded: bool, seconds: float | None) -> GpuModelStats:
    if not succeeded:
        return entry.model_copy(update={"failed": entry.failed + 1})
    if seconds is None or not seconds >= 0:
        return entry.model_copy(update={"succeeded": entry.succeeded + 1})
    histogram = DurationHistogram(entry.histogram)
    histogram.add(seconds)
    count = entry.succeeded + 1
    total = entry.total_seconds + seconds
    longest = max(entry.max_seconds or 0.0, seconds)
    p95 = histogram.quantile(0.95)
    return entry.model_copy(
        update={
            "succeeded": count,
            "total_seconds": round(total, 3),
            "mean_seconds": round(total / histogram.total(), 3),
            "max_seconds": round(longest, 3),
            "p95_seconds": None if p95 is None else round(min(p95, longest), 3),
            "histogram": histogram.counts(),
        }
    )


def record_success(status: GPUBatchStatus, model: str | None, seconds: float | None) -> None:
    """Record a succeeded task on `model` in `status.gpu_models`, in place."""
    status.gpu_models = record_result(
        status.gpu_models, model=model, succeeded=True, seconds=seconds
    )


def record_failure(status: GPUBatchStatus, model: str | None) -> None:
    """Record a failed (counted) attempt on `model` in `status.gpu_models`, in place."""
    status.gpu_models = record_result(status.gpu_models, model=model, succeeded=False)
