"""Dispatch order: index order, or longest processing time first by a cost parameter.

Why longest first: with a dynamic queue, the batch ends when the last task ends. If the longest
tasks start last, one GPU grinds through them while the others sit idle; starting them first
(LPT scheduling, what user C measured) keeps every GPU busy until near the end.

The order is a compact array of task indexes (8 bytes per task), computed once per spec; the
operator walks it and skips indexes already finished.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

from gpubatch.api.spec import Order
from gpubatch.core.errors import SpecError, TaskSpecError
from gpubatch.core.expand import TaskList


def check_order(order: Order, tasks: TaskList) -> None:
    """SpecError unless costParam (when needed) is a parameter the tasks have."""
    if order.by != "longestFirst":
        return
    if order.cost_param not in tasks.param_names:
        raise SpecError(
            f"costParam {order.cost_param!r} is not a parameter of the tasks; the parameters "
            f"are {', '.join(tasks.param_names) or 'none'}",
            field="spec.order.costParam",
        )
    if order.cost_param in tasks.path_params and tasks.file_size(0, order.cost_param) is None:
        raise SpecError(
            f"costParam {order.cost_param!r} is a file parameter, but the storage did not "
            "report file sizes; use a numeric parameter (items or a manifest column) instead",
            field="spec.order.costParam",
        )


def dispatch_order(order: Order, tasks: TaskList) -> Sequence[int]:
    """Task indexes in dispatch order; ties keep index order, so the order is deterministic."""
    check_order(order, tasks)
    if order.by == "index" or order.cost_param is None:
        return range(len(tasks))
    costs = [task_cost(tasks, index, order.cost_param) for index in range(len(tasks))]
    ranked = sorted(range(len(tasks)), key=lambda index: (-costs[index], index))
    return array("q", ranked)


def task_cost(tasks: TaskList, index: int, param: str) -> float:
    """The cost of one task: a number, a numeric string, or a file's size in bytes."""
    if param in tasks.path_params:
        size = tasks.file_size(index, param)
        return float(size) if size is not None else 0.0
    value = tasks.task(index).params[param]
    cost: float | None = None
    if not isinstance(value, bool):
        try:
            cost = float(value)
        except ValueError:
            cost = None
    if cost is None or not math.isfinite(cost):
        raise TaskSpecError(
            f"costParam {param!r} is {value!r}, not a finite number",
            index=index,
            field="spec.order.costParam",
        )
    return cost
