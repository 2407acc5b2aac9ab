"""The cluster user's path on kind, with the real operator image and the task in the worker image.

Run through `make e2e-kind` (tests/e2e/kind_e2e.sh), which creates the cluster, builds and loads
the images and advertises fake GPUs; it needs Docker and is NOT run in this project's CI. The
steps and assertions are tests/integration/user_path.py's, the same the test-bed test runs
(tests/integration/test_chart.py); here they meet real containers: the operator runs from its
image as the chart deploys it, the task's command writes its outputs, and the operator sees them
through the chart's `storage` mount.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration import user_path
from integration.user_path import Cluster, Example

pytestmark = pytest.mark.e2e

ENV = ("GPUBATCH_E2E_KUBECONFIG", "GPUBATCH_E2E_BIN", "GPUBATCH_E2E_DATA")
DATA_IN_NODE = "/data"  # kind_e2e.sh mounts GPUBATCH_E2E_DATA there on the node


@dataclass
class KindCluster(Cluster):
    """kind: the chart's Deployment runs the operator; the worker writes the outputs."""

    __test__ = False

    data_dir: Path = Path()  # the host side of the node's /data

    def start_operator(self) -> None:
        self.kubectl(
            "rollout", "status", f"deployment/{self.release}", "-n", self.release_namespace,
            "--timeout=180s",
        )  # fmt: skip

    def _host(self, example: Example) -> Path:
        return self.data_dir / Path(example.output_root).relative_to(DATA_IN_NODE)

    def list_outputs(self, example: Example) -> set[str]:
        root = self._host(example)
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    def remove_outputs(self, example: Example, names: Iterable[str]) -> None:
        for name in names:
            (self._host(example) / name).unlink()


@pytest.fixture(scope="module")
def kind() -> Iterator[KindCluster]:
    missing = [name for name in ENV if not os.environ.get(name)]
    if missing:
        pytest.skip(f"run through `make e2e-kind` (tests/e2e/kind_e2e.sh); unset: {missing}")
    yield KindCluster(
        kubeconfig=Path(os.environ["GPUBATCH_E2E_KUBECONFIG"]),
        bin_dir=Path(os.environ["GPUBATCH_E2E_BIN"]),
        gpu_model=os.environ.get("GPUBATCH_E2E_GPU_MODEL", "kind-fake-gpu"),
        data_dir=Path(os.environ["GPUBATCH_E2E_DATA"]),
    )


def test_cluster_user_path_on_kind(kind: KindCluster):
    tag = os.environ.get("GPUBATCH_E2E_TAG", "e2e")
    node_data = {"hostPath": {"path": DATA_IN_NODE, "type": "Directory"}}
    user_path.install_chart(
        kind,
        {
            "operatorImage": {"repository": "gpubatch-operator", "tag": tag, "pullPolicy": "Never"},
            "storage": {
                "volumes": [{"name": "data", **node_data}],
                "volumeMounts": [{"name": "data", "mountPath": DATA_IN_NODE, "readOnly": True}],
            },
        },
    )
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    kind.kubectl("create", "namespace", namespace)
    example = user_path.adapt_example(
        output_root=f"{DATA_IN_NODE}/hello-gpubatch",
        data_volume=node_data,
        image=f"gpubatch-worker:{tag}",
    )
    user_path.apply(kind, namespace, example)
    user_path.wait_complete(kind, namespace, example, timeout=600)
    user_path.expect_first_run(kind, namespace, example)
    user_path.expect_events(kind, namespace, example, "Started", "Completed")

    # The task's own command wrote these (the example writes `word` `repeat` times).
    root = kind.data_dir / "hello-gpubatch"
    for index, params in enumerate(example_params(example)):
        name = f"{params['word']}-{params['repeat']}.txt"
        assert (root / name).read_text() == " ".join([params["word"]] * params["repeat"]) + "\n", (
            f"task {index}"
        )

    # The operator serves Prometheus metrics through its Service.
    metrics = kind.kubectl(
        "get", "--raw",
        f"/api/v1/namespaces/{kind.release_namespace}/services/"
        f"{kind.release}-metrics:metrics/proxy/metrics",
    ).stdout  # fmt: skip
    assert "gpubatch_tasks{" in metrics and "gpubatch_api_requests_total{" in metrics

    user_path.expect_rerun_skips_finished_tasks(kind, namespace, example, redo=[0, 4])
    user_path.uninstall(kind, [namespace])
    kind.kubectl("delete", "namespace", namespace, "--wait=false")


def example_params(example: Example) -> list[dict[str, int | str]]:
    from gpubatch.core.prepare import prepare_batch

    tasks = prepare_batch(example.body["spec"]).tasks
    return [dict(tasks.task(i).params) for i in range(tasks.count())]
