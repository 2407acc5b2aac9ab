"""Warm mode starts the task container's command once for many tasks: preparing a warm batch
refuses anything in that command that would vary per task, with the message saying what to do."""

from __future__ import annotations

from typing import Any

import pytest

from gpubatch.api.spec import MSG_WARM_PLACEHOLDER
from gpubatch.core.errors import SpecError
from gpubatch.core.prepare import prepare_batch
from support.builders import a_raw_spec

pytestmark = pytest.mark.unit


def warm(container: dict[str, Any], *extra: dict[str, Any]) -> dict[str, Any]:
    task = {"name": "task", "image": "registry.example.com/task:1", **container}
    return a_raw_spec(worker={"mode": "Warm"}, template={"spec": {"containers": [task, *extra]}})


@pytest.mark.parametrize(
    "container",
    [
        {"command": ["python", "serve.py", "{shot}"]},
        {"command": ["serve"], "args": ["--out", "{outputs[0]}"]},
        {"command": ["serve"], "args": ["--task={index}"]},
        {"command": ["serve"], "env": [{"name": "IN", "value": "/data/{shot}.tif"}]},
    ],
    ids=["command", "args-output", "args-index", "env"],
)
def test_a_warm_batch_with_a_task_placeholder_in_its_command_is_refused(container):
    with pytest.raises(SpecError) as err:
        prepare_batch(warm(container))
    assert MSG_WARM_PLACEHOLDER in str(err.value)


def test_a_warm_batch_keeps_literal_braces_and_other_containers_placeholders():
    side = {"name": "side", "image": "registry.example.com/side:1", "args": ["{shot}"]}
    prepared = prepare_batch(warm({"command": ["serve", "--json", "{{shot}}"]}, side))
    assert prepared.render(3).command == ("serve", "--json", "{shot}")


def test_the_same_placeholders_are_fine_in_per_task_mode():
    raw = warm({"command": ["python", "serve.py", "{shot}"]})
    raw["worker"] = {"mode": "PerTask"}
    assert prepare_batch(raw).render(3).command == ("python", "serve.py", "3")
