"""The test bed can be hurt on purpose: restart kube-apiserver or etcd, delete a GPU node.

These run on their own control plane so the shared one stays undisturbed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client.rest import ApiException

from support.pods import gpu_pod
from support.waiting import wait_for
from testbed import GpuNodePool, Testbed, TestbedConfig, sim

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fragile_testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    bed = Testbed.create(
        TestbedConfig(node_pools=[GpuNodePool(name="frail", count=2, gpus=4)]),
        workdir=Path(tmp_path_factory.mktemp("fragile")),
    )
    bed.start()
    try:
        yield bed
    finally:
        bed.destroy()


def test_restarted_apiserver_serves_the_objects_it_had(fragile_testbed: Testbed):
    bed = fragile_testbed
    bed.core_v1().create_namespaced_config_map("default", {"metadata": {"name": "before"}})
    seconds = bed.restart_apiserver()
    assert bed.components["kube-apiserver"].alive()
    got = wait_for(
        lambda: bed.core_v1().read_namespaced_config_map("before", "default"),
        timeout=30,
        what="ConfigMap readable after restart",
    )
    assert got.metadata.name == "before"
    print(f"kube-apiserver restart took {seconds:.1f}s")


def test_killed_and_restarted_etcd_keeps_data(fragile_testbed: Testbed):
    bed = fragile_testbed
    bed.core_v1().create_namespaced_config_map("default", {"metadata": {"name": "durable"}})
    bed.restart("etcd", kill=True)

    def readable() -> bool:
        try:
            return bed.core_v1().read_namespaced_config_map("durable", "default") is not None
        except ApiException:
            return False

    wait_for(readable, timeout=60, what="apiserver reconnected to etcd")


def test_deleted_node_takes_its_pods_down(fragile_testbed: Testbed):
    bed = fragile_testbed
    api = bed.core_v1()
    ns = bed.create_namespace("nodeloss")
    api.create_namespaced_pod(
        ns,
        gpu_pod(
            "victim",
            node_selector={"kubernetes.io/hostname": "frail-0"},
            annotations=sim.annotations(600),
        ),
    )
    wait_for(
        lambda: api.read_namespaced_pod("victim", ns).status.phase == "Running",
        timeout=30,
        what="pod Running on frail-0",
    )
    bed.delete_node("frail-0")

    def pod_gone_or_failed() -> bool:
        try:
            pod = api.read_namespaced_pod("victim", ns)
        except ApiException as error:
            return error.status == 404
        return pod.status.phase == "Failed" or pod.metadata.deletion_timestamp is not None

    # The pod garbage collector of kube-controller-manager handles pods of vanished nodes.
    wait_for(pod_gone_or_failed, timeout=120, interval=1, what="PodGC to act on the orphan")
    assert all(node.metadata.name != "frail-0" for node in api.list_node().items)
