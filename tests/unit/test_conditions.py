"""Conditions: one entry per type, lastTransitionTime moves only when the status value changes."""

from __future__ import annotations

import pytest

from gpubatch.api.status import CONDITION_MESSAGE_LIMIT, Condition, GPUBatchStatus
from gpubatch.core.conditions import condition_is, set_condition
from support.builders import NOW, ago, later

pytestmark = pytest.mark.unit


def with_condition(
    type_: str, value: str, reason: str = "Before", **changes: object
) -> GPUBatchStatus:
    fields: dict[str, object] = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": "before",
        "last_transition_time": ago(3600),
        "observed_generation": 1,
    }
    fields.update(changes)
    return GPUBatchStatus(conditions=[Condition.model_validate(fields)])


def test_a_new_true_condition_is_added_now_and_reported_as_a_change():
    status = GPUBatchStatus()
    assert set_condition(status, "Complete", "True", "AllTasksFinished", "done", NOW, 3)
    [condition] = status.conditions
    assert (condition.type, condition.status, condition.reason, condition.message) == (
        "Complete",
        "True",
        "AllTasksFinished",
        "done",
    )
    assert condition.last_transition_time == NOW
    assert condition.observed_generation == 3


def test_a_new_false_condition_is_added_but_is_not_news():
    status = GPUBatchStatus()
    assert not set_condition(status, "Failed", "False", "Dispatching", "", NOW, 1)
    assert status.conditions[0].last_transition_time == NOW


def test_the_same_status_keeps_its_transition_time_while_reason_and_message_update():
    status = with_condition("Progressing", "True", reason="Dispatching")
    changed = set_condition(status, "Progressing", "True", "Dispatching", "5/10 done", later(9), 2)
    assert not changed
    [condition] = status.conditions
    assert condition.last_transition_time == ago(3600)
    assert condition.message == "5/10 done"
    assert condition.observed_generation == 2


def test_a_new_reason_alone_is_not_a_transition():
    status = with_condition("Progressing", "False", reason="Suspended")
    assert not set_condition(status, "Progressing", "False", "AllTasksFinished", "", NOW, 1)
    assert status.conditions[0].reason == "AllTasksFinished"
    assert status.conditions[0].last_transition_time == ago(3600)


@pytest.mark.parametrize(("before", "after"), [("False", "True"), ("True", "False")])
def test_a_status_change_moves_the_transition_time_and_is_reported(before, after):
    status = with_condition("Suspended", before)
    assert set_condition(status, "Suspended", after, "Resumed", "", NOW, 4)
    [condition] = status.conditions
    assert condition.status == after
    assert condition.last_transition_time == NOW


def test_each_type_has_one_entry_and_others_are_untouched():
    status = with_condition("Failed", "False", reason="Dispatching")
    set_condition(status, "Complete", "False", "Dispatching", "", NOW, 1)
    set_condition(status, "Complete", "True", "AllTasksFinished", "", later(5), 1)
    set_condition(status, "Failed", "False", "Dispatching", "", later(5), 1)
    assert [c.type for c in status.conditions] == ["Failed", "Complete"]
    assert status.conditions[0].last_transition_time == ago(3600)
    assert status.conditions[1].last_transition_time == later(5)


def test_long_messages_are_cut_and_an_empty_reason_becomes_unknown():
    status = GPUBatchStatus()
    set_condition(status, "Failed", "True", "", "x" * (CONDITION_MESSAGE_LIMIT + 50), NOW, 1)
    [condition] = status.conditions
    assert condition.reason == "Unknown"
    assert len(condition.message) == CONDITION_MESSAGE_LIMIT


def test_condition_is_reads_one_type_and_value():
    status = with_condition("Complete", "True")
    assert condition_is(status, "Complete")
    assert not condition_is(status, "Complete", "False")
    assert condition_is(status, "Complete", "True")
    assert not condition_is(status, "Failed")
