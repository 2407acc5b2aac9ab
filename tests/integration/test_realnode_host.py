"""The real node puts back everything it changed on the host (`realnode` tier)."""

from __future__ import annotations

import pytest

from testbed.realnode.hoststate import HostState
from testbed.realnode.node import RealNode

pytestmark = pytest.mark.realnode


def test_stopping_the_real_node_restores_the_host_and_the_node_starts_again(
    real_node: RealNode,
):
    before = real_node.host_before
    assert before is not None
    while_running = before.differences(HostState.capture())
    # Not a vacuous check: a running node has changed the host (cgroups, mounts, bridge, ...).
    assert any(change.startswith("cgroup added") for change in while_running), while_running
    assert any(change.startswith("mount added") for change in while_running), while_running

    problems = real_node.stop()

    assert problems == []
    assert before.differences(HostState.capture()) == []
    real_node.start()  # the session's other real-node tests still need it
    assert real_node.host_before is not None
