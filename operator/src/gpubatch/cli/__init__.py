"""gpubatch.cli: the `gpubatch` command (validate, expand, run locally; submit, status, watch,
report on a cluster). The outermost layer: it may import every other part of gpubatch except the
operator and the worker (which it starts as a process), and nothing imports it."""
