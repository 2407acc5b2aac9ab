"""Rendering a task attempt's pod: name, labels, GPU, worker wrap, env, security, affinity."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gpubatch.api.names import (
    FINALIZER_TRACKING,
    LABEL_ATTEMPT,
    LABEL_BATCH_NAME,
    LABEL_BATCH_UID,
    LABEL_KUEUE_QUEUE,
    LABEL_TASK_INDEX,
)
from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.taskenv import (
    ENV_ATOMIC_OUTPUTS,
    ENV_ATTEMPT,
    ENV_BATCH,
    ENV_DEADLINE_SECONDS,
    ENV_NODE_NAME,
    ENV_OUTPUTS,
    ENV_PARAMS,
    ENV_PARTIAL_OUTPUTS,
    ENV_SHELL,
    ENV_TASK_INDEX,
)
from gpubatch.core.partial import partial_path
from gpubatch.core.podspec import (
    KUBELET_DEADLINE_GRACE,
    MAX_NAME,
    BatchRef,
    LeaseEndpoint,
    label_value,
    pod_name,
    render_pod,
    render_warm_pod,
    task_selector,
)
from gpubatch.core.prepare import prepare_batch
from support.builders import BATCH, BATCH_UID, NAMESPACE, a_spec

pytestmark = pytest.mark.unit

REF = BatchRef(name=BATCH, namespace=NAMESPACE, uid=BATCH_UID)
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
GPU_MODEL_LABEL = "nvidia.com/gpu.product"


def a_container(name: str = "task", **changes: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": "registry.example.com/task:1",
        "command": ["python", "run.py", "--shot", "{shot}", "{outputs[0]}"],
    }
    container.update(changes)
    return {k: v for k, v in container.items() if v is not None}


def a_template(*containers: dict[str, Any], **pod_spec: Any) -> dict[str, Any]:
    return {"spec": {"containers": list(containers or [a_container()]), **pod_spec}}


def render(spec: GPUBatchSpec | None = None, index: int = 3, attempt: int = 1) -> dict[str, Any]:
    spec = spec or a_spec()
    prepared = prepare_batch(spec)
    return render_pod(REF, spec, prepared.render(index), attempt)


def task_container(pod: dict[str, Any], name: str = "task") -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or the valueFrom mapping); names must be unique."""
    names = [e["name"] for e in container.get("env", [])]
    assert len(names) == len(set(names)), names
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# -------------------------------------------------------------------------------- names
def test_a_short_pod_name_is_batch_index_attempt():
    assert pod_name("clips", 12, 3) == "clips-12-3"


def test_a_name_of_exactly_63_characters_is_kept():
    batch = "b" * (MAX_NAME - len("-1-0"))
    assert pod_name(batch, 1, 0) == f"{batch}-1-0"


@pytest.mark.parametrize(
    "batch",
    ["x" * 70, "a-" * 40 + "z", "render." + "q" * 100, "r" * 45 + "." + "q" * 40],
    ids=["plain", "dash-at-cut", "dotted", "dot-at-cut"],
)
def test_a_long_pod_name_is_shortened_with_a_hash_and_keeps_index_and_attempt(batch):
    name = pod_name(batch, 12345, 7)
    assert len(name) <= MAX_NAME
    assert name.endswith("-12345-7")
    assert name.startswith(batch[:20])
    assert DNS_SUBDOMAIN.fullmatch(name), name
    assert pod_name(batch, 12345, 7) == name  # deterministic: a repeated create is a 409


def test_long_batch_names_sharing_a_prefix_get_different_pod_names():
    first, second = "p" * 80 + "-one", "p" * 80 + "-two"
    assert pod_name(first, 0, 0) != pod_name(second, 0, 0)


def test_attempts_and_indexes_never_share_a_pod_name():
    names = {pod_name("x" * 70, index, attempt) for index in range(30) for attempt in range(3)}
    assert len(names) == 90


def test_a_valid_label_value_is_kept_as_is():
    assert label_value("clips-2025.v1_a") == "clips-2025.v1_a"


@pytest.mark.parametrize(
    "text", ["a" * 64, "-starts-with-dash", "has spaces/and:colons", "ends.", "___", "é" * 10]
)
def test_any_text_becomes_a_valid_label_value(text):
    value = label_value(text)
    assert len(value) <= MAX_NAME
    assert LABEL_VALUE.fullmatch(value), value
    assert label_value(text) == value


def test_different_long_texts_get_different_label_values():
    assert label_value("a" * 70 + "1") != label_value("a" * 70 + "2")


def test_the_task_selector_selects_by_batch_uid():
    assert task_selector("u-1") == f"{LABEL_BATCH_UID}=u-1"


# ------------------------------------------------------------------------ pod metadata
def test_the_pod_is_named_labelled_owned_and_tracked():
    pod = render(index=3, attempt=1)
    metadata = pod["metadata"]
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert (metadata["name"], metadata["namespace"]) == ("clips-3-1", NAMESPACE)
    assert metadata["labels"] == {
        LABEL_BATCH_NAME: BATCH,
        LABEL_BATCH_UID: BATCH_UID,
        LABEL_TASK_INDEX: "3",
        LABEL_ATTEMPT: "1",
    }
    assert metadata["finalizers"] == [FINALIZER_TRACKING]
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "gpubatch.io/v1alpha1",
            "kind": "GPUBatch",
            "name": BATCH,
            "uid": BATCH_UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert pod["spec"]["restartPolicy"] == "Never"


def test_template_labels_and_annotations_are_copied_but_ours_win():
    template = a_template()
    template["metadata"] = {
        "labels": {"team": "vision", LABEL_TASK_INDEX: "999"},
        "annotations": {"example.com/owner": "ana"},
    }
    metadata = render(a_spec(template=template), index=4)["metadata"]
    assert metadata["labels"]["team"] == "vision"
    assert metadata["labels"][LABEL_TASK_INDEX] == "4"
    assert metadata["annotations"]["example.com/owner"] == "ana"
    assert metadata["annotations"]["gpubatch.io/task-container"] == "task"


def test_a_long_batch_name_is_labelled_with_a_valid_value():
    ref = BatchRef(name="n" * 100, namespace=NAMESPACE, uid=BATCH_UID)
    spec = a_spec()
    pod = render_pod(ref, spec, prepare_batch(spec).render(0), 0)
    assert LABEL_VALUE.fullmatch(pod["metadata"]["labels"][LABEL_BATCH_NAME])
    assert len(pod["metadata"]["name"]) <= MAX_NAME


# ---------------------------------------------------------------------------------- GPU
def test_the_task_container_gets_the_gpus_as_limit_and_request():
    resources = task_container(render())["resources"]
    assert resources == {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}


def test_gpu_count_and_resource_name_come_from_the_spec_and_other_resources_stay():
    container = a_container(resources={"limits": {"memory": "8Gi"}, "requests": {"cpu": "2"}})
    spec = a_spec(
        gpusPerTask=2, gpuResource="nvidia.com/mig-1g.10gb", template=a_template(container)
    )
    resources = task_container(render(spec))["resources"]
    assert resources["limits"] == {"memory": "8Gi", "nvidia.com/mig-1g.10gb": "2"}
    assert resources["requests"] == {"cpu": "2", "nvidia.com/mig-1g.10gb": "2"}
    assert "nvidia.com/gpu" not in resources["limits"]


def test_only_the_task_container_gets_a_gpu_and_the_task_environment():
    spec = a_spec(
        taskContainer="task",
        template=a_template(
            a_container("sidecar", command=["sleep", "infinity"]), a_container("task")
        ),
    )
    pod = render(spec)
    sidecar = task_container(pod, "sidecar")
    assert "resources" not in sidecar
    assert "env" not in sidecar
    assert sidecar["command"] == ["sleep", "infinity"]
    assert task_container(pod)["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert [c["name"] for c in pod["spec"]["containers"]] == ["sidecar", "task"]


# ------------------------------------------------------------------------ command and env
def test_the_worker_wraps_the_rendered_command():
    container = task_container(render(index=3))
    assert container["command"] == [
        "gpubatch-worker",
        "--",
        "python",
        "run.py",
        "--shot",
        "3",
        "/out/3.npy",
    ]
    assert "args" not in container


def test_args_join_the_command_behind_the_worker():
    container = a_container(command=["python"], args=["run.py", "{shot}"])
    pod = render(a_spec(template=a_template(container)), index=5)
    assert task_container(pod)["command"] == ["gpubatch-worker", "--", "python", "run.py", "5"]
    assert "args" not in task_container(pod)


def test_without_wrap_command_and_args_are_rendered_but_not_wrapped():
    container = a_container(command=["python"], args=["run.py", "{shot}"])
    spec = a_spec(worker={"wrap": False}, template=a_template(container))
    rendered = task_container(render(spec, index=5))
    assert rendered["command"] == ["python"]
    assert rendered["args"] == ["run.py", "5"]


def test_without_wrap_the_images_entrypoint_may_run():
    spec = a_spec(worker={"wrap": False}, template=a_template(a_container(command=None)))
    assert "command" not in task_container(render(spec))


def test_the_task_environment_is_set_without_pinning_a_gpu():
    env = env_of(task_container(render(a_spec(taskDeadlineSeconds=600), index=3, attempt=2)))
    assert env[ENV_BATCH] == BATCH
    assert (env[ENV_TASK_INDEX], env[ENV_ATTEMPT]) == ("3", "2")
    assert json.loads(env[ENV_PARAMS]) == {"shot": 3}
    assert json.loads(env[ENV_OUTPUTS]) == ["/out/3.npy"]
    assert env[ENV_ATOMIC_OUTPUTS] == "false"
    assert ENV_PARTIAL_OUTPUTS not in env
    assert env[ENV_DEADLINE_SECONDS] == "600"
    assert env[ENV_NODE_NAME] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert "NVIDIA_VISIBLE_DEVICES" not in env


def test_user_env_is_kept_rendered_and_cannot_override_the_task_environment():
    container = a_container(
        env=[
            {"name": "MODE", "value": "shot-{shot}"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": ENV_TASK_INDEX, "value": "0"},
        ]
    )
    env = env_of(task_container(render(a_spec(template=a_template(container)), index=7)))
    assert env["MODE"] == "shot-7"
    assert env["TOKEN"] == {"secretKeyRef": {"name": "s", "key": "k"}}
    assert env[ENV_TASK_INDEX] == "7"


def test_shell_mode_is_passed_to_the_worker():
    env = env_of(task_container(render(a_spec(worker={"shell": True}))))
    assert env[ENV_SHELL] == "true"


def test_with_atomic_outputs_the_command_writes_to_the_partial_path():
    pod = render(a_spec(worker={"atomicOutputs": True}), index=3)
    container = task_container(pod)
    partial = partial_path("/out/3.npy")
    assert container["command"][-1] == partial
    env = env_of(container)
    assert json.loads(env[ENV_OUTPUTS]) == ["/out/3.npy"]
    assert json.loads(env[ENV_PARTIAL_OUTPUTS]) == [partial]
    assert env[ENV_ATOMIC_OUTPUTS] == "true"


def test_the_termination_message_falls_back_to_logs_unless_the_template_says_otherwise():
    assert task_container(render())["terminationMessagePolicy"] == "FallbackToLogsOnError"
    container = a_container(terminationMessagePolicy="File")
    pod = render(a_spec(template=a_template(container)))
    assert task_container(pod)["terminationMessagePolicy"] == "File"


# ------------------------------------------------------------------------------ deadlines
def test_the_kubelet_deadline_backstops_the_task_deadline():
    pod = render(a_spec(taskDeadlineSeconds=600))
    assert pod["spec"]["activeDeadlineSeconds"] == 600 + KUBELET_DEADLINE_GRACE
    assert "activeDeadlineSeconds" not in render()["spec"]


def test_a_template_deadline_is_kept():
    spec = a_spec(taskDeadlineSeconds=600, template=a_template(activeDeadlineSeconds=900))
    assert render(spec)["spec"]["activeDeadlineSeconds"] == 900


# ------------------------------------------------------------------------------- security
def test_restricted_security_defaults_are_added_where_the_template_is_silent():
    spec = a_spec(
        template=a_template(
            a_container(),
            a_container("sidecar", command=["sleep", "1"]),
            initContainers=[a_container("fetch", command=["true"])],
        )
    )
    pod = render(spec)
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for container in [*pod["spec"]["containers"], *pod["spec"]["initContainers"]]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }, container["name"]


def test_security_settings_in_the_template_are_never_overridden():
    container = a_container(
        securityContext={
            "allowPrivilegeEscalation": True,
            "capabilities": {"add": ["SYS_PTRACE"]},
            "runAsUser": 0,
        }
    )
    pod_security = {"runAsNonRoot": False, "seccompProfile": {"type": "Unconfined"}}
    spec = a_spec(template=a_template(container, securityContext=pod_security))
    pod = render(spec)
    assert pod["spec"]["securityContext"] == pod_security
    assert task_container(pod)["securityContext"] == {
        "allowPrivilegeEscalation": True,
        "capabilities": {"add": ["SYS_PTRACE"]},
        "runAsUser": 0,
    }


# ------------------------------------------------------------------------------- affinity
def test_no_gpu_models_means_no_affinity():
    assert "affinity" not in render()["spec"]


def test_one_gpu_model_is_required_without_preferences():
    node_affinity = render(a_spec(gpuModels=["NVIDIA-L4"]))["spec"]["affinity"]["nodeAffinity"]
    assert node_affinity == {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": GPU_MODEL_LABEL, "operator": "In", "values": ["NVIDIA-L4"]}
                    ]
                }
            ]
        }
    }


def test_several_gpu_models_are_required_and_preferred_in_the_given_order():
    spec = a_spec(gpuModels=["H100", "A100", "L4"], gpuModelLabel="example.com/gpu")
    node_affinity = render(spec)["spec"]["affinity"]["nodeAffinity"]
    [term] = node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "example.com/gpu", "operator": "In", "values": ["H100", "A100", "L4"]}
    ]
    preferred = node_affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    ranked = [(p["preference"]["matchExpressions"][0]["values"], p["weight"]) for p in preferred]
    assert [models for models, _ in ranked] == [["H100"], ["A100"], ["L4"]]
    weights = [weight for _, weight in ranked]
    assert weights == sorted(weights, reverse=True)
    assert len(set(weights)) == 3
    assert all(1 <= w <= 100 for w in weights)


def test_gpu_models_narrow_every_node_selector_term_of_the_template():
    zone_a = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    zone_b = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}
    own_preference = {
        "weight": 5,
        "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]},
    }
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [zone_a, zone_b]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": [own_preference],
        }
    }
    spec = a_spec(gpuModels=["H100", "A100"], template=a_template(affinity=affinity))
    node_affinity = render(spec)["spec"]["affinity"]["nodeAffinity"]
    model = {"key": GPU_MODEL_LABEL, "operator": "In", "values": ["H100", "A100"]}
    terms = node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert [t["matchExpressions"] for t in terms] == [
        [*zone_a["matchExpressions"], model],
        [*zone_b["matchExpressions"], model],
    ]
    preferred = node_affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred[0] == own_preference
    assert len(preferred) == 3


# ------------------------------------------------------------------------------- purity
def test_rendering_leaves_the_spec_untouched_and_pods_independent():
    spec = a_spec(gpuModels=["H100", "A100"], template=a_template(a_container(env=[])))
    before = spec.model_dump()
    first = render(spec, index=1)
    second = render(spec, index=2)
    assert spec.model_dump() == before
    assert first["spec"]["affinity"] == second["spec"]["affinity"]
    assert first["spec"]["affinity"] is not second["spec"]["affinity"]
    assert env_of(task_container(first))[ENV_TASK_INDEX] == "1"
    assert env_of(task_container(second))[ENV_TASK_INDEX] == "2"


# ------------------------------------------------------------------------------------ Kueue
def test_the_batchs_queue_label_goes_on_every_task_pod_over_the_templates():
    spec = a_spec(
        template={
            "metadata": {"labels": {LABEL_KUEUE_QUEUE: "from-template"}},
            **a_template(),
        }
    )
    ref = BatchRef(name=BATCH, namespace=NAMESPACE, uid=BATCH_UID, queue="team-a")
    pod = render_pod(ref, spec, prepare_batch(spec).render(0), 0)
    assert pod["metadata"]["labels"][LABEL_KUEUE_QUEUE] == "team-a"


def test_the_queue_label_goes_on_every_warm_pod_too():
    spec = a_spec(worker={"mode": "Warm"}, template=a_template(a_container(command=["serve"])))
    ref = BatchRef(name=BATCH, namespace=NAMESPACE, uid=BATCH_UID, queue="team-a")
    pod = render_warm_pod(ref, spec, 0, LeaseEndpoint("https://127.0.0.1:1/lease", "PEM"))
    assert pod["metadata"]["labels"][LABEL_KUEUE_QUEUE] == "team-a"


def test_a_batch_without_a_queue_adds_no_queue_label():
    assert LABEL_KUEUE_QUEUE not in render()["metadata"]["labels"]
