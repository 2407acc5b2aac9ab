"""gpubatch.local: the local executor (`gpubatch run`), beside `gpubatch.controller`.

The operator and the local runner are two executors of the same pure core: both prepare the
batch (`core.prepare`), scan its outputs (`core.outputscan`), let `core.planner.plan` decide
every pass, and start each attempt from `core.invocation`. The controller carries the decisions
out through the Kubernetes API; this package carries them out on this machine:

- `runner`: the pass loop, one task per slot, signals, the state lock;
- `slots`: which GPUs (or CPU slots) tasks run on, and how each is pinned;
- `journal`: what a run leaves on disk (status, attempt records, logs).

It imports nothing from `gpubatch.cli` (an import-linter contract says so): the CLI is a thin
front that shows progress through the `Reporter` callbacks and turns `LocalError` into an exit
code.
"""
