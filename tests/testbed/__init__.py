"""The gpubatch test bed: a real control plane on loopback with kwok GPU nodes.

`python -m testbed up|down|status` (PYTHONPATH=tests) for people; the `testbed` pytest fixture
in tests/conftest.py for the test suite.
"""

from testbed.controlplane import Testbed, TestbedConfig, env_with_kubeconfig, testbin_dir
from testbed.nodes import GpuNodePool

__all__ = ["GpuNodePool", "Testbed", "TestbedConfig", "env_with_kubeconfig", "testbin_dir"]
