"""values.yaml and values.schema.json: every value documented, unknown keys and wrong types refused.

Helm validates values against the schema at install, upgrade, lint and template time (those runs
are in tests/integration/test_chart.py); here the schema and the defaults are checked against each
other with a JSON Schema validator, without Helm.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.unit

CHART = Path(__file__).resolve().parents[2] / "charts" / "gpubatch-operator"
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)


def errors(values: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(values)
    ]


def with_value(path: str, value: Any) -> dict[str, Any]:
    values = copy.deepcopy(VALUES)
    node = values
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return values


def test_schema_is_a_valid_draft7_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_default_values_satisfy_the_schema():
    assert errors(VALUES) == []


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def test_every_object_refuses_unknown_keys_unless_it_is_a_map_or_a_kubernetes_object():
    loose = []
    for path, node in walk(SCHEMA):
        if node.get("type") != "object":
            continue
        extra = node.get("additionalProperties")
        is_map = isinstance(extra, dict) and "properties" not in node
        passthrough = str(node.get("$comment", "")).startswith("Kubernetes API object")
        if extra is not False and not is_map and not passthrough:
            loose.append(path or "(root)")
    assert loose == []


def test_every_schema_property_has_a_description():
    missing = [
        path
        for path, node in walk(SCHEMA)
        if path
        and not path.endswith(("[]", "{}"))
        and not node.get("description")
        and "anyOf" not in node
    ]
    assert missing == []


def test_values_and_schema_have_the_same_top_level_keys():
    assert set(VALUES) == set(SCHEMA["properties"])


def key_lines() -> Iterator[tuple[str, str, int]]:
    """(dotted path, the line before, line number) of every mapping key in values.yaml."""
    lines = VALUES_TEXT.splitlines()
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        before = lines[number - 1].strip() if number else ""
        yield ".".join(k for _, k in stack), before, number + 1


def test_every_value_is_documented_by_a_comment_right_above_it():
    undocumented = [
        f"line {number}: {path}"
        for path, before, number in key_lines()
        if not before.startswith("#")
        and not path.startswith(("resources.requests.", "resources.limits."))  # quantities
    ]
    assert undocumented == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("operatorImage.tga", "1.0"),  # a typo of a key
        ("bogus", True),
        ("operator.maxPending", "8"),  # a string, not an integer
        ("operator.maxCreatesPerPass", 0),
        ("watchNamespaces", ["Team_A"]),
        ("watchNamespaces", ["a", "a"]),
        ("metrics.port", 70000),
        ("metrics.serviceMonitor.interval", "half a minute"),
        ("storage.volumes", [{"name": "data"}]),  # no volume source
        ("storage.volumes", [{"name": "data", "persistentVolumeclaim": {"claimName": "x"}}]),
        ("storage.volumeMounts", [{"name": "data", "mountPath": "data"}]),  # not absolute
        ("storage.volumeMounts", [{"name": "data", "mountPath": "/d", "readonly": True}]),
        ("env", [{"name": "A", "valu": "1"}]),
        ("tolerations", [{"operator": "Exist"}]),
        ("podSecurityContext.runAsUser", 0),  # root is refused: runAsNonRoot is always set
        ("operatorImage.pullPolicy", "Sometimes"),
        ("affinity", {"nodeAfinity": {}}),
        ("leases.port", 0),
        ("leases.existingSecret", "Lease_TLS"),
        ("leases.enable", True),
    ],
)
def test_schema_refuses(path: str, value: Any):
    assert errors(with_value(path, value)), f"{path}={value!r} was accepted"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("watchNamespaces", ["team-a", "team-b"]),
        ("operator.maxPending", 0),
        ("podSecurityContext.fsGroup", 2000),
        ("storage.volumes", [{"name": "data", "nfs": {"server": "nas", "path": "/export"}}]),
        ("storage.volumeMounts", [{"name": "data", "mountPath": "/data", "readOnly": True}]),
        ("env", [{"name": "AWS_REGION", "value": "eu-west-1"}]),
        ("envFrom", [{"secretRef": {"name": "s3-credentials"}}]),
        (
            "tolerations",
            [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        ),
        ("resources", {"requests": {"cpu": 1, "memory": "512Mi"}}),
        ("leases", {"enabled": False, "port": 9443, "existingSecret": "lease.tls-1"}),
    ],
)
def test_schema_accepts(path: str, value: Any):
    assert errors(with_value(path, value)) == []
