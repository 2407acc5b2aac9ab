"""The CRD and the pydantic models describe the same API.

Walks the models' JSON schema (by alias) and the CRD's openAPIV3Schema side by side: every field
in one exists in the other with a compatible type, the same bounds, defaults and required-ness,
and the same description (so `kubectl explain` and the model docs never drift). Also checks the
CRD's names, subresource, printer columns and that its CEL messages are the models' messages.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from gpubatch.api import names
from gpubatch.api.spec import VALIDATION_MESSAGES, GPUBatch, GPUBatchSpec
from gpubatch.api.status import GPUBatchStatus

pytestmark = pytest.mark.unit

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "gpubatches.gpubatch.io.yaml"
# Keywords compared as they are (the same number in both, or absent from both).
BOUNDS = (
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "format",
)
JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object")


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def crd_version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def crd_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd_version(crd)["schema"]["openAPIV3Schema"]


# -------------------------------------------------------------------------------- the walker
class ModelSchema:
    """A pydantic JSON schema with $ref resolution and Optional[...] unwrapping."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.defs = schema.get("$defs", {})
        self.root = schema

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        """Follow $ref and drop the `null` branch of Optional, keeping the field's own keys."""
        while True:
            if "$ref" in node:
                target = self.defs[node["$ref"].rsplit("/", 1)[-1]]
                node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
                continue
            branches = node.get("anyOf")
            if branches and any(b.get("type") == "null" for b in branches):
                rest = [b for b in branches if b.get("type") != "null"]
                outer = {k: v for k, v in node.items() if k != "anyOf"}
                node = {**rest[0], **outer} if len(rest) == 1 else {**outer, "anyOf": rest}
                continue
            return node


def walk(
    model: ModelSchema,
    m: dict[str, Any],
    c: dict[str, Any],
    path: str,
    problems: list[str],
    *,
    field_description: str | None = None,
) -> None:
    """Compare model node `m` with CRD node `c` at `path`, appending every difference."""
    m = model.resolve(m)

    if not c.get("description"):
        problems.append(f"{path}: the CRD has no description")
    # Field descriptions are user documentation and must match; class docstrings explain the
    # code (the "why") and need not appear in the CRD.
    expected_description = field_description
    if expected_description and c.get("description") and expected_description != c["description"]:
        problems.append(
            f"{path}: descriptions differ:\n  model: {expected_description!r}\n"
            f"  crd:   {c['description']!r}"
        )

    # Union of string and integer <-> x-kubernetes-int-or-string.
    branches = m.get("anyOf")
    if branches is not None:
        types = sorted(b.get("type", "?") for b in branches)
        if types == ["integer", "string"] and c.get("x-kubernetes-int-or-string"):
            return
        problems.append(f"{path}: model union {types} has no CRD equivalent ({c})")
        return

    m_type = m.get("type") or ("string" if "enum" in m or "const" in m else None)
    c_type = c.get("type")
    if m_type != c_type:
        problems.append(f"{path}: type differs: model {m_type}, crd {c_type}")
        return
    if m_type not in JSON_TYPES:
        problems.append(f"{path}: unexpected type {m_type}")
        return

    for key in BOUNDS:
        m_value = m.get(key)
        if key == "format" and m_type == "integer":
            continue  # the CRD says int64 for documentation; JSON Schema has no such format
        if m_value != c.get(key):
            problems.append(f"{path}: {key} differs: model {m_value}, crd {c.get(key)}")

    m_enum = m.get("enum") or ([m["const"]] if "const" in m else None)
    if (m_enum is not None or "enum" in c) and sorted(m_enum or []) != sorted(c.get("enum") or []):
        problems.append(f"{path}: enum differs: model {m_enum}, crd {c.get('enum')}")

    if m_type == "array":
        walk(model, m["items"], c.get("items", {}), f"{path}[]", problems)
    elif m_type == "object":
        walk_object(model, m, c, path, problems)


def walk_object(
    model: ModelSchema, m: dict[str, Any], c: dict[str, Any], path: str, problems: list[str]
) -> None:
    open_model = m.get("additionalProperties") is True or (
        "properties" not in m and "additionalProperties" not in m
    )
    if open_model != bool(c.get("x-kubernetes-preserve-unknown-fields")):
        problems.append(
            f"{path}: unknown fields kept by the model: {open_model}; by the CRD: "
            f"{bool(c.get('x-kubernetes-preserve-unknown-fields'))}"
        )
    m_props: dict[str, Any] = m.get("properties", {})
    c_props: dict[str, Any] = c.get("properties", {})
    for name in sorted(set(m_props) - set(c_props)):
        problems.append(f"{path}.{name}: in the model, missing from the CRD")
    for name in sorted(set(c_props) - set(m_props)):
        problems.append(f"{path}.{name}: in the CRD, missing from the model")
    if sorted(m.get("required", [])) != sorted(c.get("required", [])):
        problems.append(
            f"{path}: required differs: model {m.get('required')}, crd {c.get('required')}"
        )
    for name in sorted(set(m_props) & set(c_props)):
        walk(
            model,
            m_props[name],
            c_props[name],
            f"{path}.{name}",
            problems,
            field_description=m_props[name].get("description"),
        )
        check_default(model, m_props[name], c_props[name], f"{path}.{name}", problems)
    values = m.get("additionalProperties")
    if isinstance(values, dict):
        if "additionalProperties" not in c:
            problems.append(f"{path}: the model is a map, the CRD is not")
        else:
            walk(model, values, c["additionalProperties"], f"{path}{{}}", problems)


def check_default(
    model: ModelSchema, m: dict[str, Any], c: dict[str, Any], path: str, problems: list[str]
) -> None:
    """Scalar defaults must be equal; the CRD's object defaults must equal the model's."""
    m_default = m.get("default")
    c_default = c.get("default")
    if m_default in (None, [], {}) and c_default is None:
        return
    if isinstance(c_default, dict) and m_default is None:
        return  # a default_factory model: see test_object_defaults_are_the_model_defaults
    if m_default != c_default:
        problems.append(f"{path}: default differs: model {m_default!r}, crd {c_default!r}")


def compare(crd: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    root = crd_schema(crd)["properties"]
    for name, model_class in (("spec", GPUBatchSpec), ("status", GPUBatchStatus)):
        schema = model_class.model_json_schema(by_alias=True)
        walk(
            ModelSchema(schema),
            schema,
            root[name],
            name,
            problems,
            field_description=GPUBatch.model_fields[name].description,
        )
    return problems


def cel_rules(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.extend(node.get("x-kubernetes-validations", []))
        for value in node.values():
            found.extend(cel_rules(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(cel_rules(value))
    return found


# -------------------------------------------------------------------------------------- tests
def test_every_field_agrees_between_models_and_crd():
    problems = compare(load_crd())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s["spec"]["properties"].pop("parallelism"), "spec.parallelism: in the model"),
        (
            lambda s: s["spec"]["properties"].__setitem__(
                "extra", {"type": "string", "description": "x"}
            ),
            "spec.extra: in the CRD",
        ),
        (
            lambda s: s["spec"]["properties"]["gpusPerTask"].__setitem__("type", "string"),
            "spec.gpusPerTask: type differs",
        ),
        (
            lambda s: s["spec"]["properties"]["retry"]["properties"]["limit"].__setitem__(
                "default", 5
            ),
            "spec.retry.limit: default differs",
        ),
        (
            lambda s: s["spec"]["properties"]["outputs"].__setitem__("maxItems", 99),
            "spec.outputs: maxItems differs",
        ),
        (
            lambda s: s["status"]["properties"]["counts"]["properties"]["total"].pop("description"),
            "status.counts.total: the CRD has no description",
        ),
        (
            lambda s: s["spec"]["properties"]["tasks"]["properties"]["items"]["items"][
                "additionalProperties"
            ].pop("x-kubernetes-int-or-string"),
            "has no CRD equivalent",
        ),
        (
            lambda s: s["spec"]["properties"]["order"]["properties"]["by"].__setitem__(
                "enum", ["index"]
            ),
            "spec.order.by: enum differs",
        ),
    ],
    ids=["missing", "extra", "type", "default", "bound", "description", "int-or-string", "enum"],
)
def test_the_comparison_catches_each_kind_of_drift(mutate, expected):
    crd = copy.deepcopy(load_crd())
    mutate(crd_schema(crd)["properties"])
    assert any(expected in p for p in compare(crd)), compare(crd)


def test_object_defaults_are_the_model_defaults():
    # Nested option objects (order, retry, worker, podCleanup) default to their model's
    # defaults in full, so the stored object shows the effective settings.
    properties = crd_schema(load_crd())["properties"]["spec"]["properties"]
    checked = 0
    for name, info in GPUBatchSpec.model_fields.items():
        if info.default_factory is None or not isinstance(info.annotation, type):
            continue
        if not issubclass(info.annotation, BaseModel):
            continue
        alias = info.alias or name
        expected = info.annotation().model_dump(mode="json", exclude_none=True)
        assert properties[alias].get("default") == expected, alias
        checked += 1
    assert checked == 4


def test_every_cel_message_is_a_model_message_and_every_model_message_has_a_rule():
    messages = {rule["message"] for rule in cel_rules(crd_schema(load_crd()))}
    assert messages == set(VALIDATION_MESSAGES)


def test_every_cel_rule_has_a_message():
    for rule in cel_rules(crd_schema(load_crd())):
        assert rule.get("message"), rule


def test_names_scope_and_status_subresource():
    crd = load_crd()
    assert crd["metadata"]["name"] == names.CRD_NAME
    assert crd["spec"]["group"] == names.GROUP
    assert crd["spec"]["names"]["kind"] == names.KIND
    assert crd["spec"]["names"]["plural"] == names.PLURAL
    assert crd["spec"]["names"]["shortNames"] == [names.SHORT_NAME]
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd_version(crd)
    assert version["name"] == names.VERSION
    assert version["subresources"] == {"status": {}}


def test_printer_columns_cover_the_required_ones_and_point_at_declared_fields():
    version = crd_version(load_crd())
    columns = {col["name"]: col for col in version["additionalPrinterColumns"]}
    assert {"Total", "Succeeded", "Failed", "Skipped", "Running", "Progress", "Age"} <= set(columns)
    status = crd_schema(load_crd())["properties"]["status"]
    for column in columns.values():
        path = column["jsonPath"]
        if not path.startswith(".status."):
            continue
        node = status
        for part in re.sub(r"\[.*?\]", "", path).split(".")[2:]:
            node = node.get("properties", {}).get(part) or node.get("items", {}).get(
                "properties", {}
            ).get(part)
            assert node is not None, f"column {column['name']}: {path} is not declared"


def test_conditions_are_a_map_list_keyed_by_type():
    conditions = crd_schema(load_crd())["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
