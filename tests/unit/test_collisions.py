"""Two tasks rendering the same output path are refused when the batch is prepared."""

from __future__ import annotations

import pytest
from tests.support.builders import a_raw_spec

from gpubatch.core.errors import SpecError
from gpubatch.core.prepare import prepare_batch


def matrix_spec(output: str) -> dict[str, object]:
    raw = a_raw_spec(outputs=[output])
    raw["tasks"] = {"matrix": {"shot": {"range": {"stop": 3}}, "scale": {"values": ["1x", "2x"]}}}
    raw["template"]["spec"]["containers"][0]["command"] = ["run", "{shot}", "{scale}"]
    return raw


def test_outputs_missing_a_matrix_axis_are_refused_naming_two_tasks_and_the_path():
    with pytest.raises(SpecError) as caught:
        prepare_batch(matrix_spec("/out/{shot}.npy"))
    message = str(caught.value)
    assert "tasks 0 and 3 both write output '/out/0.npy'" in message  # shot varies fastest
    assert "make every output path unique per task" in message
    assert caught.value.field == "spec.outputs"


def test_outputs_that_name_every_axis_are_accepted():
    prepared = prepare_batch(matrix_spec("/out/{shot}-{scale}.npy"))
    assert len(prepared.tasks) == 6


def test_paths_that_differ_only_in_spelling_collide_after_normalising():
    raw = a_raw_spec(outputs=["/out/{shot}.npy"])
    raw["tasks"] = {"items": [{"shot": "a"}, {"shot": "./a"}]}
    with pytest.raises(SpecError) as caught:
        prepare_batch(raw)
    assert "tasks 0 and 1 both write output '/out/a.npy'" in str(caught.value)


def test_a_task_whose_output_cannot_render_is_left_to_fail_alone():
    raw = a_raw_spec(outputs=["/out/{shot}.npy"], outputRoot="/out")
    raw["tasks"] = {"items": [{"shot": "a"}, {"shot": "/etc/x"}, {"shot": "b"}]}
    prepared = prepare_batch(raw)
    assert len(prepared.tasks) == 3
