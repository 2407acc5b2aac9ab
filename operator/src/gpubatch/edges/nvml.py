"""What GPUs this process can see, through NVML (`pynvml` from the `nvidia-ml-py` package).

The worker logs this report before running a task and records the GPU model and UUID in the
result, so per-GPU-model statistics come from what the task actually ran on rather than from node
labels. It is also how the worker refuses to run a GPU task on the CPU by accident: "no GPU" is a
normal answer here (with the reason), never an exception, because on a machine without the NVIDIA
driver - a CPU node, a container started without the NVIDIA runtime, a laptop - that is the
expected state. `pynvml` is imported lazily, so this module imports anywhere.

Visibility: NVML lists every GPU whose device node the container has, ignoring
CUDA_VISIBLE_DEVICES. In a Kubernetes pod the device plugin mounts only the allocated GPU, so the
two agree. In local mode the CLI pins a task with CUDA_VISIBLE_DEVICES, so the report is filtered
by it, as CUDA would: entries are GPU/MIG UUIDs (or unique prefixes) or NVML indices (which match
CUDA's numbering only under CUDA_DEVICE_ORDER=PCI_BUS_ID - prefer UUIDs), the list stops at the
first entry that matches nothing, and an empty value hides every GPU.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gpubatch.api.result import GpuIdentity

CUDA_VISIBLE_DEVICES: Final = "CUDA_VISIBLE_DEVICES"
_GIB: Final = 1024**3

# NVML return codes (stable across NVML versions; also read from the module when present).
_NVML_ERROR_DRIVER_NOT_LOADED: Final = 9
_NVML_ERROR_LIBRARY_NOT_FOUND: Final = 12
_NVML_ERROR_NO_PERMISSION: Final = 4


@dataclass(frozen=True)
class GpuDevice:
    """One GPU (or MIG instance) as NVML sees it at probe time."""

    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    mig_index: int | None = None
    utilization_percent: int | None = None  # GPU busy share over NVML's last sample; None: n/a

    @property
    def free_ratio(self) -> float:
        """Free memory as a share of total (user B's "largest free-memory ratio")."""
        return self.memory_free_bytes / self.memory_total_bytes if self.memory_total_bytes else 0.0

    @property
    def label(self) -> str:
        return f"{self.index}" if self.mig_index is None else f"{self.index}:{self.mig_index}"

    def describe(self) -> str:
        return (
            f"[{self.label}] {self.name} ({self.uuid}), memory "
            f"{self.memory_used_bytes / _GIB:.1f} GiB used of {self.memory_total_bytes / _GIB:.1f}"
            f" GiB ({self.memory_free_bytes / _GIB:.1f} GiB free)"
        )


@dataclass(frozen=True)
class GpuReport:
    """The GPUs visible to this process, or why there are none (`problem`)."""

    devices: tuple[GpuDevice, ...] = ()
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    problem: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def available(self) -> bool:
        return bool(self.devices)

    def identities(self) -> tuple[GpuIdentity, ...]:
        return tuple(GpuIdentity(model=d.name, uuid=d.uuid) for d in self.devices)

    def summary(self) -> str:
        """One line for logs and result messages: "no GPU: <why>" or the devices."""
        if not self.devices:
            return f"no GPU: {self.problem or 'NVML reports no device'}"
        driver = f"driver {self.driver_version}" if self.driver_version else "driver unknown"
        if self.cuda_driver_version:
            driver += f", CUDA {self.cuda_driver_version}"
        return f"{len(self.devices)} GPU(s), {driver}: " + "; ".join(
            d.describe() for d in self.devices
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for `gpubatch-worker --report-gpus` and the CLI."""
        return {
            "available": self.available,
            "driverVersion": self.driver_version,
            "cudaDriverVersion": self.cuda_driver_version,
            "problem": self.problem,
            "notes": list(self.notes),
            "devices": [
                {
                    "index": d.label,
                    "name": d.name,
                    "uuid": d.uuid,
                    "memoryTotalBytes": d.memory_total_bytes,
                    "memoryUsedBytes": d.memory_used_bytes,
                    "memoryFreeBytes": d.memory_free_bytes,
                    "utilizationPercent": d.utilization_percent,
                }
                for d in self.devices
            ],
        }


def load_nvml() -> Any | str:
    """The `pynvml` module, or a sentence saying why it cannot be imported."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as err:
        return (
            f"the nvidia-ml-py package (module pynvml) is not installed ({err}); "
            'install "gpubatch[worker]"'
        )


def probe_gpus(
    nvml: Any | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    respect_cuda_visible_devices: bool = True,
) -> GpuReport:
    """Report the visible GPUs. Never raises for a missing library, driver or device.

    `nvml` is the pynvml module (imported when None); passing another object with the same
    functions is how tests exercise the with-GPU path on machines without one.
    """
    module = load_nvml() if nvml is None else nvml
    if isinstance(module, str):
        return GpuReport(problem=module)
    error_type: type[BaseException] = getattr(module, "NVMLError", Exception)
    try:
        module.nvmlInit()
    except error_type as err:
        return GpuReport(problem=_init_problem(module, err))
    try:
        return _probe_initialised(module, error_type, environ, respect_cuda_visible_devices)
    finally:
        with contextlib.suppress(error_type):
            module.nvmlShutdown()


def _probe_initialised(
    nvml: Any,
    error_type: type[BaseException],
    environ: Mapping[str, str] | None,
    respect_cuda_visible_devices: bool,
) -> GpuReport:
    notes: list[str] = []
    driver = _text(_optional(nvml, "nvmlSystemGetDriverVersion", error_type))
    cuda = _optional(nvml, "nvmlSystemGetCudaDriverVersion", error_type)
    cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except error_type as err:
        return GpuReport(driver_version=driver, problem=f"NVML could not count devices: {err}")
    devices: list[GpuDevice] = []
    for index in range(count):
        try:
            devices.extend(_read_device(nvml, error_type, index))
        except error_type as err:
            notes.append(f"GPU {index} could not be read and is left out: {err}")
    if respect_cuda_visible_devices:
        visible = (os.environ if environ is None else environ).get(CUDA_VISIBLE_DEVICES)
        if visible is not None:
            devices, note = _filter_visible(devices, visible)
            notes.append(note)
    problem = None
    if not devices:
        problem = (
            "NVML works but sees no usable GPU"
            + (f" ({'; '.join(notes)})" if notes else "")
            + "; on Kubernetes, check that the pod requests a GPU resource such as nvidia.com/gpu"
        )
    return GpuReport(
        devices=tuple(devices),
        driver_version=driver,
        cuda_driver_version=cuda_version,
        problem=problem,
        notes=tuple(notes),
    )


def _read_device(nvml: Any, error_type: type[BaseException], index: int) -> list[GpuDevice]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    parent = _device(nvml, handle, index, None)
    migs: list[GpuDevice] = []
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        if current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
            for slot in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
                try:
                    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                except error_type:
                    continue  # an empty MIG slot
                migs.append(_device(nvml, mig, index, slot))
    except (error_type, AttributeError):
        pass  # not MIG-capable, or an NVML too old to ask
    return migs or [parent]


def _device(nvml: Any, handle: Any, index: int, mig_index: int | None) -> GpuDevice:
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return GpuDevice(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)) or "unknown GPU",
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)) or "unknown",
        memory_total_bytes=int(memory.total),
        memory_used_bytes=int(memory.used),
        memory_free_bytes=int(memory.free),
        mig_index=mig_index,
        utilization_percent=_utilization(nvml, handle),
    )


def _utilization(nvml: Any, handle: Any) -> int | None:
    """The GPU's busy percentage, or None where NVML cannot say (MIG instances, old drivers)."""
    try:
        return int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # any NVML error or a missing function: utilisation is optional
        return None


def _filter_visible(devices: list[GpuDevice], visible: str) -> tuple[list[GpuDevice], str]:
    entries = [e.strip() for e in visible.split(",")] if visible.strip() else []
    chosen: list[GpuDevice] = []
    for entry in entries:
        match = _match_entry(devices, entry)
        if match is None:
            break  # CUDA ignores the rest of the list after an invalid entry
        if match not in chosen:
            chosen.append(match)
    return chosen, f"{CUDA_VISIBLE_DEVICES}={visible!r} leaves {len(chosen)} of {len(devices)}"


def _match_entry(devices: list[GpuDevice], entry: str) -> GpuDevice | None:
    if entry.lstrip("-").isdigit():
        number = int(entry)
        physical = [d for d in devices if d.mig_index is None]
        return physical[number] if 0 <= number < len(physical) else None
    found = [d for d in devices if d.uuid.startswith(entry)] if entry else []
    return found[0] if len(found) == 1 else None


def _init_problem(nvml: Any, err: BaseException) -> str:
    code = getattr(err, "value", None)
    if code == getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", _NVML_ERROR_LIBRARY_NOT_FOUND):
        return (
            "the NVIDIA driver library (libnvidia-ml.so.1) was not found: this machine has no "
            "NVIDIA driver, or the container was started without the NVIDIA runtime / a GPU"
        )
    if code == getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", _NVML_ERROR_DRIVER_NOT_LOADED):
        return "the NVIDIA kernel driver is not loaded on this machine"
    if code == getattr(nvml, "NVML_ERROR_NO_PERMISSION", _NVML_ERROR_NO_PERMISSION):
        return "no permission to open the NVIDIA devices"
    return f"NVML failed to initialise: {err}"


def _optional(nvml: Any, name: str, error_type: type[BaseException]) -> Any:
    function = getattr(nvml, name, None)
    if function is None:
        return None
    try:
        return function()
    except error_type:
        return None


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
