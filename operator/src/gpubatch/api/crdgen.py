"""The GPUBatch CRD, generated from the pydantic models: one schema source.

`python -m gpubatch.api.crdgen > crds/gpubatches.gpubatch.io.yaml` (or `make crd`) writes it;
a unit test checks that the committed file is exactly what this prints.

Everything a field says lives on the model: its type, bounds, default and description, and in
`json_schema_extra` what only the API server reads (CEL rules as `x-kubernetes-validations`,
whose messages are the `MSG_*` constants the Python validators raise, list types, descriptions
of list items and map values). This module only translates, with the rules of structural
schemas:

- `int` is `integer`/`int64`, `float` is `number`, `datetime` a `date-time` string, a
  `Literal` an enum, a string-or-integer union `x-kubernetes-int-or-string`;
- a field without a default is required; `X | None` is an optional X (no null in the CRD);
- a model that keeps unknown fields (a Pod spec passed through) preserves them;
- a spec field whose default is a model carries that model's values as its default, so the
  API server fills them in and every reader sees what will run; the status is written whole by
  the operator, so only its scalar defaults are declared.

Names, printer columns and the top-level object are Kubernetes' concern, not the models', so
they are written here.
"""

from __future__ import annotations

import datetime
import sys
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gpubatch.api.names import GROUP, KIND, PLURAL, SHORT_NAME, VERSION
from gpubatch.api.spec import GPUBatchSpec
from gpubatch.api.status import GPUBatchStatus

Schema = dict[str, Any]

HEADER = """\
# The GPUBatch CustomResourceDefinition: the canonical copy (the Helm chart's must equal it).
#
# GENERATED from the pydantic models in operator/src/gpubatch/api/ by
# `python -m gpubatch.api.crdgen` (make crd); do not edit by hand. A unit test checks that this
# file is what the generator prints; tests/integration/test_crd_on_apiserver.py proves it on a
# real API server. docs/api.md explains the fields and the design choices.
"""

#: `kubectl get gpub` columns: name, type, description, JSONPath (priority 1: only with -o wide).
_COLUMNS = (
    ("Total", "integer", "Tasks in the batch.", ".status.counts.total"),
    ("Succeeded", "integer", "Tasks that succeeded.", ".status.counts.succeeded"),
    ("Failed", "integer", "Tasks that failed after their retries.", ".status.counts.failed"),
    (
        "Skipped",
        "integer",
        "Tasks skipped because their outputs existed.",
        ".status.counts.skipped",
    ),
    ("Running", "integer", "Tasks whose pod is running.", ".status.counts.running"),
    ("Pending", "integer", "Tasks not running yet.", ".status.counts.pending"),
    ("Progress", "string", "Finished over total tasks.", ".status.progress"),
    (
        "State",
        "string",
        "Conditions that are True (Progressing, Complete, Failed, Suspended).",
        '.status.conditions[?(@.status=="True")].type',
    ),
)
_WIDE_ONLY = frozenset({"Pending"})


def printer_columns() -> list[Schema]:
    columns: list[Schema] = []
    for name, type_, description, path in _COLUMNS:
        column: Schema = {"name": name, "type": type_}
        if name in _WIDE_ONLY:
            column["priority"] = 1
        columns.append({**column, "description": description, "jsonPath": path})
    return [*columns, {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]


#: The order keys are written in, so the YAML reads top-down: what, bounds, rules, children.
KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
    "properties",
    "items",
    "additionalProperties",
)


def crd() -> Schema:
    """The whole CustomResourceDefinition."""
    schema: Schema = {
        "description": "A GPUBatch runs a batch of independent GPU tasks, one pod per task.",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"description": f"APIVersion: {GROUP}/{VERSION}.", "type": "string"},
            "kind": {"description": f"Kind: {KIND}.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": {"description": "What to run.", **model_schema(GPUBatchSpec, spec=True)},
            "status": {
                "description": "What has happened so far.",
                **model_schema(GPUBatchStatus, spec=False),
            },
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(),
                    "schema": {"openAPIV3Schema": _ordered(schema)},
                }
            ],
        },
    }


def model_schema(model: type[BaseModel], *, spec: bool) -> Schema:
    """An object schema of a model's fields (by their wire names) and its own CEL rules."""
    properties: Schema = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        wire = field.alias or name
        properties[wire] = field_schema(field, spec=spec)
        if field.is_required():
            required.append(wire)
    node: Schema = {"type": "object"}
    if required:
        node["required"] = required
    if model.model_config.get("extra") == "allow":
        node["x-kubernetes-preserve-unknown-fields"] = True
    extra = model.model_config.get("json_schema_extra")
    if isinstance(extra, dict):
        node.update(extra)
    node["properties"] = properties
    return node


def field_schema(field: FieldInfo, *, spec: bool) -> Schema:
    """One property: its type's schema, then the field's own bounds, default and description."""
    node = type_schema(field.annotation, spec=spec)
    _apply(node, field, spec=spec)
    default = _default(field, spec=spec)
    if default is not None:
        node["default"] = default
    return node


def type_schema(annotation: Any, *, spec: bool) -> Schema:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        node = type_schema(args[0], spec=spec)
        for meta in args[1:]:
            _apply(node, meta, spec=spec)
        return node
    if origin in (Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        if {_plain(a) for a in present} == {str, int}:
            return {"x-kubernetes-int-or-string": True}
        (only,) = present
        return type_schema(only, spec=spec)
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if origin is list:
        return {"type": "array", "items": type_schema(args[0], spec=spec)}
    if origin is dict:
        value = args[1]
        return (
            {"type": "object"}
            if value is Any
            else {"type": "object", "additionalProperties": type_schema(value, spec=spec)}
        )
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_schema(annotation, spec=spec)
    return _scalar(annotation)


def _scalar(annotation: Any) -> Schema:
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer", "format": "int64"}
    if annotation is float:
        return {"type": "number"}
    if annotation is str:
        return {"type": "string"}
    if annotation is datetime.datetime:
        return {"type": "string", "format": "date-time"}
    raise TypeError(f"no CRD schema for {annotation!r}: add it to gpubatch.api.crdgen")


def _plain(annotation: Any) -> Any:
    """The base type of Annotated[...] (StrictStr is Annotated[str, Strict()])."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _apply(node: Schema, meta: Any, *, spec: bool) -> None:
    """Bounds, description and extra schema of a Field or annotated_types constraint."""
    if isinstance(meta, FieldInfo):
        for inner in meta.metadata:
            _apply(node, inner, spec=spec)
        if meta.description:
            node["description"] = meta.description
        if isinstance(meta.json_schema_extra, dict):
            node.update(meta.json_schema_extra)
        return
    lengths = _LENGTH_KEYS.get(str(node.get("type")))
    if isinstance(meta, annotated_types.MinLen) and lengths:
        node[lengths[0]] = meta.min_length
    elif isinstance(meta, annotated_types.MaxLen) and lengths:
        node[lengths[1]] = meta.max_length
    elif isinstance(meta, annotated_types.Ge):
        node["minimum"] = meta.ge
    elif isinstance(meta, annotated_types.Le):
        node["maximum"] = meta.le


_LENGTH_KEYS = {
    "string": ("minLength", "maxLength"),
    "array": ("minItems", "maxItems"),
    "object": ("minProperties", "maxProperties"),
}


def _default(field: FieldInfo, *, spec: bool) -> Any:
    if field.default_factory is not None:
        made = field.default_factory()  # type: ignore[call-arg]
        if spec and isinstance(made, BaseModel):
            return made.model_dump(mode="json", by_alias=True, exclude_none=True)
        return None
    if field.default is PydanticUndefined or field.default is None:
        return None
    return field.default


def _ordered(node: Any) -> Any:
    """The same schema with each node's keys in KEY_ORDER (properties keep field order)."""
    if isinstance(node, list):
        return [_ordered(v) for v in node]
    if not isinstance(node, dict):
        return node
    known = [k for k in KEY_ORDER if k in node]
    rest = [k for k in node if k not in KEY_ORDER]
    children = ("properties",)
    return {
        k: (
            {name: _ordered(v) for name, v in node[k].items()}
            if k in children
            else _ordered(node[k])
        )
        for k in [*known, *rest]
    }


class _Dumper(yaml.SafeDumper):
    """Block style, long lines folded as kubectl would, keys in the order given."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def render() -> str:
    body = yaml.dump(crd(), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["crd", "field_schema", "model_schema", "render", "type_schema"]
