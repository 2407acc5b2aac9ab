"""The NVML GPU report.

The absent-library path runs for real on machines without an NVIDIA driver (like CI). The
with-GPU paths use `FakeNvmlLibrary`, a stand-in with pynvml's function names that returns fixed
numbers: those tests check how the report is assembled and filtered, NOT that a real GPU works.
The real-GPU check is done on a lent GPU machine and recorded in the issue notes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from gpubatch.edges.nvml import load_nvml, probe_gpus

pytestmark = pytest.mark.unit

GIB = 1024**3


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeMemory:
    total: int
    used: int
    free: int


@dataclass
class FakeUtilization:
    gpu: int
    memory: int


@dataclass
class FakeGpu:
    name: str | bytes
    uuid: str
    total_gib: int
    used_gib: int
    broken: bool = False
    migs: list[FakeGpu] = field(default_factory=list)
    utilization: int | None = None  # None: NVML cannot say (as for a MIG instance)


class FakeNvmlLibrary:
    """A FAKE pynvml: same function names, canned answers. Not a GPU check."""

    NVMLError = FakeNvmlError
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self, gpus: list[FakeGpu], *, init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.initialised = False
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNvmlError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        gpu = self.gpus[index]
        if gpu.broken:
            raise FakeNvmlError(15)  # GPU is lost
        return gpu

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str | bytes:
        return handle.name

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return handle.uuid

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> FakeMemory:
        total, used = handle.total_gib * GIB, handle.used_gib * GIB
        return FakeMemory(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> Any:
        if handle.utilization is None:
            raise FakeNvmlError(3)  # not supported
        return FakeUtilization(gpu=handle.utilization, memory=0)

    def nvmlDeviceGetMigMode(self, handle: FakeGpu) -> list[int]:
        if not handle.migs:
            raise FakeNvmlError(3)  # not supported
        return [1, 1]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeGpu) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeGpu, index: int) -> Any:
        if index >= len(handle.migs):
            raise FakeNvmlError(6)  # not found
        return handle.migs[index]


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu("NVIDIA A100-SXM4-80GB", "GPU-aaaa1111-0000", 80, 60),
        FakeGpu(b"Tesla T4", "GPU-bbbb2222-0000", 16, 1),
    ]


def test_machine_without_nvidia_driver_reports_no_gpu_with_the_reason() -> None:
    report = probe_gpus()
    if report.available:
        pytest.skip("this machine has a GPU; the absent-library path cannot be observed here")
    assert not report.devices
    assert report.summary().startswith("no GPU: ")
    assert "libnvidia-ml" in report.summary()
    assert report.identities() == ()


def test_missing_pynvml_package_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail for real
    why = load_nvml()
    assert isinstance(why, str)
    assert "nvidia-ml-py" in why
    report = probe_gpus()
    assert not report.available
    assert "gpubatch[worker]" in report.summary()


def test_driver_not_loaded_is_named() -> None:
    report = probe_gpus(FakeNvmlLibrary([], init_error=9))
    assert report.summary() == "no GPU: the NVIDIA kernel driver is not loaded on this machine"


def test_unknown_init_error_is_passed_on() -> None:
    report = probe_gpus(FakeNvmlLibrary([], init_error=999))
    assert "NVML failed to initialise: NVML error 999" in report.summary()


def test_fake_library_devices_are_reported_with_memory_and_driver() -> None:
    fake = FakeNvmlLibrary(two_gpus())
    report = probe_gpus(fake, environ={})
    assert report.available
    assert report.driver_version == "550.54.15"
    assert report.cuda_driver_version == "12.4"
    a100, t4 = report.devices
    assert (a100.name, a100.uuid) == ("NVIDIA A100-SXM4-80GB", "GPU-aaaa1111-0000")
    assert a100.memory_total_bytes == 80 * GIB
    assert a100.memory_used_bytes == 60 * GIB
    assert a100.memory_free_bytes == 20 * GIB
    assert t4.name == "Tesla T4"  # bytes from old pynvml versions are decoded
    assert [gpu.model for gpu in report.identities()] == ["NVIDIA A100-SXM4-80GB", "Tesla T4"]
    assert "2 GPU(s), driver 550.54.15, CUDA 12.4" in report.summary()
    assert fake.shutdowns == 1


def test_zero_devices_suggests_requesting_a_gpu_resource() -> None:
    report = probe_gpus(FakeNvmlLibrary([]), environ={})
    assert not report.available
    assert "nvidia.com/gpu" in report.summary()


def test_unreadable_device_is_left_out_with_a_note() -> None:
    gpus = two_gpus()
    gpus[0].broken = True
    report = probe_gpus(FakeNvmlLibrary(gpus), environ={})
    assert [d.uuid for d in report.devices] == ["GPU-bbbb2222-0000"]
    assert "GPU 0 could not be read" in report.notes[0]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        ("1", ["GPU-bbbb2222-0000"]),
        ("1,0", ["GPU-bbbb2222-0000", "GPU-aaaa1111-0000"]),
        ("GPU-aaaa1111-0000", ["GPU-aaaa1111-0000"]),
        ("GPU-bbbb", ["GPU-bbbb2222-0000"]),  # a unique prefix, as CUDA accepts
        ("0,7,1", ["GPU-aaaa1111-0000"]),  # CUDA ignores entries after an invalid one
        ("GPU-", []),  # ambiguous prefix is invalid
        ("-1", []),
    ],
)
def test_cuda_visible_devices_filters_the_report_like_cuda(
    visible: str, expected: list[str]
) -> None:
    report = probe_gpus(FakeNvmlLibrary(two_gpus()), environ={"CUDA_VISIBLE_DEVICES": visible})
    assert [d.uuid for d in report.devices] == expected


def test_empty_cuda_visible_devices_hides_every_gpu() -> None:
    report = probe_gpus(FakeNvmlLibrary(two_gpus()), environ={"CUDA_VISIBLE_DEVICES": ""})
    assert not report.available
    assert "CUDA_VISIBLE_DEVICES=''" in report.summary()


def test_filter_can_be_turned_off_to_list_every_gpu() -> None:
    report = probe_gpus(
        FakeNvmlLibrary(two_gpus()),
        environ={"CUDA_VISIBLE_DEVICES": "0"},
        respect_cuda_visible_devices=False,
    )
    assert len(report.devices) == 2


def test_mig_instances_are_reported_instead_of_their_parent() -> None:
    parent = FakeGpu("NVIDIA A100-SXM4-40GB", "GPU-parent", 40, 0)
    parent.migs = [
        FakeGpu("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "MIG-1111", 5, 1),
        FakeGpu("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "MIG-2222", 5, 2),
    ]
    report = probe_gpus(FakeNvmlLibrary([parent]), environ={})
    assert [(d.label, d.uuid) for d in report.devices] == [("0:0", "MIG-1111"), ("0:1", "MIG-2222")]
    only = probe_gpus(FakeNvmlLibrary([parent]), environ={"CUDA_VISIBLE_DEVICES": "MIG-2222"})
    assert [d.uuid for d in only.devices] == ["MIG-2222"]


def test_report_to_dict_is_json_ready() -> None:
    data = probe_gpus(FakeNvmlLibrary(two_gpus()), environ={}).to_dict()
    assert data["available"] is True
    assert data["devices"][0]["memoryFreeBytes"] == 20 * GIB
    assert data["devices"][1]["index"] == "1"


def test_utilisation_is_read_where_nvml_reports_it() -> None:
    gpus = [FakeGpu("A", "GPU-a", 80, 1, utilization=42), FakeGpu("B", "GPU-b", 80, 1)]
    report = probe_gpus(FakeNvmlLibrary(gpus), environ={})
    assert [d.utilization_percent for d in report.devices] == [42, None]
