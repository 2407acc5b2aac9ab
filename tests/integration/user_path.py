"""The cluster user's path, from `helm install` to `helm uninstall`, as steps with assertions.

docs/cluster.md tells people this path; the steps here follow it, and the batch they run is the
YAML example in that document (read from it, so the docs cannot drift from what is tested). Two
clusters run the same steps:

- the test bed (tests/integration/test_chart.py): real control plane, kwok nodes; the operator
  runs as a local process with exactly the chart's ServiceAccount identity (its token), since
  kwok pods run no containers; task pods are simulated, so the test "is the worker" and writes
  the outputs of the tasks that succeeded;
- kind (tests/e2e/test_kind.py, `make e2e-kind`, needs Docker; not run in this project's CI):
  the chart's Deployment runs the operator image, and the task really runs in the worker image
  on the CPU and writes its outputs to a folder shared with the operator.

A `Cluster` supplies what differs (how the operator starts, where outputs land); everything a
user would see is asserted here, once.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpubatch.core.prepare import prepare_batch
from support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "gpubatch-operator"
CLUSTER_DOC = REPO / "docs" / "cluster.md"
CRD_NAME = "gpubatches.gpubatch.io"


def doc_block(name: str, path: Path = CLUSTER_DOC) -> str:
    """The fenced block between `<!-- name:start -->` and `<!-- name:end -->` in a document."""
    text = path.read_text()
    match = re.search(
        rf"<!-- {name}:start -->\n```[a-z]*\n(.*?)```\n<!-- {name}:end -->", text, re.DOTALL
    )
    assert match, f"{path.name} lacks a fenced block between <!-- {name}:start/end --> markers"
    return match.group(1)


def documented_example() -> dict[str, Any]:
    """The example GPUBatch of docs/cluster.md, as a user copies it."""
    body: dict[str, Any] = yaml.safe_load(doc_block("cluster-example"))
    return body


@dataclass(frozen=True)
class Example:
    """The documented example, adapted to one cluster: where its data volume and outputs are."""

    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def output_root(self) -> str:
        return str(self.body["spec"]["outputRoot"])

    def outputs(self) -> dict[int, list[str]]:
        """Task index -> its rendered outputs (by gpubatch's own expansion and templating)."""
        prepared = prepare_batch(self.body["spec"])
        return {i: list(prepared.render(i).outputs) for i in range(prepared.tasks.count())}

    def output_names(self, indexes: Iterable[int] | None = None) -> set[str]:
        """Output paths relative to outputRoot, for the given task indexes (default all)."""
        outputs = self.outputs()
        chosen = outputs if indexes is None else {i: outputs[i] for i in indexes}
        root = self.output_root.rstrip("/") + "/"
        return {path.removeprefix(root) for paths in chosen.values() for path in paths}

    @property
    def total(self) -> int:
        return len(self.outputs())


def adapt_example(
    *,
    output_root: str,
    data_volume: dict[str, Any],
    image: str | None = None,
    pod_annotations: dict[str, str] | None = None,
) -> Example:
    """The documented example with this cluster's data volume source, output folder and image.

    Only these change; the command, the task list and the outputs are the documented ones.
    """
    body = documented_example()
    spec = body["spec"]
    spec["outputRoot"] = output_root
    pod = spec["template"]["spec"]
    volume = pod["volumes"][0]
    pod["volumes"][0] = {"name": volume["name"], **data_volume}
    mount = pod["containers"][0]["volumeMounts"][0]
    mount["mountPath"] = str(Path(output_root).parent)
    if image is not None:
        pod["containers"][0]["image"] = image
    if pod_annotations:
        spec["template"].setdefault("metadata", {}).setdefault("annotations", {}).update(
            pod_annotations
        )
    return Example(body)


@dataclass
class Cluster:
    """What the user path needs from a cluster; subclasses say how the operator runs."""

    kubeconfig: Path  # the cluster admin's: installs the chart
    bin_dir: Path  # holds kubectl and helm
    user_kubeconfig: Path | None = None  # the batch user's, if not the admin
    release: str = "gpubatch-operator"
    release_namespace: str = "gpubatch-system"
    gpu_model: str = ""  # the nvidia.com/gpu.product label of the nodes tasks run on
    commands: list[str] = field(default_factory=list)  # every command run, for failure reports

    # ------------------------------------------------------------------------- commands
    def run(
        self,
        tool: str,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 180,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / tool), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        self.commands.append(" ".join([tool, *args]))
        done = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            command = " ".join([tool, *args])
            raise AssertionError(
                f"`{command}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, **kwargs)

    def helm(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, **kwargs)

    def user_kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """kubectl as the person who runs batches (the `edit` role in their namespace)."""
        kubeconfig = self.user_kubeconfig or self.kubeconfig
        return self.run("kubectl", *args, kubeconfig=kubeconfig, **kwargs)

    def user_get_json(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.user_kubectl("get", *args, "-o", "json").stdout)
        return result

    def get_json(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return result

    # ------------------------------------------------------------------------- hooks
    def start_operator(self) -> None:
        """After `helm install`: the operator is running (the Deployment, or its stand-in)."""

    def stop_operator(self) -> None:
        """Before `helm uninstall`, for stand-ins that are not part of the release."""

    def tasks_ran(self, example: Example, indexes: Iterable[int]) -> None:
        """These tasks succeeded: their outputs exist now (a real worker already wrote them)."""

    def list_outputs(self, example: Example) -> set[str]:
        """Files under the example's outputRoot, relative to it (as the operator sees them)."""
        raise NotImplementedError

    def remove_outputs(self, example: Example, names: Iterable[str]) -> None:
        raise NotImplementedError


# ----------------------------------------------------------------------------- 1. install
def install_chart(cluster: Cluster, values: dict[str, Any], *extra: str) -> str:
    """`helm install` the chart, as docs/cluster.md says, and check what it created; returns
    helm's output (with the NOTES)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-") as handle:
        yaml.safe_dump(values, handle)
        handle.flush()
        done = cluster.helm(
            "install",
            cluster.release,
            str(CHART),
            "--namespace",
            cluster.release_namespace,
            "--create-namespace",
            "--values",
            handle.name,
            *extra,
        )
    expect_installed(cluster)
    cluster.start_operator()
    return done.stdout


def expect_installed(cluster: Cluster) -> None:
    ns = cluster.release_namespace
    deployment = cluster.get_json("deployment", cluster.release, "-n", ns)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == cluster.release
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "leases": 8443}
    cluster.get_json("serviceaccount", cluster.release, "-n", ns)
    service = cluster.get_json("service", f"{cluster.release}-metrics", "-n", ns)
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    role = f"{ns}-{cluster.release}"
    for kind, name in [
        ("clusterrole", role),
        ("clusterrole", f"{role}-nodes"),
        ("clusterrolebinding", f"{role}-nodes"),
        ("clusterrole", f"{role}-edit"),
        ("clusterrole", f"{role}-view"),
    ]:
        cluster.get_json(kind, name)
    crd = cluster.get_json("crd", CRD_NAME)
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established.get("Established") == "True"


# ----------------------------------------------------------------------------- 2. apply
def apply(cluster: Cluster, namespace: str, example: Example) -> None:
    cluster.user_kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(example.body))


def delete(cluster: Cluster, namespace: str, example: Example) -> None:
    """`kubectl delete` waits until the operator has released the batch (its finalizer)."""
    cluster.user_kubectl("delete", "gpubatch", example.name, "-n", namespace, "--timeout=120s")


# ----------------------------------------------------------------------------- 3. watch
def wait_complete(cluster: Cluster, namespace: str, example: Example, timeout: int = 240) -> None:
    done = cluster.user_kubectl(
        "wait",
        "--for=condition=Complete",
        f"gpubatch/{example.name}",
        "-n",
        namespace,
        f"--timeout={timeout}s",
        check=False,
        timeout=timeout + 30,
    )
    if done.returncode != 0:
        status = cluster.user_get_json("gpubatch", example.name, "-n", namespace).get("status")
        raise AssertionError(
            f"kubectl wait for Complete failed: {done.stderr}\nstatus: {json.dumps(status)}"
        )
    assert f"gpubatch.gpubatch.io/{example.name} condition met" in done.stdout


def progress_row(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    """One row of `kubectl get gpub`, by column header."""
    table = cluster.user_kubectl("get", "gpub", name, "-n", namespace).stdout.splitlines()
    return parse_table(table)[0]


def parse_table(lines: Sequence[str]) -> list[dict[str, str]]:
    """kubectl's column output -> rows of {HEADER: cell}; cells may be empty."""
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = []
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else len(line)
            cells.append(line[start:end].strip())
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


# ----------------------------------------------------------------------------- 4. results
def expect_first_run(cluster: Cluster, namespace: str, example: Example) -> dict[str, Any]:
    """Every task ran once and succeeded; the table, status and per-GPU stats say so."""
    total = example.total
    row = progress_row(cluster, namespace, example.name)
    assert row["TOTAL"] == str(total)
    assert row["SUCCEEDED"] == str(total)
    assert (row["FAILED"], row["SKIPPED"], row["RUNNING"]) == ("0", "0", "0")
    assert row["PROGRESS"] == f"{total}/{total}"
    assert row["STATE"] == "Complete"
    status = cluster.user_get_json("gpubatch", example.name, "-n", namespace)["status"]
    assert status["counts"]["succeeded"] == total
    assert status["succeededIndexes"] == f"0-{total - 1}"
    [stats] = status["gpuModels"]
    assert stats["model"] == cluster.gpu_model
    assert stats["succeeded"] == total and stats["failed"] == 0
    assert stats["meanSeconds"] > 0 and stats["p95Seconds"] > 0
    cluster.tasks_ran(example, range(total))
    assert cluster.list_outputs(example) == example.output_names()
    return dict(status)


def expect_rerun_skips_finished_tasks(
    cluster: Cluster, namespace: str, example: Example, redo: Sequence[int]
) -> dict[str, Any]:
    """Remove the outputs of `redo`, delete and re-apply: only those tasks run again."""
    cluster.remove_outputs(example, example.output_names(redo))
    delete(cluster, namespace, example)
    apply(cluster, namespace, example)
    wait_complete(cluster, namespace, example)
    total, ran = example.total, len(redo)
    row = progress_row(cluster, namespace, example.name)
    assert (row["SUCCEEDED"], row["SKIPPED"]) == (str(ran), str(total - ran)), row
    assert row["PROGRESS"] == f"{total}/{total}"
    status = cluster.user_get_json("gpubatch", example.name, "-n", namespace)["status"]
    assert status["succeededIndexes"] == ",".join(str(i) for i in sorted(redo))
    skipped = sorted(set(range(total)) - set(redo))
    assert status["counts"]["skipped"] == len(skipped)
    assert status["gpuModels"][0]["succeeded"] == ran
    cluster.tasks_ran(example, redo)
    assert cluster.list_outputs(example) == example.output_names()
    return dict(status)


def expect_events(cluster: Cluster, namespace: str, example: Example, *reasons: str) -> None:
    """`kubectl describe` lists the batch's Events (by reason)."""
    described = cluster.user_kubectl("describe", "gpubatch", example.name, "-n", namespace).stdout
    events = described.split("Events:", 1)[1]
    for reason in reasons:
        assert re.search(rf"\b{reason}\b", events), f"no {reason} event in:\n{events}"


# ----------------------------------------------------------------------------- 5. uninstall
def uninstall_batches(cluster: Cluster, namespaces: Iterable[str]) -> None:
    """`kubectl delete gpub --all` while the operator runs: no pod is left holding a finalizer."""
    for namespace in namespaces:
        cluster.user_kubectl("delete", "gpub", "--all", "-n", namespace, "--timeout=120s")

        def released(namespace: str = namespace) -> bool:
            pods = cluster.get_json("pods", "-n", namespace, "-l", "gpubatch.io/batch-uid")
            return not any(p["metadata"].get("finalizers") for p in pods["items"])

        wait_until(released, timeout=60, what=f"task pods in {namespace} released")


def uninstall(cluster: Cluster, namespaces: Iterable[str]) -> None:
    """Delete the batches while the operator runs, then `helm uninstall`; the CRD stays."""
    uninstall_batches(cluster, namespaces)
    cluster.stop_operator()
    cluster.helm("uninstall", cluster.release, "--namespace", cluster.release_namespace, "--wait")
    ns = cluster.release_namespace
    for kind, name, namespaced in [
        ("deployment", cluster.release, True),
        ("serviceaccount", cluster.release, True),
        ("clusterrole", f"{ns}-{cluster.release}", False),
        ("clusterrolebinding", f"{ns}-{cluster.release}-nodes", False),
    ]:
        where = ["-n", ns] if namespaced else []
        gone = cluster.kubectl("get", kind, name, *where, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, f"{kind}/{name} survived"
    cluster.get_json("crd", CRD_NAME)  # kept: deleting it would delete every batch


def wait_until(check: Any, *, timeout: float, what: str, interval: float = 0.5) -> Any:
    """`support.waiting.wait_for`, polling at the user's pace (every half second)."""
    return wait_for(check, timeout=timeout, what=what, interval=interval)
