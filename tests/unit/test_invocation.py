"""core.invocation: what one attempt runs, decided once for both executors."""

from __future__ import annotations

import pytest

from gpubatch.core.invocation import task_invocation
from gpubatch.core.podspec import WORKER_COMMAND, BatchRef, render_pod
from gpubatch.core.prepare import prepare_batch
from support.builders import BATCH, BATCH_UID, NAMESPACE, a_spec

pytestmark = pytest.mark.unit

CONTAINER = {
    "name": "task",
    "image": "registry.example.com/task:1",
    "command": ["python", "run.py"],
    "args": ["--out", "{outputs[0]}"],
    "workingDir": "/work",
    "env": [
        {"name": "MODE", "value": "fast-{n}"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ],
}


def _spec(**changes: object):
    return a_spec(
        tasks={"range": {"param": "n", "start": 0, "stop": 4}},
        outputRoot="/out",
        outputs=["{n}.bin"],
        taskDeadlineSeconds=30,
        template={"spec": {"containers": [CONTAINER]}},
        **changes,
    )


def test_the_invocation_holds_argv_env_values_working_dir_and_deadline() -> None:
    spec = _spec()
    invocation = task_invocation(BATCH, spec, prepare_batch(spec).render(2), attempt=1)
    assert invocation.argv == ("python", "run.py", "--out", "/out/2.bin")
    assert invocation.env == (("MODE", "fast-2"),)
    assert invocation.env_from_kubernetes == ("TOKEN",)
    assert invocation.working_dir == "/work"
    assert invocation.deadline_seconds == 30
    assert (invocation.task.task_index, invocation.task.attempt) == (2, 1)
    assert invocation.task.outputs == ("/out/2.bin",)


def test_the_pod_runs_exactly_the_invocation_behind_the_worker() -> None:
    spec = _spec()
    rendered = prepare_batch(spec).render(2)
    invocation = task_invocation(BATCH, spec, rendered, attempt=1)
    ref = BatchRef(name=BATCH, namespace=NAMESPACE, uid=BATCH_UID)
    (container,) = render_pod(ref, spec, rendered, attempt=1)["spec"]["containers"]
    assert container["command"] == [*WORKER_COMMAND, *invocation.argv]
    values = {e["name"]: e.get("value") for e in container["env"]}
    assert values["MODE"] == "fast-2"
    for name, value in invocation.task.to_environ().items():
        assert values[name] == value


def test_atomic_outputs_give_the_task_its_partial_paths() -> None:
    spec = _spec(worker={"atomicOutputs": True})
    invocation = task_invocation(BATCH, spec, prepare_batch(spec).render(0), attempt=0)
    assert invocation.task.atomic_outputs
    assert len(invocation.task.partial_outputs) == 1
    assert invocation.task.partial_outputs[0] != "/out/0.bin"
