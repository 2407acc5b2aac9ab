"""Worker slots for local mode: one per local GPU (or group of GPUs), or CPU slots on request.

The seeds' method, made uniform: one worker per GPU, pinned by CUDA_VISIBLE_DEVICES before the
task starts. Pinning is right here, unlike on Kubernetes, because no device plugin hands out
devices on a workstation. Slots pin by GPU UUID, not by index: CUDA numbers devices fastest
first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, while NVML numbers them by PCI bus, so an index
could pin a different card than the one reported; a UUID is the same card for both.

A machine without a GPU runs nothing unless the user asks for CPU slots (`--slots N`): a GPU
batch silently running on the CPU is exactly what users B and E had to guard against by hand.
CPU slots hide every GPU (CUDA_VISIBLE_DEVICES="") so a CPU slot never borrows a card that a
GPU slot is using.

Which idle slot takes the next task: the first in order, or with "freest first" the one whose
GPUs have the most free memory right now (user E's helper, user B's "largest free ratio"). One
task per slot means no second task is ever put on a busy card, so no sleeping between launches
is needed to let memory readings catch up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from gpubatch.edges.nvml import CUDA_VISIBLE_DEVICES, GpuDevice, GpuReport
from gpubatch.local.errors import LocalError

CPU_MODEL: Final = "CPU (no GPU)"
_GIB: Final = 1024**3
FreeBy = Literal["bytes", "ratio"]


@dataclass(frozen=True)
class Slot:
    """One worker: the GPUs its tasks see (none for a CPU slot)."""

    name: str
    devices: tuple[GpuDevice, ...] = ()

    @property
    def is_gpu(self) -> bool:
        return bool(self.devices)

    @property
    def model(self) -> str:
        """The GPU model(s), as the per-model statistics name them; CPU slots say so."""
        if not self.devices:
            return CPU_MODEL
        return "+".join(sorted({d.name for d in self.devices}))

    def environ(self) -> dict[str, str]:
        """What pins the slot: CUDA_VISIBLE_DEVICES with its GPUs' UUIDs ("" for CPU)."""
        return {CUDA_VISIBLE_DEVICES: ",".join(d.uuid for d in self.devices)}

    def describe(self) -> str:
        if not self.devices:
            return f"{self.name}: CPU only, no GPU (CUDA_VISIBLE_DEVICES='')"
        cards = "; ".join(d.describe() for d in self.devices)
        return f"{self.name}: {cards}"


@dataclass(frozen=True)
class SlotPlan:
    slots: tuple[Slot, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def cpu_only(self) -> bool:
        return not any(s.is_gpu for s in self.slots)


def plan_slots(
    report: GpuReport,
    *,
    gpus: str | None = None,
    cpu_slots: int | None = None,
    gpus_per_task: int = 1,
    gpu_models: Sequence[str] | None = None,
    require_gpu: bool = True,
) -> SlotPlan:
    """The slots to run on; LocalError when there are none, with what to do instead."""
    if gpus is not None and cpu_slots is not None:
        raise LocalError("choose GPUs (--gpus) or CPU slots (--slots), not both")
    if cpu_slots is not None:
        if cpu_slots < 1:
            raise LocalError("--slots needs a number of CPU workers of at least 1")
        note = (
            f"{cpu_slots} CPU slot(s) as asked (--slots): tasks run WITHOUT a GPU "
            "(CUDA_VISIBLE_DEVICES='')"
            + (", the spec's worker.requireGPU: true set aside" if require_gpu else "")
        )
        return SlotPlan(tuple(Slot(f"cpu{i}") for i in range(cpu_slots)), (note,))
    if not report.available:
        raise LocalError(
            f"{report.summary()}.\nNothing was run. To run this batch on the CPU, ask for CPU "
            "workers explicitly: gpubatch run FILE --slots N (tasks then run without a GPU)",
            environment=True,
        )
    notes: list[str] = []
    if gpus is not None:
        chosen = _select(report.devices, gpus)
        if gpu_models:
            notes.append("spec.gpuModels is not applied: --gpus chose the GPUs")
    else:
        chosen = list(report.devices)
        if gpu_models:
            chosen = [d for d in chosen if _model_matches(d.name, gpu_models)]
            if not chosen:
                found = ", ".join(sorted({d.name for d in report.devices}))
                raise LocalError(
                    f"spec.gpuModels ({', '.join(gpu_models)}) matches none of this machine's "
                    f"GPUs ({found}); pick GPUs yourself with --gpus",
                    environment=True,
                )
    if len(chosen) < gpus_per_task:
        raise LocalError(
            f"each task needs {gpus_per_task} GPUs (spec.gpusPerTask) but only {len(chosen)} "
            "are available to this run",
            environment=True,
        )
    groups = [
        tuple(chosen[i : i + gpus_per_task])
        for i in range(0, len(chosen) - gpus_per_task + 1, gpus_per_task)
    ]
    left = len(chosen) - len(groups) * gpus_per_task
    if left:
        notes.append(f"{left} GPU(s) stay unused: each task takes {gpus_per_task} GPUs")
    slots = tuple(Slot("gpu" + "+".join(d.label for d in group), group) for group in groups)
    return SlotPlan(slots, tuple(notes))


def freest(idle: Sequence[Slot], report: GpuReport, by: FreeBy = "bytes") -> Slot:
    """The idle slot whose GPUs have the most free memory in `report` (ties: first in order).

    A slot with several GPUs counts its tightest card, since the task needs all of them.
    Devices missing from the report (gone, or unreadable) count as having nothing free.
    """
    fresh = {d.uuid: d for d in report.devices}

    def score(slot: Slot) -> float:
        values = []
        for device in slot.devices:
            now = fresh.get(device.uuid)
            if now is None:
                return -1.0
            values.append(float(now.memory_free_bytes) if by == "bytes" else now.free_ratio)
        return min(values) if values else -1.0

    best = idle[0]
    for slot in idle[1:]:
        if score(slot) > score(best):
            best = slot
    return best


@dataclass(frozen=True)
class GpuThreshold:
    """When a GPU slot may take a task on a shared machine (task-spooler's GPU mode, nvitop's
    selector): enough free memory (bytes, and/or a share of the card) and, optionally, not too
    busy. Someone else's process on a card is visible only this way: to NVML, not to us."""

    min_free_bytes: int | None = None
    min_free_share: float | None = None
    max_utilization_percent: int | None = None

    @property
    def active(self) -> bool:
        return any(
            v is not None
            for v in (self.min_free_bytes, self.min_free_share, self.max_utilization_percent)
        )

    def passed_over(self, slot: Slot, report: GpuReport) -> str | None:
        """Why `slot` may not take a task now according to `report`, or None when it may.

        Every GPU of a multi-GPU slot must pass; a GPU missing from the report cannot.
        """
        fresh = {d.uuid: d for d in report.devices}
        for device in slot.devices:
            now = fresh.get(device.uuid)
            if now is None:
                return f"GPU {device.label} ({device.uuid}) is not in the NVML report"
            why = self._refuses(now)
            if why:
                return f"GPU {device.label} {why}"
        return None

    def _refuses(self, device: GpuDevice) -> str | None:
        free_gib = device.memory_free_bytes / _GIB
        if self.min_free_bytes is not None and device.memory_free_bytes < self.min_free_bytes:
            return f"has {free_gib:.1f} GiB free, less than {self.min_free_bytes / _GIB:.1f} GiB"
        if self.min_free_share is not None and device.free_ratio < self.min_free_share:
            return (
                f"has {device.free_ratio:.0%} of its memory free, less than "
                f"{self.min_free_share:.0%}"
            )
        limit = self.max_utilization_percent
        used = device.utilization_percent
        if limit is not None and used is not None and used > limit:
            return f"is {used}% busy, more than {limit}%"
        return None


def parse_memory(text: str) -> tuple[int | None, float | None]:
    """`--min-free-memory`: a size (8GiB, 500MiB, 12000000000) or a share of the card (40%).

    Returns (bytes, share); LocalError says what is accepted.
    """
    value = text.strip()
    try:
        if value.endswith("%"):
            share = float(value[:-1]) / 100
            if not 0 < share <= 1:
                raise ValueError
            return None, share
        for suffix, factor in (("GiB", _GIB), ("MiB", 1024**2), ("GB", 10**9), ("MB", 10**6)):
            if value.endswith(suffix):
                return int(float(value[: -len(suffix)]) * factor), None
        return int(value), None
    except ValueError:
        raise LocalError(
            f"--min-free-memory {text!r}: give a size such as 8GiB, 500MiB or a byte count, or "
            "a share of the card such as 40%"
        ) from None


def _select(devices: Sequence[GpuDevice], wanted: str) -> list[GpuDevice]:
    entries = [e.strip() for e in wanted.split(",") if e.strip()]
    if not entries:
        raise LocalError("--gpus needs a list such as 0,2 (NVML indexes or GPU UUIDs)")
    chosen: list[GpuDevice] = []
    for entry in entries:
        matches = [d for d in devices if d.label == entry or d.uuid == entry]
        if not matches and len(entry) >= 8:
            matches = [d for d in devices if d.uuid.startswith(entry)]
        if len(matches) != 1:
            known = ", ".join(f"{d.label} ({d.uuid})" for d in devices)
            raise LocalError(f"--gpus {entry!r} matches no single GPU here; the GPUs are: {known}")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def _model_matches(name: str, models: Sequence[str]) -> bool:
    """GPU feature discovery labels replace spaces with dashes ("NVIDIA-A100-SXM4-80GB");
    NVML reports "NVIDIA A100-SXM4-80GB". Compare them in one form."""
    normal = _normal(name)
    return any(_normal(model) == normal for model in models)


def _normal(name: str) -> str:
    return "-".join(name.lower().split())
