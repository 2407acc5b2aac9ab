"""A corpus of invalid or hostile GPUBatch specs, and what must happen to each (issue 7, chaos).

Every case is a merge patch (RFC 7386: maps merge, `None` deletes a key, lists are replaced) of
one valid base spec, so each case differs from a runnable batch by exactly the hostile part, and
its expectation is one of:

- `refused`: `kubectl apply` fails (schema or CEL in the CRD) and stderr contains `message`;
- `failed`: the object is accepted, then the operator sets condition `Failed` with `reason`
  and a message containing `message`, before any pod exists.

Either way no task pod is ever created. `tests/integration/test_hostile_specs.py` proves it on
the test bed; `docs/hostile-specs.md` is generated from this module (`markdown()`), and
`tests/unit/test_hostile_specs_doc.py` keeps the two equal. Regenerate the doc with:

    cd tests && ../.venv/bin/python -m integration.hostile_specs

Two families of hostile input are valid specs and so are not `Case`s: shell metacharacters in
parameter values (`SHELL_PAYLOADS`: the batch runs, every value stays one literal argv element)
and a manifest row whose value makes its output escape `outputRoot` (`ESCAPING_ROWS`: that
task alone fails with reason InvalidTask, the others run).

Files a case needs (manifests, globbed folders) are written under a temporary folder that the
operator, running on the same machine, can read; `@TMP@` in the patch stands for that folder.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from support.batches import batch

TMP: Final = "@TMP@"
REFUSED: Final = "refused"
FAILED: Final = "failed"
Expectation = Literal["refused", "failed"]

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "hostile-specs.md"

# The base: valid and runnable. Three tasks (a range over `shot`), one output per task, a command
# using both. parallelism and maxPending bound the damage should a case wrongly get dispatched.
_BASE: Final = batch(
    "base",
    tasks={"range": {"param": "shot", "start": 0, "stop": 3}},
    command=["python", "task.py", "--shot", "{shot}", "--out", "{outputs[0]}"],
    outputs=["/data/out/shot-{shot}.npy"],
    parallelism=2,
    maxPending=1,
)
BASE_SPEC: Final[dict[str, Any]] = _BASE["spec"]
BASE_CONTAINER: Final[dict[str, Any]] = BASE_SPEC["template"]["spec"]["containers"][0]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge recursively, None deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _substitute(value: Any, tmp: str) -> Any:
    if isinstance(value, str):
        return value.replace(TMP, tmp)
    if isinstance(value, list):
        return [_substitute(v, tmp) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, tmp) for k, v in value.items()}
    return value


@dataclass(frozen=True, eq=False)
class Case:
    """One hostile spec: a patch of the base spec and what must happen to it."""

    id: str  # also the GPUBatch's name
    what: str  # what is wrong or hostile, for people
    patch: dict[str, Any]  # merge patch of BASE_SPEC
    expect: Expectation
    message: str  # substring of kubectl's stderr (refused) or of the Failed condition (failed)
    reason: str | None = None  # the Failed condition's reason (failed only)
    files: Mapping[str, str] = field(default_factory=dict)  # relative path -> text, under @TMP@

    def spec(self, tmp: Path | None = None) -> dict[str, Any]:
        """The patched spec, `@TMP@` replaced by `tmp` (which must be given if it is used)."""
        spec = merge_patch(BASE_SPEC, self.patch)
        if tmp is None:
            assert TMP not in json.dumps(spec), f"{self.id} needs a temporary folder"
            return spec
        return _substitute(spec, str(tmp))

    def body(self, tmp: Path | None = None) -> dict[str, Any]:
        """The whole GPUBatch, named after the case; writes the case's files under `tmp`."""
        if tmp is not None:
            for relative, text in self.files.items():
                path = tmp / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        return {
            "apiVersion": _BASE["apiVersion"],
            "kind": _BASE["kind"],
            "metadata": {"name": self.id},
            "spec": self.spec(tmp),
        }


def refused(id: str, what: str, patch: dict[str, Any], message: str) -> Case:
    return Case(id=id, what=what, patch=patch, expect=REFUSED, message=message)


def failed(
    id: str,
    what: str,
    patch: dict[str, Any],
    message: str,
    *,
    reason: str = "InvalidSpec",
    files: Mapping[str, str] | None = None,
) -> Case:
    return Case(
        id=id,
        what=what,
        patch=patch,
        expect=FAILED,
        message=message,
        reason=reason,
        files=dict(files or {}),
    )


def container(**fields: Any) -> dict[str, Any]:
    """The base task container with `fields` merged in (None deletes a field)."""
    return merge_patch(BASE_CONTAINER, fields)


def containers(*extra: dict[str, Any], **task_fields: Any) -> dict[str, Any]:
    """A `template` patch whose containers are the (patched) task container plus `extra`."""
    return {"template": {"spec": {"containers": [container(**task_fields), *extra]}}}


def command(*argv: str) -> dict[str, Any]:
    """A `template` patch replacing the task container's command."""
    return containers(command=list(argv))


def _bound(field_path: str, relation: str) -> str:
    """The API server's message for an OpenAPI minimum/maximum, naming the field."""
    return f"{field_path} in body should be {relation}"


_SIDECAR: Final = {"name": "sidecar", "image": "registry.example.com/sidecar:1"}
_NO_RANGE: Final = {"range": None}  # merged into `tasks` to replace the base's task source

# ---------------------------------------------------------------------------------- the corpus
CASES: Final[tuple[Case, ...]] = (
    # --- task sources --------------------------------------------------------------------------
    refused(
        "two-task-sources",
        "tasks sets both range and items",
        {"tasks": {"items": [{"shot": 1}]}},
        "set exactly one task source",
    ),
    refused(
        "no-task-source",
        "tasks is empty",
        {"tasks": _NO_RANGE},
        "set exactly one task source",
    ),
    refused(
        "range-zero-step",
        "range step 0 (an endless range)",
        {"tasks": {"range": {"step": 0}}},
        "step must not be 0",
    ),
    refused(
        "range-empty",
        "range start 5, stop 5",
        {"tasks": {"range": {"start": 5, "stop": 5}}},
        "the range is empty",
    ),
    refused(
        "range-negative-step-upwards",
        "range 0 to 3 by -1",
        {"tasks": {"range": {"step": -1}}},
        "the range is empty",
    ),
    refused(
        "matrix-axis-zero-step",
        "a matrix axis range with step 0",
        {"tasks": {**_NO_RANGE, "matrix": {"shot": {"range": {"stop": 3, "step": 0}}}}},
        "step must not be 0",
    ),
    refused(
        "matrix-axis-two-kinds",
        "a matrix axis with both values and files",
        {"tasks": {**_NO_RANGE, "matrix": {"shot": {"values": [1], "files": "/data/*.npy"}}}},
        "each matrix axis sets exactly one of values, range or files",
    ),
    refused(
        "items-over-limit",
        "10,001 inline items (limit 10,000)",
        {"tasks": {**_NO_RANGE, "items": [{"shot": i} for i in range(10_001)]}},
        "must have at most 10000 items",
    ),
    refused(
        "matrix-values-over-limit",
        "a matrix axis of 10,001 values (limit 10,000)",
        {"tasks": {**_NO_RANGE, "matrix": {"shot": {"values": list(range(10_001))}}}},
        "must have at most 10000 items",
    ),
    refused(
        "matrix-too-many-axes",
        "9 matrix axes (limit 8)",
        {
            "tasks": {
                **_NO_RANGE,
                "matrix": {"shot": {"values": [1]}}
                | {f"axis{i}": {"values": [1]} for i in range(8)},
            }
        },
        "must have at most 8 items",
    ),
    refused(
        "item-too-many-params",
        "an item with 33 parameters (limit 32)",
        {"tasks": {**_NO_RANGE, "items": [{"shot": 1} | {f"p{i}": i for i in range(32)}]}},
        "must have at most 32 items",
    ),
    refused(
        "items-different-keys",
        "the second item sets other parameters than the first",
        {"tasks": {**_NO_RANGE, "items": [{"shot": 1}, {"shot": 2, "extra": 3}]}},
        "every item must set the same parameter names as the first item",
    ),
    refused(
        "param-name-shell-metacharacters",
        'an item key "shot;rm -rf /"',
        {"tasks": {**_NO_RANGE, "items": [{"shot": 1, "shot;rm -rf /": 2}]}},
        "parameter names must be identifiers",
    ),
    refused(
        "param-name-reserved",
        "range param named index (shadows {index})",
        {"tasks": {"range": {"param": "index"}}},
        "must not be index or outputs",
    ),
    refused(
        "inline-value-float",
        "an unquoted float value (the API server would rewrite it)",
        {"tasks": {**_NO_RANGE, "items": [{"shot": 0.5}]}},
        "must be of type integer,string",
    ),
    refused(
        "inline-value-list",
        "a list as a parameter value",
        {"tasks": {**_NO_RANGE, "items": [{"shot": ["$(id)", 1]}]}},
        "must be of type integer,string",
    ),
    refused(
        "inline-value-map",
        "a map as a parameter value",
        {"tasks": {**_NO_RANGE, "items": [{"shot": {"$(id)": 1}}]}},
        'unknown field "spec.tasks.items[0].shot.$(id)"',
    ),
    refused(
        "manifest-format-unknown",
        "a manifest path whose extension says no format, and no format",
        {"tasks": {**_NO_RANGE, "manifest": {"path": "/data/tasks.txt"}}},
        "set manifest.format (jsonl or csv)",
    ),
    # --- negative and out-of-range counts ------------------------------------------------------
    refused(
        "negative-parallelism",
        "parallelism -1",
        {"parallelism": -1},
        _bound("spec.parallelism", "greater than or equal to 1"),
    ),
    refused(
        "negative-max-pending",
        "maxPending -5",
        {"maxPending": -5},
        _bound("spec.maxPending", "greater than or equal to 1"),
    ),
    refused(
        "negative-gpus-per-task",
        "gpusPerTask -1",
        {"gpusPerTask": -1},
        _bound("spec.gpusPerTask", "greater than or equal to 1"),
    ),
    refused(
        "gpus-per-task-over-limit",
        "gpusPerTask 65 (limit 64)",
        {"gpusPerTask": 65},
        _bound("spec.gpusPerTask", "less than or equal to 64"),
    ),
    refused(
        "negative-retry-limit",
        "retry.limit -1",
        {"retry": {"limit": -1}},
        _bound("spec.retry.limit", "greater than or equal to 0"),
    ),
    refused(
        "negative-retry-backoff",
        "retry.backoffSeconds -10",
        {"retry": {"backoffSeconds": -10}},
        _bound("spec.retry.backoffSeconds", "greater than or equal to 0"),
    ),
    refused(
        "retry-backoff-order",
        "maxBackoffSeconds below backoffSeconds",
        {"retry": {"backoffSeconds": 60, "maxBackoffSeconds": 5}},
        "maxBackoffSeconds must be at least backoffSeconds",
    ),
    refused(
        "exit-code-out-of-range",
        "nonRetriableExitCodes [0]",
        {"retry": {"nonRetriableExitCodes": [0]}},
        _bound("spec.retry.nonRetriableExitCodes[0]", "greater than or equal to 1"),
    ),
    refused(
        "negative-task-deadline",
        "taskDeadlineSeconds -1",
        {"taskDeadlineSeconds": -1},
        _bound("spec.taskDeadlineSeconds", "greater than or equal to 1"),
    ),
    refused(
        "negative-active-deadline",
        "activeDeadlineSeconds -60",
        {"activeDeadlineSeconds": -60},
        _bound("spec.activeDeadlineSeconds", "greater than or equal to 1"),
    ),
    refused(
        "negative-max-failed-tasks",
        "maxFailedTasks -1",
        {"maxFailedTasks": -1},
        _bound("spec.maxFailedTasks", "greater than or equal to 0"),
    ),
    refused(
        "negative-ttl",
        "ttlSecondsAfterFinished -1",
        {"ttlSecondsAfterFinished": -1},
        _bound("spec.ttlSecondsAfterFinished", "greater than or equal to 0"),
    ),
    # --- outputs -------------------------------------------------------------------------------
    refused(
        "output-dotdot",
        "an output /data/out/../../etc/{shot}",
        {"outputs": ["/data/out/../../etc/{shot}"]},
        "output paths must not contain '..' segments",
    ),
    refused(
        "output-relative-dotdot",
        "a relative output ../etc/{shot} under outputRoot",
        {"outputRoot": "/data/out", "outputs": ["../etc/{shot}"]},
        "output paths must not contain '..' segments",
    ),
    refused(
        "output-relative-without-root",
        "a relative output and no outputRoot",
        {"outputs": ["out/{shot}.npy"]},
        "set outputRoot to use relative output paths",
    ),
    refused(
        "output-root-dotdot",
        "outputRoot /data/out/../..",
        {"outputRoot": "/data/out/../..", "outputs": ["{shot}.npy"]},
        "outputRoot must be an absolute path (/...) or a URL",
    ),
    refused(
        "output-root-relative",
        "outputRoot data/out",
        {"outputRoot": "data/out", "outputs": ["{shot}.npy"]},
        "outputRoot must be an absolute path (/...) or a URL",
    ),
    refused(
        "outputs-over-limit",
        "17 outputs (limit 16)",
        {"outputs": [f"/data/out/{i}-{{shot}}.npy" for i in range(17)]},
        "must have at most 16 items",
    ),
    failed(
        "colliding-outputs",
        "outputs name one of two matrix axes, so two tasks write each file",
        {
            "tasks": {
                **_NO_RANGE,
                "matrix": {"shot": {"range": {"stop": 3}}, "scale": {"values": ["1x", "2x"]}},
            }
        },
        "tasks 0 and 3 both write output '/data/out/shot-0.npy'",
    ),
    # --- ordering ------------------------------------------------------------------------------
    refused(
        "longest-first-without-cost",
        "order longestFirst and no costParam",
        {"order": {"by": "longestFirst"}},
        "longestFirst needs order.costParam",
    ),
    refused(
        "order-unknown",
        "order.by random",
        {"order": {"by": "random"}},
        'supported values: "index", "longestFirst"',
    ),
    # --- worker --------------------------------------------------------------------------------
    refused(
        "shell-without-wrap",
        "worker.shell true with wrap false (nothing would quote the values)",
        {"worker": {"wrap": False, "shell": True}},
        "shell: true needs wrap: true",
    ),
    refused(
        "atomic-outputs-without-wrap",
        "worker.atomicOutputs true with wrap false",
        {"worker": {"wrap": False, "atomicOutputs": True}},
        "atomicOutputs: true needs wrap: true",
    ),
    refused(
        "warm-without-wrap",
        "worker.mode Warm with wrap false (nothing would feed the program its tasks)",
        {"worker": {"mode": "Warm", "wrap": False}, **command("python", "serve.py")},
        "mode: Warm runs the command under gpubatch-worker",
    ),
    refused(
        "warm-with-shell",
        "worker.mode Warm with shell true (the program starts once, as an argv)",
        {"worker": {"mode": "Warm", "shell": True}, **command("python", "serve.py")},
        "mode: Warm starts the command once, as an argv",
    ),
    refused(
        "load-deadline-without-warm",
        "worker.loadDeadlineSeconds on a per-task batch (it would be ignored)",
        {"worker": {"loadDeadlineSeconds": 60}},
        "loadDeadlineSeconds applies to warm programs only",
    ),
    failed(
        "warm-placeholder-in-command",
        "worker.mode Warm with {shot} in the command (started once for many tasks)",
        {"worker": {"mode": "Warm"}},
        "cannot contain task placeholders such as {image}",
    ),
    failed(
        "warm-placeholder-in-env",
        "worker.mode Warm with {shot} in an env value",
        {
            "worker": {"mode": "Warm"},
            **containers(command=["python", "serve.py"], env=[{"name": "S", "value": "{shot}"}]),
        },
        "cannot contain task placeholders such as {image}",
    ),
    # --- managedBy -----------------------------------------------------------------------------
    refused(
        "managed-by-without-domain",
        'managedBy "multikueue" (no domain prefix)',
        {"managedBy": "multikueue"},
        "managedBy must be a domain-prefixed path of at most 63 characters",
    ),
    # --- GPUs ----------------------------------------------------------------------------------
    refused(
        "gpu-resource-empty",
        'gpuResource ""',
        {"gpuResource": ""},
        "spec.gpuResource in body should be at least 1 chars long",
    ),
    refused(
        "cuda-visible-devices-env",
        "CUDA_VISIBLE_DEVICES in the task container's env",
        containers(env=[{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}]),
        "do not set CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES",
    ),
    refused(
        "nvidia-visible-devices-env-sidecar",
        "NVIDIA_VISIBLE_DEVICES (valueFrom) in a sidecar's env",
        containers(
            {
                **_SIDECAR,
                "env": [
                    {
                        "name": "NVIDIA_VISIBLE_DEVICES",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                    }
                ],
            }
        ),
        "do not set CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES",
    ),
    refused(
        "cuda-visible-devices-init-container",
        "CUDA_VISIBLE_DEVICES in an init container's env",
        {
            "template": {
                "spec": {
                    "initContainers": [
                        {**_SIDECAR, "env": [{"name": "CUDA_VISIBLE_DEVICES", "value": "all"}]}
                    ]
                }
            }
        },
        "do not set CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES",
    ),
    # --- pod template --------------------------------------------------------------------------
    refused(
        "restart-policy-always",
        "template restartPolicy Always (the kubelet would rerun tasks)",
        {"template": {"spec": {"restartPolicy": "Always"}}},
        "restartPolicy must be Never or unset",
    ),
    refused(
        "containers-empty",
        "template.spec.containers []",
        {"template": {"spec": {"containers": []}}},
        "the pod template needs at least one container",
    ),
    refused(
        "containers-missing",
        "template.spec without containers",
        {"template": {"spec": {"containers": None}}},
        "spec.template.spec.containers: Required value",
    ),
    refused(
        "task-container-unknown",
        "taskContainer names no container",
        {"taskContainer": "main"},
        "taskContainer must name a container in template.spec.containers",
    ),
    refused(
        "task-container-is-init-container",
        "taskContainer names an init container",
        {"taskContainer": "sidecar", "template": {"spec": {"initContainers": [_SIDECAR]}}},
        "taskContainer must name a container in template.spec.containers",
    ),
    # ===================================== accepted by the API server, refused by the operator ==
    # --- placeholders --------------------------------------------------------------------------
    failed(
        "placeholder-unknown-name",
        "{shoot} in the command (a typo of {shot})",
        command("python", "task.py", "--shot", "{shoot}"),
        "unknown placeholder {shoot} in '{shoot}' (did you mean {shot}?)",
    ),
    failed(
        "placeholder-unknown-in-env",
        "{secret} in an env value",
        containers(env=[{"name": "SHOT", "value": "{secret}"}]),
        "unknown placeholder {secret}",
    ),
    failed(
        "placeholder-attribute-lookup",
        "{shot.__class__} (str.format would evaluate it)",
        {"outputs": ["/data/out/{shot.__class__}.npy"]},
        "unknown part '__class__'",
    ),
    failed(
        "placeholder-dunder-name",
        "{__import__} as a placeholder",
        command("python", "task.py", "{__import__}"),
        "unknown placeholder {__import__}",
    ),
    failed(
        "placeholder-index-lookup",
        "{shot[0]} (str.format would index the value)",
        command("python", "task.py", "{shot[0]}"),
        "indexing is only allowed as {outputs[N]}",
    ),
    failed(
        "placeholder-output-out-of-range",
        "{outputs[5]} with one output",
        command("python", "task.py", "{outputs[5]}"),
        "spec.outputs has 1 entry (indexes 0 to 0)",
    ),
    failed(
        "placeholder-outputs-in-outputs",
        "an output that refers to {outputs[0]}",
        {"outputs": ["/data/out/{shot}.npy", "/data/out/{outputs[0]}.log"]},
        "an output path cannot refer to the outputs",
    ),
    failed(
        "placeholder-unclosed-brace",
        "an output /data/out/{shot.npy",
        {"outputs": ["/data/out/{shot.npy"]},
        "unclosed '{' at position 10",
    ),
    failed(
        "placeholder-stray-closing-brace",
        "an argument shot}",
        command("python", "task.py", "shot}"),
        "write '}}' for a literal brace",
    ),
    failed(
        "placeholder-format-spec",
        "{shot:>99999999} (a format spec padding to 100 MB)",
        command("python", "task.py", "{shot:>99999999}"),
        "is not a valid placeholder",
    ),
    failed(
        "placeholder-conversion",
        "{shot!r} (a str.format conversion)",
        command("python", "task.py", "{shot!r}"),
        "is not a valid placeholder",
    ),
    failed(
        "placeholder-empty",
        "{} (a positional str.format field)",
        command("python", "task.py", "{}"),
        "{} in '{}' is not a valid placeholder",
    ),
    # --- outputs -------------------------------------------------------------------------------
    failed(
        "output-absolute-outside-root",
        "outputRoot /data/out, output /etc/cron.d/{shot}",
        {"outputRoot": "/data/out", "outputs": ["/etc/cron.d/{shot}"]},
        "output '/etc/cron.d/{shot}' is outside outputRoot '/data/out'",
    ),
    failed(
        "output-sibling-of-root",
        "outputRoot /data/out, output /data/outside/{shot} (a prefix, not a folder)",
        {"outputRoot": "/data/out", "outputs": ["/data/outside/{shot}"]},
        "is outside outputRoot '/data/out'",
    ),
    failed(
        "output-other-bucket",
        "outputRoot s3://results/run1, output s3://other/{shot}",
        {"outputRoot": "s3://results/run1", "outputs": ["s3://other/{shot}.npy"]},
        "is outside outputRoot 's3://results/run1'",
    ),
    failed(
        "output-static-multi-task",
        "one constant output for 3 tasks",
        {"outputs": ["/data/out/result.npy"]},
        "has no placeholders, so all 3 tasks would write the same file",
    ),
    # --- GPU pinning in argv -------------------------------------------------------------------
    failed(
        "gpu-pinning-env-command",
        "command env CUDA_VISIBLE_DEVICES=0 python ...",
        command("env", "CUDA_VISIBLE_DEVICES=0", "python", "task.py", "{shot}"),
        "'CUDA_VISIBLE_DEVICES=0' sets a GPU-pinning variable",
    ),
    failed(
        "gpu-pinning-shell-line",
        "command sh -c 'NVIDIA_VISIBLE_DEVICES=all python ...'",
        command("sh", "-c", "NVIDIA_VISIBLE_DEVICES=all python task.py {shot}"),
        "sets a GPU-pinning variable",
    ),
    failed(
        "gpu-pinning-in-args",
        "args --env=CUDA_VISIBLE_DEVICES=1",
        containers(args=["--env=CUDA_VISIBLE_DEVICES=1"]),
        "sets a GPU-pinning variable",
    ),
    # --- files and manifests -------------------------------------------------------------------
    failed(
        "glob-matches-nothing",
        "files glob *.png over a folder of .jpg",
        {"tasks": {**_NO_RANGE, "files": {"glob": f"{TMP}/images/*.png", "param": "shot"}}},
        "matched no files as the operator sees them",
        files={"images/a.jpg": "jpg"},
    ),
    failed(
        "manifest-missing",
        "a manifest that does not exist",
        {"tasks": {**_NO_RANGE, "manifest": {"path": f"{TMP}/missing.jsonl"}}},
        "missing.jsonl does not exist",
    ),
    failed(
        "manifest-not-json",
        "a JSONL manifest whose line 2 is cut off",
        {"tasks": {**_NO_RANGE, "manifest": {"path": f"{TMP}/cut.jsonl"}}},
        "cut.jsonl line 2 is not valid JSON",
        files={"cut.jsonl": '{"shot": 1}\n{"shot": \n'},
    ),
    failed(
        "manifest-line-not-object",
        "a JSONL line that is a list",
        {"tasks": {**_NO_RANGE, "manifest": {"path": f"{TMP}/list.jsonl"}}},
        "each line must be a JSON object of parameters, got list",
        files={"list.jsonl": '{"shot": 1}\n[2, 3]\n'},
    ),
    failed(
        "manifest-inconsistent-keys",
        "JSONL lines with different keys",
        {"tasks": {**_NO_RANGE, "manifest": {"path": f"{TMP}/keys.jsonl"}}},
        "line 2 has parameters ['extra', 'shot'], but the first line has ['shot']",
        files={"keys.jsonl": '{"shot": 1}\n{"shot": 2, "extra": 3}\n'},
    ),
    failed(
        "manifest-nested-value",
        "a JSONL value that is an object",
        {"tasks": {**_NO_RANGE, "manifest": {"path": f"{TMP}/nested.jsonl"}}},
        "parameter values must be strings, numbers or booleans",
        files={"nested.jsonl": '{"shot": {"$(id)": 1}}\n'},
    ),
    failed(
        "manifest-csv-ragged",
        "a CSV row with fewer fields than the header",
        {"tasks": {**_NO_RANGE, "manifest": {"path": f"{TMP}/ragged.csv"}}},
        "ragged.csv line 3 has 1 fields, but the header has 2",
        files={"ragged.csv": "shot,cost\n1,10\n2\n"},
    ),
    failed(
        "manifest-csv-bad-param-name",
        'a CSV header column "a;b"',
        {"tasks": {**_NO_RANGE, "manifest": {"path": f"{TMP}/header.csv"}}},
        "'a;b' cannot be a parameter name",
        files={"header.csv": "shot,a;b\n1,2\n"},
    ),
    failed(
        "manifest-reserved-param-name",
        "a JSONL key index (shadows {index})",
        {"tasks": {**_NO_RANGE, "manifest": {"path": f"{TMP}/reserved.jsonl"}}},
        "'index' cannot be a parameter name",
        files={"reserved.jsonl": '{"shot": 1, "index": 7}\n'},
    ),
    failed(
        "manifest-empty",
        "a manifest with only blank lines",
        {"tasks": {**_NO_RANGE, "manifest": {"path": f"{TMP}/empty.jsonl"}}},
        "empty.jsonl lists no tasks",
        files={"empty.jsonl": "\n\n"},
    ),
    # --- ordering ------------------------------------------------------------------------------
    failed(
        "cost-param-not-a-parameter",
        "longestFirst by costParam seconds, which no task has",
        {"order": {"by": "longestFirst", "costParam": "seconds"}},
        "costParam 'seconds' is not a parameter of the tasks",
    ),
    failed(
        "cost-param-not-a-number",
        'longestFirst by a costParam whose value is "lots"',
        {
            "tasks": {
                **_NO_RANGE,
                "items": [{"shot": 1, "cost": "3"}, {"shot": 2, "cost": "lots"}],
            },
            "order": {"by": "longestFirst", "costParam": "cost"},
        },
        "costParam 'cost' is 'lots', not a finite number",
    ),
    # --- size ----------------------------------------------------------------------------------
    refused(
        "too-many-tasks-range",
        "a range of 10^15 tasks (limit 10^7)",
        {"tasks": {"range": {"stop": 10**15}}},
        "the range yields more than 10000000 tasks, the most one batch may have",
    ),
    refused(
        "too-many-tasks-matrix",
        "3 matrix axes of 300 values: 27 million tasks",
        {
            "tasks": {
                **_NO_RANGE,
                "matrix": {
                    "shot": {"values": list(range(300))},
                    "b": {"values": list(range(300))},
                    "c": {"values": list(range(300))},
                },
            }
        },
        "the matrix's values and range axes multiply to more than 10000000 tasks",
    ),
    refused(
        "too-many-tasks-matrix-range-axes",
        "2 matrix range axes of 10^4 and 10^4 plus a values axis of 2: 2*10^8 tasks",
        {
            "tasks": {
                **_NO_RANGE,
                "matrix": {
                    "shot": {"range": {"stop": 10**4}},
                    "b": {"range": {"start": 10**4, "stop": 0, "step": -1}},
                    "c": {"values": ["p", "q"]},
                },
            }
        },
        "the matrix's values and range axes multiply to more than 10000000 tasks",
    ),
    refused(
        "wrapped-task-container-without-command",
        "worker.wrap (the default) and a task container without command",
        containers(command=None),
        "so the task container must set command",
    ),
)
CASES_BY_ID: Final = {case.id: case for case in CASES}
REFUSED_CASES: Final = tuple(c for c in CASES if c.expect == REFUSED)
FAILED_CASES: Final = tuple(c for c in CASES if c.expect == FAILED)

# ------------------------------------------------------------- valid specs with hostile values
#: Parameter values full of shell metacharacters. In a valid batch each must reach the pod as
#: one literal argv element (no shell), and with worker.shell each must be shell-quoted.
SHELL_PAYLOADS: Final[tuple[str, ...]] = (
    "; rm -rf / #",
    "$(touch /tmp/gpubatch-pwned)",
    "`touch /tmp/gpubatch-pwned`",
    "a && touch /tmp/gpubatch-pwned",
    "a || touch /tmp/gpubatch-pwned",
    "| cat /etc/passwd",
    "> /etc/passwd",
    "line1\ntouch /tmp/gpubatch-pwned",
    "'single' \"double\" \\backslash",
    "$HOME ${PATH} * ?",
    "\ttab and  two spaces ",
    "-rf",
    "{index}{shot}",
    "",
)
#: The file a payload would create if anything ran it through a shell.
PWNED_MARKER: Final = "/tmp/gpubatch-pwned"


@dataclass(frozen=True)
class EscapingRow:
    """One manifest row of the per-task escape test: its `name` and the expected outcome."""

    name: str
    fails: bool
    message: str = ""  # substring of the task's recentFailures message when it fails


#: Manifest rows for `{name}.npy` under outputRoot: the escaping ones fail (reason InvalidTask)
#: and only they; the others run.
ESCAPING_ROWS: Final[tuple[EscapingRow, ...]] = (
    EscapingRow("a", fails=False),
    EscapingRow("../../etc/cron.d/evil", fails=True, message="contains a '..' segment"),
    EscapingRow("sub/b", fails=False),
    EscapingRow("/etc/passwd", fails=True, message="is outside outputRoot"),
    EscapingRow("sub/../../../escaped", fails=True, message="contains a '..' segment"),
    EscapingRow("c", fails=False),
)


# --------------------------------------------------------------------------------------- doc
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "\\n").replace("\t", "\\t")


def _code(text: str) -> str:
    """Inline code that survives any backticks and pipes in `text`."""
    body = _cell(text)
    fence = "``" if "`" in body else "`"
    pad = " " if body.startswith("`") or body.endswith("`") or not body else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def markdown() -> str:
    """docs/hostile-specs.md, generated from this module."""
    lines = [
        "# Hostile specs",
        "",
        "<!-- Generated from tests/integration/hostile_specs.py; do not edit. Regenerate with",
        "     `cd tests && ../.venv/bin/python -m integration.hostile_specs`. -->",
        "",
        "Invalid or hostile GPUBatch specs and what happens to each, proven on the test bed by",
        "`tests/integration/test_hostile_specs.py`. Each case is the same valid three-task batch",
        "with one thing changed. **refused**: `kubectl apply` fails and its message contains the",
        "text shown. **Failed**: the object is stored, then the operator sets condition `Failed`",
        "with the reason and a message containing the text, before any pod exists. In every",
        "case no task pod is ever created.",
        "",
        f"{len(CASES)} cases: {len(REFUSED_CASES)} refused at apply, "
        f"{len(FAILED_CASES)} Failed by the operator.",
        "",
        "| # | id | what is hostile | expectation | message contains |",
        "|---|---|---|---|---|",
    ]
    for number, case in enumerate(CASES, 1):
        expectation = "refused" if case.expect == REFUSED else f"Failed: {case.reason}"
        lines.append(
            f"| {number} | `{case.id}` | {_cell(case.what)} | {expectation} "
            f"| {_code(case.message)} |"
        )
    lines += [
        "",
        "## Valid specs with hostile values",
        "",
        "Shell metacharacters in parameter values: a batch over these values runs, and each",
        "value reaches the task pod's command as one literal argv element (no `/bin/sh -c`",
        "anywhere). With `worker.shell: true` each substituted value is shell-quoted, so",
        "`shlex.split` of the joined command line gives back exactly the literal argv.",
        "",
        "| value (as a JSON string) |",
        "|---|",
        *(f"| {_code(json.dumps(value))} |" for value in SHELL_PAYLOADS),
        "",
        "A manifest row whose value makes its output (`{name}.npy` under `outputRoot`) escape",
        "fails that task alone, with reason `InvalidTask` and no pod; the other rows run.",
        "",
        "| row | name | outcome |",
        "|---|---|---|",
        *(
            f"| {i} | {_code(row.name)} | "
            + (f"Failed: InvalidTask, {_code(row.message)}" if row.fails else "runs")
            + " |"
            for i, row in enumerate(ESCAPING_ROWS)
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    DOC.write_text(markdown())
    print(f"wrote {DOC} ({len(CASES)} cases)")
