"""The spec and status models: examples validate, bad specs are refused with the CEL messages,
defaults are the documented ones, and the status stays small at 100k tasks."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gpubatch.api import spec as S
from gpubatch.api.spec import GPUBatch, GPUBatchSpec
from gpubatch.api.status import (
    FAILURE_MESSAGE_LIMIT,
    HISTOGRAM_BUCKETS,
    RECENT_FAILURES_LIMIT,
    Condition,
    GPUBatchStatus,
    RetryState,
    TaskCounts,
    TaskFailure,
)
from gpubatch.core.errors import SpecError
from gpubatch.core.gpustats import record_failure, record_result, record_success
from gpubatch.core.histogram import DurationHistogram, bucket_bounds, bucket_of
from gpubatch.core.indexset import IndexSet
from gpubatch.core.prepare import parse_spec

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("[a-e]-*.yaml"))


CONTAINER = {"name": "t", "image": "registry.example.com/t:1", "command": ["run"]}


def minimal(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "tasks": {"range": {"param": "shot", "stop": 10}},
        "outputs": ["/out/{shot}.npy"],
        "template": {"spec": {"containers": [CONTAINER]}},
    }
    raw.update(overrides)
    return raw


def with_path(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `raw` with a dotted path set (list positions as numbers)."""
    result = copy.deepcopy(raw)
    node: Any = result
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[keys[-1]] = value
    return result


# ---------------------------------------------------------------------------------- examples
def test_there_is_one_example_per_user_scenario():
    assert [p.name[:2] for p in EXAMPLES] == ["a-", "b-", "c-", "d-", "e-"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_as_a_gpubatch(path):
    batch = GPUBatch.model_validate(yaml.safe_load(path.read_text()))
    assert batch.metadata["name"]
    assert batch.spec.template.spec.containers


def test_example_a_is_a_matrix_with_relative_outputs_under_a_root():
    batch = GPUBatch.model_validate(
        yaml.safe_load((REPO / "examples/a-faceswap-matrix.yaml").read_text())
    )
    assert [name for name, _ in batch.spec.tasks.matrix_axes()] == ["image", "model", "video"]
    assert batch.spec.output_root == "/data/out/faceswap"


# ---------------------------------------------------------------------------------- defaults
def test_defaults_are_the_documented_ones():
    spec = GPUBatchSpec.model_validate(minimal())
    assert spec.gpus_per_task == 1
    assert spec.gpu_resource == "nvidia.com/gpu"
    assert spec.gpu_model_label == "nvidia.com/gpu.product"
    assert spec.order.by == "index"
    assert (spec.retry.limit, spec.retry.backoff_seconds, spec.retry.max_backoff_seconds) == (
        3,
        10,
        600,
    )
    assert spec.worker.model_dump() == {
        "wrap": True,
        "requireGPU": True,
        "atomicOutputs": False,
        "shell": False,
        "mode": "PerTask",
        "loadDeadlineSeconds": None,
    }
    assert (spec.pod_cleanup.succeeded, spec.pod_cleanup.failed) == ("Delete", "Keep")
    assert spec.parallelism is None and spec.max_pending is None and spec.suspend is False
    assert spec.tasks.range is not None and (spec.tasks.range.start, spec.tasks.range.step) == (
        0,
        1,
    )


def test_camel_case_on_the_wire_and_python_names_in_code_both_validate():
    by_alias = GPUBatchSpec.model_validate(minimal(gpusPerTask=2))
    by_name = GPUBatchSpec.model_validate(minimal(gpus_per_task=2))
    assert by_alias == by_name
    assert "gpusPerTask" in by_alias.model_dump()


def test_dump_then_validate_round_trips():
    spec = GPUBatchSpec.model_validate(
        minimal(worker={"atomicOutputs": True}, gpuModels=["A", "B"])
    )
    assert GPUBatchSpec.model_validate(json.loads(spec.model_dump_json())) == spec


def test_unknown_spec_field_is_refused_so_typos_are_caught_locally():
    with pytest.raises(ValidationError, match="parallism"):
        GPUBatchSpec.model_validate(minimal(parallism=3))


def test_pod_template_passes_unknown_pod_fields_through():
    raw = minimal()
    raw["template"]["spec"]["nodeSelector"] = {"pool": "gpu"}
    raw["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "d", "mountPath": "/d"}]
    dumped = GPUBatchSpec.model_validate(raw).model_dump(exclude_none=True)
    assert dumped["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert dumped["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/d"


def test_matrix_axes_order_is_by_name_whatever_the_yaml_order():
    spec = GPUBatchSpec.model_validate(
        minimal(
            tasks={
                "matrix": {
                    "b": {"values": [1]},
                    "a": {"values": [2]},
                    "c": {"values": [3]},
                }
            },
            outputs=["/o/{a}{b}{c}"],
        )
    )
    assert [name for name, _ in spec.tasks.matrix_axes()] == ["a", "b", "c"]


def test_manifest_format_is_inferred_from_the_extension():
    spec = GPUBatchSpec.model_validate(minimal(tasks={"manifest": {"path": "s3://b/m.NDJSON"}}))
    assert spec.tasks.manifest is not None and spec.tasks.manifest.resolved_format() == "jsonl"


def test_only_gpubatch_or_nobody_as_manager_means_the_operator_runs_the_batch():
    assert GPUBatchSpec.model_validate(minimal()).managed_by_gpubatch()
    assert GPUBatchSpec.model_validate(
        minimal(managedBy="gpubatch.io/operator")
    ).managed_by_gpubatch()
    foreign = GPUBatchSpec.model_validate(minimal(managedBy="kueue.x-k8s.io/multikueue"))
    assert not foreign.managed_by_gpubatch()


def test_task_container_defaults_to_the_first():
    assert GPUBatchSpec.model_validate(minimal()).task_container_index() == 0


# ------------------------------------------------------------------------------- bad specs

BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("two sources", minimal(tasks={"range": {"stop": 3}, "items": [{"a": 1}]}), S.MSG_ONE_SOURCE),
    ("no source", minimal(tasks={}), S.MSG_ONE_SOURCE),
    ("zero step", minimal(tasks={"range": {"stop": 3, "step": 0}}), S.MSG_STEP_ZERO),
    ("empty range", minimal(tasks={"range": {"start": 5, "stop": 5}}), S.MSG_RANGE_EMPTY),
    (
        "backwards range",
        minimal(tasks={"range": {"start": 0, "stop": 5, "step": -1}}),
        S.MSG_RANGE_EMPTY,
    ),
    ("reserved param", minimal(tasks={"range": {"param": "index", "stop": 3}}), S.MSG_PARAM_NAME),
    ("bad axis name", minimal(tasks={"matrix": {"my-axis": {"values": [1]}}}), S.MSG_PARAM_NAME),
    (
        "axis with two kinds",
        minimal(tasks={"matrix": {"a": {"values": [1], "files": "/x/*"}}}),
        S.MSG_ONE_AXIS_KIND,
    ),
    ("axis with no kind", minimal(tasks={"matrix": {"a": {}}}), S.MSG_ONE_AXIS_KIND),
    (
        "items with different keys",
        minimal(tasks={"items": [{"a": 1}, {"b": 2}]}),
        S.MSG_ITEMS_SAME_KEYS,
    ),
    ("bad item key", minimal(tasks={"items": [{"2x": 1}]}), S.MSG_PARAM_NAME),
    (
        "manifest without known format",
        minimal(tasks={"manifest": {"path": "/m/tasks.txt"}}),
        S.MSG_MANIFEST_FORMAT,
    ),
    ("longest first without cost", minimal(order={"by": "longestFirst"}), S.MSG_ORDER_COST),
    ("backoff order", minimal(retry={"backoffSeconds": 60, "maxBackoffSeconds": 5}), S.MSG_BACKOFF),
    ("shell without wrap", minimal(worker={"wrap": False, "shell": True}), S.MSG_SHELL_NEEDS_WRAP),
    (
        "atomic without wrap",
        minimal(worker={"wrap": False, "atomicOutputs": True}),
        S.MSG_ATOMIC_NEEDS_WRAP,
    ),
    ("warm without wrap", minimal(worker={"mode": "Warm", "wrap": False}), S.MSG_WARM_NEEDS_WRAP),
    ("warm with shell", minimal(worker={"mode": "Warm", "shell": True}), S.MSG_WARM_NO_SHELL),
    (
        "load deadline without warm",
        minimal(worker={"loadDeadlineSeconds": 60}),
        S.MSG_LOAD_DEADLINE_NEEDS_WARM,
    ),
    ("no containers", minimal(template={"spec": {"containers": []}}), S.MSG_CONTAINERS),
    (
        "cuda env",
        minimal(
            template={
                "spec": {
                    "containers": [
                        {**CONTAINER, "env": [{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}]}
                    ]
                }
            }
        ),
        S.MSG_GPU_ENV,
    ),
    (
        "nvidia env in init container",
        minimal(
            template={
                "spec": {
                    "containers": [CONTAINER],
                    "initContainers": [
                        {**CONTAINER, "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}
                    ],
                }
            }
        ),
        S.MSG_GPU_ENV,
    ),
    (
        "restart policy",
        minimal(template={"spec": {"containers": [CONTAINER], "restartPolicy": "OnFailure"}}),
        S.MSG_RESTART_POLICY,
    ),
    ("unknown task container", minimal(taskContainer="main"), S.MSG_TASK_CONTAINER),
    ("managedBy without a domain", minimal(managedBy="multikueue"), S.MSG_MANAGED_BY),
    (
        "wrapped task container without command",
        minimal(template={"spec": {"containers": [{"name": "t", "image": "i:1"}]}}),
        S.MSG_WRAP_NEEDS_COMMAND,
    ),
    (
        "range too large",
        minimal(tasks={"range": {"stop": S.MAX_TASKS + 1}}),
        S.MSG_RANGE_TOO_LARGE,
    ),
    (
        "range too large counting down",
        minimal(tasks={"range": {"start": 0, "stop": -3 * S.MAX_TASKS, "step": -2}}),
        S.MSG_RANGE_TOO_LARGE,
    ),
    (
        "matrix too large",
        minimal(
            tasks={
                "matrix": {
                    "a": {"values": list(range(300))},
                    "b": {"values": list(range(300))},
                    "c": {"range": {"stop": 300}},
                }
            }
        ),
        S.MSG_MATRIX_TOO_LARGE,
    ),
    ("cpu as gpu resource", minimal(gpuResource="cpu"), S.MSG_GPU_RESOURCE),
    ("kubernetes.io gpu resource", minimal(gpuResource="kubernetes.io/gpu"), S.MSG_GPU_RESOURCE),
    ("dotdot output", minimal(outputs=["/out/../etc/{shot}"]), S.MSG_OUTPUT_DOTDOT),
    ("relative output without root", minimal(outputs=["out/{shot}.npy"]), S.MSG_OUTPUT_ABSOLUTE),
    ("relative output root", minimal(outputRoot="data/out"), S.MSG_OUTPUT_ROOT),
    ("dotdot output root", minimal(outputRoot="/data/../etc"), S.MSG_OUTPUT_ROOT),
    ("zero parallelism", minimal(parallelism=0), "greater than or equal to 1"),
    ("float inline value", minimal(tasks={"items": [{"lr": 0.5}]}), "valid string"),
    (
        "too many items",
        minimal(tasks={"items": [{"a": i} for i in range(S.MAX_INLINE_ITEMS + 1)]}),
        "at most 10000 items",
    ),
]


@pytest.mark.parametrize(
    ("raw", "message"), [b[1:] for b in BAD_SPECS], ids=[b[0] for b in BAD_SPECS]
)
def test_bad_spec_is_refused_with_the_message_that_says_what_to_change(raw, message):
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert message in str(err.value)


def test_warm_mode_and_its_load_deadline_parse():
    spec = parse_spec(minimal(worker={"mode": "Warm", "loadDeadlineSeconds": 600}))
    assert (spec.worker.mode, spec.worker.load_deadline_seconds) == ("Warm", 600)


def test_spec_error_names_the_field_path_like_the_api_server():
    with pytest.raises(SpecError) as err:
        parse_spec(minimal(tasks={"range": {"stop": 3, "step": 0}}))
    assert str(err.value) == f"spec.tasks.range: {S.MSG_STEP_ZERO}"
    assert err.value.field == "spec.tasks.range"


def test_every_cel_message_is_exercised_by_a_bad_spec():
    exercised = {message for _, _, message in BAD_SPECS}
    assert exercised >= S.VALIDATION_MESSAGES - S.TRANSITION_MESSAGES


def test_floats_written_as_strings_are_kept_exactly():
    spec = GPUBatchSpec.model_validate(
        minimal(tasks={"matrix": {"lr": {"values": ["1.0", "1e-4"]}}}, outputs=["/o/{lr}"])
    )
    assert spec.tasks.matrix is not None and spec.tasks.matrix["lr"].values == ["1.0", "1e-4"]


# ------------------------------------------------------------------------------------ status
def test_counts_progress_is_finished_over_total():
    assert (
        TaskCounts(total=200, succeeded=100, failed=20, skipped=30, running=8).progress()
        == "150/200"
    )


def test_status_round_trips_through_json_with_camel_case():
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    status = GPUBatchStatus(
        observed_generation=2,
        counts=TaskCounts(total=3, succeeded=1),
        succeeded_indexes="0",
        recent_failures=[TaskFailure(index=1, attempt=0, exit_code=3, reason="Error", time=now)],
        retries=[RetryState(index=2, attempts=1, failures=1, not_before=now)],
        conditions=[
            Condition(
                type="Complete", status="False", reason="Dispatching", last_transition_time=now
            )
        ],
    )
    wire = json.loads(status.model_dump_json(exclude_none=True))
    assert wire["recentFailures"][0]["exitCode"] == 3
    assert wire["conditions"][0]["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert GPUBatchStatus.model_validate(wire) == status


def test_status_ignores_fields_from_a_newer_operator():
    assert GPUBatchStatus.model_validate({"someFutureField": 1}) == GPUBatchStatus()


def test_status_of_a_100k_task_batch_stays_well_under_64_kib():
    now = datetime(2025, 1, 1, tzinfo=UTC)
    total = 100_000
    # Realistic disorder: 64 GPUs finishing out of order leave scattered gaps; some failures.
    succeeded = IndexSet.interval(0, total)
    failed = IndexSet(range(7, total, 997))
    skipped = IndexSet.interval(0, 20_000)
    succeeded = succeeded - failed - skipped
    for gap in range(30_000, 30_000 + 64 * 40, 40):
        succeeded.discard(gap)
    status = GPUBatchStatus(
        counts=TaskCounts(
            total=total,
            succeeded=len(succeeded),
            failed=len(failed),
            skipped=len(skipped),
            running=64,
        ),
        succeeded_indexes=succeeded.format(),
        failed_indexes=failed.format(),
        skipped_indexes=skipped.format(),
        recent_failures=[
            TaskFailure(
                index=i,
                attempt=3,
                exit_code=1,
                reason="Error",
                message="x" * FAILURE_MESSAGE_LIMIT,
                node="gpu-node-0012",
                gpu_model="NVIDIA-A100-SXM4-80GB",
                time=now,
            )
            for i in range(RECENT_FAILURES_LIMIT)
        ],
        retries=[RetryState(index=i, attempts=2, failures=1, not_before=now) for i in range(64)],
        conditions=[
            Condition(
                type=t,
                status="True",
                reason="Dispatching",
                message="m" * 200,
                last_transition_time=now,
            )
            for t in ("Progressing", "Complete")
        ],
    )
    for model in ("NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3", "Tesla-T4"):
        for seconds in (0.5, 30, 90, 600, 3600, 86_400, 10**7):
            record_success(status, model, seconds)
    size = len(status.model_dump_json(exclude_none=True))
    assert size < 32 * 1024, size


# ---------------------------------------------------------------------- per-GPU-model stats
def test_histogram_buckets_are_log_spaced_and_cover_everything():
    assert bucket_of(0.2) == 0
    assert bucket_of(1.0) == 1
    assert bucket_of(1e12) == HISTOGRAM_BUCKETS - 1
    for bucket in range(1, HISTOGRAM_BUCKETS - 1):
        low, high = bucket_bounds(bucket)
        assert bucket_of(low * 1.0001) == bucket
        assert high / low == pytest.approx(2**0.25)


def test_p95_estimate_is_within_the_bucket_resolution():
    histogram = DurationHistogram()
    samples = [10.0 + i * 0.5 for i in range(1000)]  # 10 s .. 509.5 s, uniform
    for seconds in samples:
        histogram.add(seconds)
    true_p95 = sorted(samples)[949]
    estimate = histogram.quantile(0.95)
    assert estimate is not None
    assert abs(estimate - true_p95) / true_p95 < 0.2


def test_histogram_merges_by_addition_and_stores_without_trailing_zeros():
    a, b = DurationHistogram(), DurationHistogram()
    a.add(2)
    b.add(2)
    b.add(5000)
    a.merge(b)
    assert a.total() == 3
    assert len(a.counts()) == bucket_of(5000) + 1
    assert DurationHistogram(a.counts()).counts() == a.counts()


def test_empty_histogram_has_no_quantile():
    assert DurationHistogram().quantile(0.95) is None


def test_record_result_updates_one_model_incrementally():
    stats = record_result([], model="T4", succeeded=True, seconds=100)
    stats = record_result(stats, model="T4", succeeded=True, seconds=300)
    stats = record_result(stats, model="A100", succeeded=False)
    stats = record_result(stats, model=None, succeeded=True, seconds=1)
    assert [s.model for s in stats] == ["A100", "T4", "unknown"]
    t4 = stats[1]
    assert (t4.succeeded, t4.failed, t4.total_seconds, t4.mean_seconds, t4.max_seconds) == (
        2,
        0,
        400,
        200,
        300,
    )
    assert t4.p95_seconds is not None and 100 <= t4.p95_seconds <= 300
    assert stats[0].failed == 1 and stats[0].succeeded == 0


def test_record_helpers_update_the_status_in_place():
    status = GPUBatchStatus()
    record_success(status, "A100", 12.0)
    record_failure(status, "A100")
    assert (status.gpu_models[0].succeeded, status.gpu_models[0].failed) == (1, 1)


def test_an_over_long_inline_list_says_to_use_a_manifest_or_server_side_apply():
    raw = minimal(tasks={"items": [{"a": i} for i in range(S.MAX_INLINE_ITEMS + 1)]})
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert "at most 10000 items" in str(err.value)
    assert "spec.tasks.manifest" in str(err.value)
    assert "kubectl apply --server-side" in str(err.value)
