"""The test bed is a real Kubernetes: scheduling, GPU accounting, Jobs, GC, CRDs with CEL.

If any of these fail, nothing else in the integration suite can be trusted.
"""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from support.pods import gpu_pod
from support.waiting import wait_for
from testbed import GpuNodePool, Testbed, sim

pytestmark = pytest.mark.integration


def pod_phase(api: client.CoreV1Api, name: str, namespace: str) -> str:
    return str(api.read_namespaced_pod(name, namespace).status.phase)


def test_gpu_pod_is_bound_to_a_gpu_node_and_succeeds_after_its_duration(
    testbed: Testbed, namespace: str
):
    api = testbed.core_v1()
    api.create_namespaced_pod(
        namespace,
        gpu_pod(
            "one-gpu",
            annotations=sim.annotations(3.0),
            node_selector={"gpubatch.io/testbed-pool": "gpu"},
        ),
    )
    pod = wait_for(
        lambda: (
            (p := api.read_namespaced_pod("one-gpu", namespace)).status.phase == "Succeeded" and p
        ),
        timeout=30,
        what="pod Succeeded",
    )
    node = api.read_node(pod.spec.node_name)
    assert node.status.allocatable["nvidia.com/gpu"] == "8"
    assert node.metadata.labels["nvidia.com/gpu.product"]
    started = pod.status.start_time
    finished = pod.status.container_statuses[0].state.terminated.finished_at
    # Timestamps have one-second resolution; the annotated 3 s must show as at least 2 s.
    assert (finished - started).total_seconds() >= 2
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0


def test_lognormal_annotation_gives_each_task_index_the_duration_the_benchmarks_compute(
    testbed: Testbed, namespace: str
):
    """The makespan benchmark computes its lower bound from `sim.lognormal_ms`; kwok must run
    each index for that long (the jq in kwok-config.yaml is the same arithmetic)."""
    api = testbed.core_v1()
    mean_ms, sigma, seed = 4000.0, 0.8, 42
    durations = {i: sim.lognormal_ms(i, mean_ms, sigma, seed) for i in range(40)}
    shortest = min(durations, key=lambda i: durations[i])
    longest = max(durations, key=lambda i: durations[i])
    assert durations[shortest] < 1500 and durations[longest] > 6000, durations
    for index in (shortest, longest):
        api.create_namespaced_pod(
            namespace,
            gpu_pod(
                f"ln-{index}",
                annotations={sim.LOGNORMAL: sim.lognormal_annotation(mean_ms, sigma, seed)},
                labels={"gpubatch.io/task-index": str(index)},
                node_selector={"gpubatch.io/testbed-pool": "gpu"},
            ),
        )
    ran = {}
    for index in (shortest, longest):
        pod = wait_for(
            lambda i=index: (
                (p := api.read_namespaced_pod(f"ln-{i}", namespace)).status.phase == "Succeeded"
                and p
            ),
            timeout=60,
            what=f"pod ln-{index} Succeeded",
        )
        terminated = pod.status.container_statuses[0].state.terminated
        ran[index] = (terminated.finished_at - pod.status.start_time).total_seconds()
    # One-second timestamps: each run is within a second (plus scheduling slack) of its duration.
    for index, seconds in ran.items():
        assert abs(seconds - durations[index] / 1000) <= 1.5, (index, seconds, durations[index])


def test_ninth_one_gpu_pod_stays_pending_on_an_eight_gpu_node(testbed: Testbed, namespace: str):
    api = testbed.core_v1()
    pool = GpuNodePool(name=f"solo{uuid.uuid4().hex[:4]}", count=1, gpus=8)
    [node] = testbed.create_nodes([pool])
    selector = {"kubernetes.io/hostname": node}
    for i in range(9):
        api.create_namespaced_pod(
            namespace, gpu_pod(f"p{i}", node_selector=selector, annotations=sim.annotations(600))
        )

    def counts() -> tuple[int, int] | None:
        pods = api.list_namespaced_pod(namespace).items
        running = sum(p.status.phase == "Running" for p in pods)
        unschedulable = sum(
            any(
                c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                for c in (p.status.conditions or [])
            )
            for p in pods
        )
        return (running, unschedulable) if running == 8 and unschedulable == 1 else None

    wait_for(counts, timeout=60, what="8 running and 1 unschedulable")
    pending = [p for p in api.list_namespaced_pod(namespace).items if p.status.phase == "Pending"]
    assert len(pending) == 1
    message = next(c.message for c in pending[0].status.conditions if c.type == "PodScheduled")
    assert "nvidia.com/gpu" in message
    testbed.delete_node(node)


def test_pod_annotated_to_fail_ends_failed_with_that_exit_code_and_message(
    testbed: Testbed, namespace: str
):
    api = testbed.core_v1()
    record = {"outcome": "failed", "exitCode": 3}
    api.create_namespaced_pod(
        namespace,
        gpu_pod("fails", annotations=sim.annotations(0.2, exit_code=3, termination_message=record)),
    )
    pod = wait_for(
        lambda: (p := api.read_namespaced_pod("fails", namespace)).status.phase == "Failed" and p,
        timeout=30,
        what="pod Failed",
    )
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    assert json.loads(terminated.message) == record


def test_indexed_job_with_twenty_completions_finishes(testbed: Testbed, namespace: str):
    batch = client.BatchV1Api(testbed.api_client())
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "indexed"},
        "spec": {
            "completions": 20,
            "parallelism": 4,
            "completionMode": "Indexed",
            "template": {
                "metadata": {"annotations": sim.annotations(0.2)},
                "spec": gpu_pod("unused")["spec"],
            },
        },
    }
    batch.create_namespaced_job(namespace, job)
    status = wait_for(
        lambda: (s := batch.read_namespaced_job("indexed", namespace).status).succeeded == 20 and s,
        timeout=120,
        what="20 succeeded completions",
    )
    assert status.completed_indexes == "0-19"


def test_garbage_collector_deletes_owned_children(testbed: Testbed, namespace: str):
    api = testbed.core_v1()
    owner = api.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owner"}, "data": {"k": "v"}}
    )
    api.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                    }
                ],
            },
        },
    )
    api.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        try:
            api.read_namespaced_config_map("child", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(child_gone, timeout=60, what="owned ConfigMap garbage-collected")


def test_deleting_a_namespace_with_pods_finishes(testbed: Testbed):
    api = testbed.core_v1()
    name = testbed.create_namespace(f"doomed-{uuid.uuid4().hex[:6]}")
    api.create_namespaced_pod(name, gpu_pod("long", annotations=sim.annotations(600)))
    wait_for(lambda: pod_phase(api, "long", name) == "Running", timeout=30, what="pod Running")
    api.delete_namespace(name)

    def gone() -> bool:
        try:
            api.read_namespace(name)
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, timeout=90, what="namespace deleted")


WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.gpubatch.io}
spec:
  group: smoke.gpubatch.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              min: {type: integer}
              max: {type: integer}
            x-kubernetes-validations:
            - rule: self.min <= self.max
              message: "spec.min must not exceed spec.max: lower min or raise max"
          status:
            type: object
            properties:
              seen: {type: integer}
"""


def test_crd_with_cel_rule_rejects_a_bad_object_with_the_rule_message(
    testbed: Testbed, namespace: str
):
    testbed.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    testbed.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.smoke.gpubatch.io", "--timeout=60s"
    )
    widget = "apiVersion: smoke.gpubatch.io/v1\nkind: Widget\nmetadata: {{name: {}}}\nspec: {}\n"
    good = widget.format("good", "{min: 1, max: 2}")
    bad = widget.format("bad", "{min: 3, max: 2}")
    testbed.kubectl("-n", namespace, "apply", "-f", "-", input=good)
    result = testbed.kubectl("-n", namespace, "apply", "-f", "-", input=bad, check=False)
    assert result.returncode != 0
    assert "spec.min must not exceed spec.max" in result.stderr
    # The status subresource is real: a status write through /status sticks, a spec write does not
    # change status.
    testbed.kubectl(
        "-n",
        namespace,
        "patch",
        "widget",
        "good",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"seen": 7}}',
    )
    seen = testbed.kubectl(
        "-n", namespace, "get", "widget", "good", "-o", "jsonpath={.status.seen}"
    ).stdout
    assert seen == "7"


def test_kubectl_reports_the_pinned_kubernetes_version(testbed: Testbed):
    from testbed.controlplane import HERE

    pinned = dict(
        line.split("=", 1)
        for line in (HERE / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )["KUBERNETES_VERSION"]
    out = json.loads(testbed.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == pinned
    assert out["serverVersion"]["gitVersion"] == pinned
