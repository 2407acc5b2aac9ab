"""The environment contract between the operator (or CLI) and the worker."""

from __future__ import annotations

import json

import pytest

from gpubatch.api.taskenv import (
    ENV_ATOMIC_OUTPUTS,
    ENV_BATCH,
    ENV_DEADLINE_SECONDS,
    ENV_NODE_NAME,
    ENV_OUTPUTS,
    ENV_PARAMS,
    ENV_PARTIAL_OUTPUTS,
    ENV_REQUIRE_GPU,
    ENV_TASK_INDEX,
    TaskEnvironment,
    TaskEnvironmentError,
)
from gpubatch.core.partial import partial_paths

pytestmark = pytest.mark.unit


def a_task_env(**changes: object) -> TaskEnvironment:
    fields: dict[str, object] = {
        "batch": "faceswap",
        "task_index": 42,
        "attempt": 1,
        "params": {"video": "/in/a b.mp4", "scale": 2, "tags": ["x", "ü"]},
        "outputs": ("/out/a_face.mp4",),
    }
    fields.update(changes)
    return TaskEnvironment.model_validate(fields)


def test_plain_environ_round_trips() -> None:
    env = a_task_env(
        deadline_seconds=3600,
        grace_seconds=5,
        require_gpu=False,
        shell=True,
        skip_existing=False,
        result_path="/tmp/result.json",
        node_name="node-1",
    )
    assert TaskEnvironment.from_env(env.to_environ()) == env


def test_atomic_environment_round_trips_with_partial_paths() -> None:
    outputs = ("/out/a.mp4", "s3://bucket/out/b.npz")
    env = a_task_env(outputs=outputs, atomic_outputs=True, partial_outputs=partial_paths(outputs))
    environ = env.to_environ()
    assert json.loads(environ[ENV_PARTIAL_OUTPUTS]) == list(partial_paths(outputs))
    assert TaskEnvironment.from_env(environ) == env
    assert env.write_paths() == partial_paths(outputs)


def test_pod_env_takes_the_node_from_the_downward_api() -> None:
    env_list = a_task_env().to_env()
    by_name = {entry["name"]: entry for entry in env_list}
    assert by_name[ENV_NODE_NAME] == {
        "name": ENV_NODE_NAME,
        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
    }
    assert by_name[ENV_TASK_INDEX] == {"name": ENV_TASK_INDEX, "value": "42"}
    assert all(isinstance(e.get("value", ""), str) for e in env_list)
    assert len(by_name) == len(env_list)


def test_pod_env_never_sets_cuda_visible_devices() -> None:
    names = {entry["name"] for entry in a_task_env(atomic_outputs=False).to_env()}
    assert "CUDA_VISIBLE_DEVICES" not in names
    assert "CUDA_VISIBLE_DEVICES" not in a_task_env().to_environ()


def test_params_are_json_and_keep_unicode() -> None:
    environ = a_task_env().to_environ()
    assert json.loads(environ[ENV_PARAMS]) == {
        "video": "/in/a b.mp4",
        "scale": 2,
        "tags": ["x", "ü"],
    }
    assert "ü" in environ[ENV_PARAMS]


def test_defaults_require_a_gpu_skip_existing_and_no_shell() -> None:
    env = TaskEnvironment.from_env({ENV_BATCH: "b", ENV_TASK_INDEX: "0"})
    assert env.require_gpu is True
    assert env.skip_existing is True
    assert env.shell is False
    assert env.atomic_outputs is False
    assert env.deadline_seconds is None
    assert env.result_path == "/dev/termination-log"
    assert env.outputs == ()


@pytest.mark.parametrize("raw", ["true", "TRUE", "1", "yes", "on"])
def test_booleans_accept_common_spellings_of_true(raw: str) -> None:
    env = TaskEnvironment.from_env({ENV_BATCH: "b", ENV_TASK_INDEX: "0", ENV_REQUIRE_GPU: raw})
    assert env.require_gpu is True


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        (ENV_TASK_INDEX, "seven", "GPUBATCH_TASK_INDEX must be an integer"),
        (ENV_TASK_INDEX, "-1", "task_index"),
        (ENV_REQUIRE_GPU, "maybe", "GPUBATCH_REQUIRE_GPU must be true or false"),
        (ENV_PARAMS, "{not json", "GPUBATCH_PARAMS is not valid JSON"),
        (ENV_PARAMS, "[1, 2]", "GPUBATCH_PARAMS must be a JSON object"),
        (ENV_OUTPUTS, '{"a": 1}', "GPUBATCH_OUTPUTS must be a JSON list of strings"),
        (ENV_OUTPUTS, '["/a", "/a"]', "names the same output twice"),
        (ENV_DEADLINE_SECONDS, "soon", "must be a number of seconds"),
        (ENV_DEADLINE_SECONDS, "0", "deadline_seconds"),
    ],
)
def test_malformed_values_are_refused_naming_the_variable(
    name: str, value: str, complaint: str
) -> None:
    environ = {ENV_BATCH: "b", ENV_TASK_INDEX: "0", name: value}
    with pytest.raises(TaskEnvironmentError, match=complaint):
        TaskEnvironment.from_env(environ)


def test_missing_batch_or_index_says_who_normally_starts_the_worker() -> None:
    with pytest.raises(TaskEnvironmentError, match="gpubatch operator or `gpubatch run`"):
        TaskEnvironment.from_env({})


def test_atomic_outputs_need_one_partial_path_per_output() -> None:
    environ = a_task_env().to_environ() | {ENV_ATOMIC_OUTPUTS: "true"}
    with pytest.raises(TaskEnvironmentError, match="one partial path per output"):
        TaskEnvironment.from_env(environ)


def test_partial_paths_without_atomic_mode_are_refused() -> None:
    environ = a_task_env().to_environ() | {ENV_PARTIAL_OUTPUTS: '["/out/.a.partial"]'}
    with pytest.raises(TaskEnvironmentError, match="set both or neither"):
        TaskEnvironment.from_env(environ)


def test_a_partial_path_may_not_be_a_final_output() -> None:
    with pytest.raises(ValueError, match="none of them a final output"):
        a_task_env(outputs=("/o/a", "/o/b"), atomic_outputs=True, partial_outputs=("/o/b", "/o/c"))


def test_empty_optional_values_mean_default() -> None:
    environ = {ENV_BATCH: "b", ENV_TASK_INDEX: "0", ENV_DEADLINE_SECONDS: "", ENV_REQUIRE_GPU: ""}
    env = TaskEnvironment.from_env(environ)
    assert env.deadline_seconds is None
    assert env.require_gpu is True
