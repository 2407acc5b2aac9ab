"""Local worker slots: which GPUs a local run uses and how each slot is pinned.

This machine has no GPU. The pinning logic is checked against FAKE devices built by hand
(`fake_gpu`), which stand for what NVML would report; nothing here claims a real GPU was used.
The no-GPU path is checked for real, with this machine's actual NVML answer.
"""

from __future__ import annotations

import pytest
from test_nvml import FakeGpu, FakeNvmlLibrary

from gpubatch.cli.main import build_parser, main
from gpubatch.edges.nvml import GpuDevice, GpuReport, probe_gpus
from gpubatch.local.errors import LocalError
from gpubatch.local.slots import CPU_MODEL, GpuThreshold, Slot, freest, parse_memory, plan_slots

pytestmark = pytest.mark.unit

GIB = 1024**3


def fake_gpu(
    index: int, name: str = "NVIDIA A100-SXM4-80GB", free_gib: float = 70, total_gib: float = 80
) -> GpuDevice:
    """A hand-made device record, as NVML would describe a card (no real GPU behind it)."""
    return GpuDevice(
        index=index,
        name=name,
        uuid=f"GPU-fake-{index:04d}-0000-0000-000000000000",
        memory_total_bytes=int(total_gib * GIB),
        memory_used_bytes=int((total_gib - free_gib) * GIB),
        memory_free_bytes=int(free_gib * GIB),
    )


def fake_report(*devices: GpuDevice) -> GpuReport:
    return GpuReport(devices=devices, driver_version="fake")


def test_one_slot_per_gpu_pinned_by_uuid_not_by_index():
    plan = plan_slots(fake_report(fake_gpu(0), fake_gpu(1)))
    assert [s.name for s in plan.slots] == ["gpu0", "gpu1"]
    assert plan.slots[1].environ() == {"CUDA_VISIBLE_DEVICES": fake_gpu(1).uuid}
    assert plan.slots[1].model == "NVIDIA A100-SXM4-80GB"


def test_gpus_option_picks_cards_by_index_or_uuid():
    report = fake_report(fake_gpu(0), fake_gpu(1), fake_gpu(2))
    assert [s.name for s in plan_slots(report, gpus="0,2").slots] == ["gpu0", "gpu2"]
    by_uuid = plan_slots(report, gpus=fake_gpu(1).uuid[:14])
    assert [s.name for s in by_uuid.slots] == ["gpu1"]


def test_gpus_option_naming_an_absent_card_lists_the_cards_there_are():
    with pytest.raises(LocalError, match=r"--gpus '5' matches no single GPU here.*0 \(GPU-fake"):
        plan_slots(fake_report(fake_gpu(0)), gpus="5")


def test_tasks_needing_two_gpus_get_slots_of_two_and_a_spare_card_is_reported():
    plan = plan_slots(fake_report(*(fake_gpu(i) for i in range(5))), gpus_per_task=2)
    assert [s.name for s in plan.slots] == ["gpu0+1", "gpu2+3"]
    assert plan.slots[0].environ()["CUDA_VISIBLE_DEVICES"].count(",") == 1
    assert any("1 GPU(s) stay unused" in note for note in plan.notes)


def test_too_few_gpus_for_one_task_is_an_environment_error():
    with pytest.raises(LocalError) as caught:
        plan_slots(fake_report(fake_gpu(0)), gpus_per_task=2)
    assert caught.value.environment


def test_gpu_models_from_the_spec_select_matching_local_cards():
    report = fake_report(fake_gpu(0, "Tesla T4"), fake_gpu(1, "NVIDIA A100-SXM4-80GB"))
    plan = plan_slots(report, gpu_models=["NVIDIA-A100-SXM4-80GB"])  # the GFD label form
    assert [s.name for s in plan.slots] == ["gpu1"]
    with pytest.raises(LocalError, match="matches none of this machine's GPUs"):
        plan_slots(report, gpu_models=["NVIDIA-H100-80GB-HBM3"])
    chosen = plan_slots(report, gpus="0", gpu_models=["NVIDIA-H100-80GB-HBM3"])
    assert [s.name for s in chosen.slots] == ["gpu0"]
    assert any("gpuModels is not applied" in note for note in chosen.notes)


def test_cpu_slots_only_when_asked_and_they_hide_every_gpu():
    plan = plan_slots(fake_report(fake_gpu(0)), cpu_slots=3)
    assert [s.name for s in plan.slots] == ["cpu0", "cpu1", "cpu2"]
    assert plan.cpu_only
    assert all(s.environ() == {"CUDA_VISIBLE_DEVICES": ""} for s in plan.slots)
    assert plan.slots[0].model == CPU_MODEL
    assert "WITHOUT a GPU" in plan.notes[0]


def test_asking_for_gpus_and_cpu_slots_at_once_is_refused():
    with pytest.raises(LocalError, match="not both"):
        plan_slots(fake_report(fake_gpu(0)), gpus="0", cpu_slots=1)
    with pytest.raises(LocalError, match="at least 1"):
        plan_slots(fake_report(), cpu_slots=0)


def test_without_a_gpu_nothing_runs_unless_cpu_slots_are_asked_for():
    report = probe_gpus()  # this machine's real answer: no NVIDIA driver
    assert not report.available
    with pytest.raises(LocalError) as caught:
        plan_slots(report)
    assert caught.value.environment
    assert "--slots N" in str(caught.value) and "Nothing was run" in str(caught.value)


def test_run_on_a_machine_without_gpu_and_without_slots_exits_3_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "never.txt"
    batch = tmp_path / "b.yaml"
    batch.write_text(
        "apiVersion: gpubatch.io/v1alpha1\nkind: GPUBatch\nmetadata: {name: b}\n"
        f'spec:\n  tasks: {{items: [{{a: 1}}]}}\n  outputs: ["{out}"]\n'
        f'  template: {{spec: {{containers: [{{name: t, command: [touch, "{out}"]}}]}}}}\n'
    )
    assert main(["run", str(batch), "--state-dir", str(tmp_path / "state")]) == 3
    assert "--slots N" in capsys.readouterr().err
    assert not out.exists()


def test_freest_first_takes_the_idle_card_with_most_free_memory_now():
    a, b = fake_gpu(0, free_gib=10), fake_gpu(1, free_gib=60)
    slots = [Slot("gpu0", (a,)), Slot("gpu1", (b,))]
    assert freest(slots, fake_report(a, b)).name == "gpu1"
    small = fake_gpu(1, free_gib=12, total_gib=16)  # 75% free but fewer bytes
    assert freest(slots, fake_report(a, small), "bytes").name == "gpu1"
    assert freest(slots, fake_report(fake_gpu(0, free_gib=10), small), "ratio").name == "gpu1"
    assert freest(slots, fake_report(fake_gpu(0, free_gib=70), small), "bytes").name == "gpu0"


def test_freest_first_counts_a_card_missing_from_the_new_report_as_full():
    a, b = fake_gpu(0), fake_gpu(1, free_gib=1)
    slots = [Slot("gpu0", (a,)), Slot("gpu1", (b,))]
    assert freest(slots, fake_report(b)).name == "gpu1"


def test_freest_first_is_a_plain_flag_that_never_swallows_the_file_name():
    args = build_parser().parse_args(["run", "--freest-first", "batch.yaml", "--free-by", "ratio"])
    assert (args.file, args.freest_first, args.free_by) == ("batch.yaml", True, "ratio")


# NVML readings recorded on a shared workstation, replayed through the NVML stand-in: card 0
# runs someone else's job (70 of 80 GiB used, 97 % busy), card 1 is nearly idle.
SHARED_WORKSTATION = [
    FakeGpu("NVIDIA A100-SXM4-80GB", "GPU-aaaa1111-0000", 80, 70, utilization=97),
    FakeGpu("NVIDIA A100-SXM4-80GB", "GPU-bbbb2222-0000", 80, 2, utilization=3),
]


def _slots_of(report: GpuReport) -> list[Slot]:
    return [Slot(f"gpu{d.label}", (d,)) for d in report.devices]


def test_a_card_with_less_free_memory_than_asked_is_passed_over_with_the_numbers() -> None:
    report = probe_gpus(FakeNvmlLibrary(SHARED_WORKSTATION), environ={})
    busy, idle = _slots_of(report)
    threshold = GpuThreshold(min_free_bytes=16 * 1024**3)
    assert threshold.passed_over(busy, report) == "GPU 0 has 10.0 GiB free, less than 16.0 GiB"
    assert threshold.passed_over(idle, report) is None


def test_free_share_and_utilisation_thresholds_read_the_same_recorded_readings() -> None:
    report = probe_gpus(FakeNvmlLibrary(SHARED_WORKSTATION), environ={})
    busy, idle = _slots_of(report)
    assert GpuThreshold(min_free_share=0.5).passed_over(busy, report) == (
        "GPU 0 has 12% of its memory free, less than 50%"
    )
    by_load = GpuThreshold(max_utilization_percent=50)
    assert by_load.passed_over(busy, report) == "GPU 0 is 97% busy, more than 50%"
    assert by_load.passed_over(idle, report) is None


def test_a_card_missing_from_a_later_reading_takes_no_task() -> None:
    first = probe_gpus(FakeNvmlLibrary(SHARED_WORKSTATION), environ={})
    later = probe_gpus(FakeNvmlLibrary(SHARED_WORKSTATION[1:]), environ={})
    busy, _ = _slots_of(first)
    why = GpuThreshold(min_free_share=0.1).passed_over(busy, later)
    assert why == "GPU 0 (GPU-aaaa1111-0000) is not in the NVML report"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8GiB", (8 * 1024**3, None)), ("500MiB", (500 * 1024**2, None)), ("40%", (None, 0.4))],
)
def test_min_free_memory_takes_a_size_or_a_share(text, expected) -> None:
    assert parse_memory(text) == expected


def test_a_min_free_memory_that_is_neither_is_refused_with_the_forms_accepted() -> None:
    with pytest.raises(LocalError, match="such as 8GiB"):
        parse_memory("lots")
