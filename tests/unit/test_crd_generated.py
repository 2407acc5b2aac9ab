"""The committed CRD is the one the models generate (`make crd`), and the generator loses nothing.

The models are the one schema source (`gpubatch.api.crdgen`); these checks catch a CRD edited by
hand or a model changed without regenerating, plus what the generator cannot enforce by itself:
a field someone forgot to describe, a Python validator without its CEL twin.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpubatch.api.crdgen import crd, render
from gpubatch.api.spec import VALIDATION_MESSAGES

pytestmark = pytest.mark.unit

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "gpubatches.gpubatch.io.yaml"


def schema() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):  # a list's items: the path as kubectl's JSONPath
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


def test_the_committed_crd_is_the_generated_one():
    assert CRD_PATH.read_text() == render(), (
        "crds/gpubatches.gpubatch.io.yaml differs from what the models generate; "
        "run `make crd` (and never edit the CRD by hand)"
    )


def test_the_generated_yaml_parses_back_to_the_generated_crd():
    assert yaml.safe_load(render()) == crd()


def test_every_field_item_and_map_value_is_described_for_kubectl_explain():
    undescribed = [path for path, node in nodes(schema()) if path and not node.get("description")]
    assert undescribed == [".metadata"]  # standard object metadata: the API server's own


def test_every_python_validation_message_has_a_cel_rule_and_no_rule_has_another():
    rules = [r for _, node in nodes(schema()) for r in node.get("x-kubernetes-validations", [])]
    assert {r["message"] for r in rules} == set(VALIDATION_MESSAGES)


def test_printer_columns_point_at_declared_status_fields():
    (version,) = crd()["spec"]["versions"]
    declared = {path.replace("[]", "") for path, _ in nodes(schema())}
    for column in version["additionalPrinterColumns"]:
        path = re.sub(r"\[.*?\]", "", column["jsonPath"])
        assert path.startswith(".metadata.") or path in declared, column
