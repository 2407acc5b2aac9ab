"""The result contract: exit codes and the termination-message record."""

from __future__ import annotations

import json
import os
import signal

import pytest

from gpubatch.api.result import (
    SIGNAL_EXIT_BASE,
    TERMINATION_MESSAGE_MAX_BYTES,
    TRUNCATION_MARK,
    ExitCode,
    GpuIdentity,
    Outcome,
    Reason,
    ResultDecodeError,
    TaskResult,
    describe_exit_code,
    signal_exit_code,
    signal_of_exit_code,
)

pytestmark = pytest.mark.unit


def a_result(**changes: object) -> TaskResult:
    fields: dict[str, object] = {
        "outcome": Outcome.FAILED,
        "exit_code": 3,
        "reason": Reason.NON_ZERO_EXIT,
        "duration_seconds": 12.5,
        "gpus": (GpuIdentity(model="NVIDIA H100 80GB HBM3", uuid="GPU-1234"),),
        "node": "gpu-node-7",
        "message": "the command exited with code 3",
    }
    fields.update(changes)
    return TaskResult.model_validate(fields)


def test_worker_codes_avoid_codes_programs_commonly_use() -> None:
    own = {ExitCode.NO_GPU, ExitCode.DEADLINE_EXCEEDED, ExitCode.OUTPUT_MISSING}
    own.add(ExitCode.WORKER_ERROR)
    sysexits = set(range(64, 79))
    common = {1, 2, 124, 125, 126, 127, 255} | sysexits
    for code in own:
        assert code not in common
        assert code < SIGNAL_EXIT_BASE
    assert len({int(code) for code in ExitCode}) == len(ExitCode)


def test_shell_codes_keep_their_shell_meaning() -> None:
    assert int(ExitCode.COMMAND_NOT_FOUND) == 127
    assert int(ExitCode.COMMAND_NOT_EXECUTABLE) == 126
    assert ExitCode.SUCCESS == os.EX_OK


def test_signal_death_maps_to_128_plus_signal_number_and_back() -> None:
    assert signal_exit_code(signal.SIGKILL) == 137
    assert signal_exit_code(signal.SIGTERM) == 143
    assert signal_of_exit_code(137) == signal.SIGKILL
    assert signal_of_exit_code(3) is None
    assert signal_of_exit_code(128) is None


def test_exit_codes_are_described_for_people() -> None:
    assert "no GPU" in describe_exit_code(ExitCode.NO_GPU)
    assert describe_exit_code(137) == "killed by SIGKILL"
    assert describe_exit_code(3) == "command exited with code 3"


def test_result_encodes_camel_case_compact_json_and_decodes_back() -> None:
    result = a_result()
    encoded = result.encode()
    data = json.loads(encoded)
    assert data["exitCode"] == 3
    assert data["durationSeconds"] == 12.5
    assert data["outcome"] == "failed"
    assert data["reason"] == "NonZeroExit"
    assert data["gpus"] == [{"model": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1234"}]
    assert " " not in encoded.replace("NVIDIA H100 80GB HBM3", "").replace(
        "the command exited with code 3", ""
    )
    assert TaskResult.decode(encoded) == result


def test_huge_message_is_truncated_to_fit_the_termination_message_limit() -> None:
    result = a_result(message="start " + "x" * 100_000 + " the real error at the end")
    encoded = result.encode()
    assert len(encoded.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    decoded = TaskResult.decode(encoded)
    assert decoded.message.startswith(TRUNCATION_MARK)
    assert decoded.message.endswith("the real error at the end")
    assert decoded.model_dump(exclude={"message"}) == result.model_dump(exclude={"message"})
    # The limit is used well, not by a wide margin.
    assert len(encoded.encode()) > TERMINATION_MESSAGE_MAX_BYTES - 16


def test_truncation_counts_bytes_of_multibyte_and_escaped_characters() -> None:
    for filler in ("é", "🚀", '"', "\n", "\x01"):
        result = a_result(message=filler * 10_000)
        encoded = result.encode()
        assert len(encoded.encode()) <= TERMINATION_MESSAGE_MAX_BYTES, filler
        assert TaskResult.decode(encoded).message.endswith(filler)


def test_undecodable_bytes_in_a_message_cannot_break_encoding() -> None:
    name = b"/data/caf\xe9.mp4".decode("utf-8", "surrogateescape")  # as argv would carry it
    encoded = a_result(message=f"cannot start {name!s}").encode()
    assert TaskResult.decode(encoded).message == "cannot start /data/caf?.mp4"


def test_small_result_is_not_truncated() -> None:
    result = a_result(message="short")
    assert TaskResult.decode(result.encode()).message == "short"


def test_absurd_gpu_list_is_cut_but_stays_valid_and_says_so() -> None:
    gpus = tuple(GpuIdentity(model="M" * 60, uuid=f"GPU-{i:040d}") for i in range(100))
    result = a_result(gpus=gpus, message="why")
    encoded = result.encode()
    assert len(encoded.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    decoded = TaskResult.decode(encoded)
    assert 0 < len(decoded.gpus) < 100
    assert "GPUs not listed" in decoded.message


def test_gpu_model_is_the_single_model_or_a_sorted_mix() -> None:
    h100 = GpuIdentity(model="H100", uuid="GPU-a")
    t4 = GpuIdentity(model="T4", uuid="GPU-b")
    assert a_result(gpus=(h100, h100)).gpu_model == "H100"
    assert a_result(gpus=(t4, h100)).gpu_model == "H100+T4"
    assert a_result(gpus=()).gpu_model is None


def test_decode_rejects_a_message_that_is_not_a_result() -> None:
    with pytest.raises(ResultDecodeError, match="not a gpubatch task result"):
        TaskResult.decode("Traceback (most recent call last): ...")
    assert TaskResult.try_decode("panic: something") is None
    assert TaskResult.try_decode("") is None
    assert TaskResult.try_decode(None) is None


def test_decode_ignores_fields_from_a_newer_worker() -> None:
    data = json.loads(a_result().encode())
    data["someFutureField"] = {"x": 1}
    assert TaskResult.decode(json.dumps(data)) == a_result()


def test_node_is_omitted_when_unknown() -> None:
    assert "node" not in json.loads(a_result(node=None).encode())
