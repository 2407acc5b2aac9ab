"""gpubatch.core: the pure core (no kopf, no Kubernetes client, no file or network I/O).

Modules, one concept each. The batch API (what a spec means):
- `errors`: SpecError / TaskSpecError, user-facing messages that say what to change
- `indexset`: compressed index sets ("0-99,150") for the status
- `expand`: task sources -> deterministic, random-access task lists (I/O injected)
- `template`: the placeholder grammar ({name}, {name.stem}, {index}, {outputs[N]})
- `taskrender`: per-task outputs, command, args and env values
- `order`: dispatch order (index, or longest first)
- `histogram`, `gpustats`: bounded per-GPU-model run-time statistics
- `prepare`: raw spec -> PreparedBatch, everything above in one call
- `outputscan`: which tasks are done (outputs exist), with the existence check passed in

Planning (what the operator does about it): `planner`, `podview`, `outcome`, `conditions`,
`podspec`; and `partial` for the worker. Each module's docstring says why it exists.

Importing this package imports nothing else; import the module you need.
"""
