"""The tier of a test in tests/unit that mixes both: `process` when it starts a server.

Most modules here name their tier in `pytestmark` (`unit`: pure, in-process; `process`: starts
task processes or the local runner). test_storage.py mixes local-folder checks with S3 checks
against a moto server, so its tests get their tier from the fixtures they use.
"""

from __future__ import annotations

import pytest

#: Fixtures that start a server process.
SERVER_FIXTURES = frozenset({"s3_server"})
TIERS = ("unit", "process")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        if item.path.parent.name != "unit":
            continue
        uses_server = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.process if uses_server else pytest.mark.unit)
