"""The Helm chart: lint, values schema, rendering, and a real install with least-privilege RBAC.

The install tests run on a test bed of their own (not the session one), for three reasons:
- its API server runs the OwnerReferencesPermissionEnforcement admission plugin, as OpenShift
  does, so the RBAC is proven against the stricter of the common configurations;
- it writes an audit log of the chart ServiceAccount's requests, watches included, which is how
  "every rule is used, nothing else is asked for" is measured rather than argued;
- no session operator runs there, so the operator started here, with exactly the chart's
  ServiceAccount identity (a token from `kubectl create token`), is the only one.

The chart's Deployment cannot run here (kwok nodes run no containers: its pod is kept Pending
by a nodeSelector so kwok does not fake-run it), so the operator runs as a local process with
the Deployment's own arguments and the ServiceAccount's token: the same identity, the same flags.

The tests after the install share one release and run in file order (install, user path,
removal experiments, namespaced mode, uninstall).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
import re
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509

import testbed as testbed_package
from integration import user_path
from integration.user_path import CHART, Cluster, Example
from support.audit import audit_offset, audited
from support.batches import batch
from support.operator_process import OperatorProcess
from testbed import Testbed, TestbedConfig
from testbed.processes import free_port

pytestmark = pytest.mark.integration

RELEASE, RELEASE_NS = "gpubatch-operator", "gpubatch-system"
SA_USER = f"system:serviceaccount:{RELEASE_NS}:{RELEASE}"
ROLE = f"{RELEASE_NS}-{RELEASE}"
NODES_ROLE = f"{ROLE}-nodes"
LEASES_ROLE = f"{ROLE}-leases"
LEASE_SERVICE = f"{RELEASE}-leases"
LEASE_DNS = f"{LEASE_SERVICE}.{RELEASE_NS}.svc"
KUBE_VERSION = "1.34.0"  # helm's built-in default is older than the chart's kubeVersion floor
SIM_SECONDS = 1.5  # long enough that second-precision container times give a non-zero mean
# Keeps the chart's own operator pod Pending: kwok would otherwise "run" it and, since it
# "exits" after a second, the Deployment would churn. The operator runs as a local process.
PARKED = {"nodeSelector": {"gpubatch.io/no-such-node": "parked"}}

Permission = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


# ----------------------------------------------------------------------------- helm, offline
def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(testbed_package.testbin_dir() / "helm"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def render(*sets: str, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`helm template` with the given --set flags (and values), as parsed objects."""
    args = ["template", RELEASE, str(CHART), "-n", RELEASE_NS, "--kube-version", KUBE_VERSION]
    for item in sets:
        args += ["--set", item]
    with contextlib.ExitStack() as stack:
        if values is not None:
            path = Path(stack.enter_context(_tempdir())) / "values.yaml"
            path.write_text(yaml.safe_dump(values))
            args += ["--values", str(path)]
        out = helm(*args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@contextlib.contextmanager
def _tempdir() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        yield folder


def objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def granted(docs: Iterable[dict[str, Any]], names: Iterable[str]) -> set[Permission]:
    """The (group, resource, verb) triples the named ClusterRoles grant."""
    wanted = set(names)
    out: set[Permission] = set()
    for doc in docs:
        if doc["kind"] != "ClusterRole" or doc["metadata"]["name"] not in wanted:
            continue
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((group, resource, verb))
    return out


#: Every permission the operator holds, and the operator call that needs it (docs/cluster.md,
#: templates/rbac.yaml). The rendered ClusterRoles must grant exactly these.
OPERATOR_PERMISSIONS: dict[Permission, str] = {
    ("gpubatch.io", "gpubatches", "list"): "kopf watch of GPUBatches (initial list)",
    ("gpubatch.io", "gpubatches", "watch"): "kopf watch of GPUBatches",
    ("gpubatch.io", "gpubatches", "patch"): "kopf finalizer gpubatch.io/cleanup, annotations",
    ("gpubatch.io", "gpubatches", "delete"): "ttlSecondsAfterFinished (reconcile.delete_batch)",
    ("gpubatch.io", "gpubatches/status", "patch"): "every status write (patch_batch_status)",
    ("gpubatch.io", "gpubatches/finalizers", "update"): "blockOwnerDeletion on task pods "
    "(OwnerReferencesPermissionEnforcement admission)",
    ("", "pods", "list"): "kopf pod index (initial list); release_pods",
    ("", "pods", "watch"): "kopf pod index",
    ("", "pods", "create"): "task pods (create_pod)",
    ("", "pods", "patch"): "tracking finalizer removal, stop-reason annotation",
    ("", "pods", "delete"): "stop and clean up pods (delete_pod)",
    ("", "events", "create"): "Events on batches (kopf.event)",
    ("", "nodes", "list"): "kopf node-label index (initial list)",
    ("", "nodes", "watch"): "kopf node-label index",
    ("authentication.k8s.io", "tokenreviews", "create"): "lease endpoint: whose token a warm "
    "pod presents (KubeClient.review_token)",
}
#: What `kueue.multiKueueWorker` adds: a batch mirrored by MultiKueue is admitted by a Workload
#: the operator reads and finishes (controller/workloadadmission.py).
MULTIKUEUE_WORKER_PERMISSIONS: dict[Permission, str] = {
    ("kueue.x-k8s.io", "workloads", "get"): "how many pods the batch's Workload is admitted for",
    ("kueue.x-k8s.io", "workloads/status", "patch"): "its Finished condition (server-side apply)",
}
#: Checked by the admission plugin during pod creation, not a request of its own, so the audit
#: log cannot show it; the removal experiment below shows what it is for.
ADMISSION_ONLY = {("gpubatch.io", "gpubatches/finalizers", "update")}


def test_helm_lint_is_clean_with_defaults_and_with_every_option_set():
    helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION)
    full = [
        "watchNamespaces={team-a,team-b}",
        "operator.maxPending=16",
        "operator.verbose=true",
        "kueue.multiKueueWorker=true",
        "metrics.serviceMonitor.enabled=true",
        "podSecurityContext.fsGroup=2000",
        "storage.volumes[0].name=data",
        "storage.volumes[0].persistentVolumeClaim.claimName=datasets",
        "storage.volumeMounts[0].name=data",
        "storage.volumeMounts[0].mountPath=/data",
        "storage.volumeMounts[0].readOnly=true",
    ]
    helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, *_sets(full))


def _sets(items: Iterable[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("operatorImage.reposiotry=x", "reposiotry"),
        ("watchNamespace={a}", "watchNamespace"),
        ("operator.maxPending=many", "maxPending"),
        ("metrics.port=0", "port"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
        ("storage.volumes[0].name=data", "storage/volumes/0"),  # a volume needs a source
        ("storage.volumes[0].persistentVolumeclaim.claimName=x", "persistentVolumeclaim"),
        ("storage.volumeMounts[0].name=data", "mountPath"),
        ("tolerations[0].effect=NoSchedul", "effect"),
        ("podSecurityContext.runAsUser=0", "runAsUser"),
    ],
)
def test_values_schema_refuses_unknown_keys_and_wrong_values(setting: str, complaint: str):
    args = ["template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, "--set", setting]
    done = helm(*args, check=False)
    assert done.returncode != 0, f"--set {setting} was accepted"
    assert "values don't meet the specifications of the schema" in done.stderr
    assert complaint in done.stderr, done.stderr


def test_rendered_cluster_roles_grant_exactly_the_documented_operator_permissions():
    docs = render()
    assert granted(docs, [ROLE, NODES_ROLE, LEASES_ROLE]) == set(OPERATOR_PERMISSIONS)
    bindings = objects(docs, "ClusterRoleBinding")
    assert set(bindings) == {ROLE, NODES_ROLE, LEASES_ROLE}
    for binding in bindings.values():
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": RELEASE, "namespace": RELEASE_NS}
        ]
    assert not objects(docs, "RoleBinding")
    # The users' roles extend the built-in ones and grant nothing to the operator.
    edit = objects(docs, "ClusterRole")[f"{ROLE}-edit"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"


def test_a_multikueue_worker_may_also_read_and_finish_workloads_and_nothing_more():
    docs = render("kueue.multiKueueWorker=true")
    expected = set(OPERATOR_PERMISSIONS) | set(MULTIKUEUE_WORKER_PERMISSIONS)
    assert granted(docs, [ROLE, NODES_ROLE, LEASES_ROLE]) == expected


def test_documented_rbac_table_lists_every_rule():
    """docs/cluster.md's table names each resource with its verbs, as the chart grants them."""
    table = user_path.CLUSTER_DOC.read_text().split("## What the operator may do (RBAC)")[1]
    documented: set[Permission] = set()
    for resource, verbs in re.findall(r"^\| `([a-z/]+)`[^|]*\| ([a-z, ]+) \|", table, re.M):
        group = {
            "gpubatches": "gpubatch.io",
            "tokenreviews": "authentication.k8s.io",
            "workloads": "kueue.x-k8s.io",
        }.get(resource.split("/")[0], "")
        documented |= {(group, resource, verb.strip()) for verb in verbs.split(",")}
    assert documented == set(OPERATOR_PERMISSIONS) | set(MULTIKUEUE_WORKER_PERMISSIONS)


def test_watch_namespaces_bind_the_role_in_each_namespace_and_only_nodes_cluster_wide():
    docs = render("watchNamespaces={team-a,team-b}")
    bindings = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in docs
        if d["kind"] == "RoleBinding"
    }
    assert bindings == {("team-a", RELEASE), ("team-b", RELEASE)}
    for doc in docs:
        if doc["kind"] == "RoleBinding":
            assert doc["roleRef"] == {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": ROLE,
            }
    # Cluster-scoped resources: nodes, and the TokenReviews of the lease endpoint.
    assert set(objects(docs, "ClusterRoleBinding")) == {NODES_ROLE, LEASES_ROLE}
    assert granted(docs, [NODES_ROLE]) == {("", "nodes", "list"), ("", "nodes", "watch")}
    assert granted(docs, [LEASES_ROLE]) == {("authentication.k8s.io", "tokenreviews", "create")}
    args = objects(docs, "Deployment")[RELEASE]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_deployment_flags_ports_and_storage_follow_the_values():
    values = {
        "operator": {"maxPending": 4, "apiConcurrency": 64, "extraArgs": ["--verbose"]},
        "kueue": {"defaultQueueName": "team-a"},
        "storage": {
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
        },
        "podSecurityContext": {"fsGroup": 2000, "supplementalGroups": [3000]},
    }
    docs = render(values=values)
    pod = objects(docs, "Deployment")[RELEASE]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == [
        "--metrics-port=8080",
        "--liveness=http://0.0.0.0:8081/healthz",
        "--max-pending=4",
        "--api-concurrency=64",
        "--default-queue-name=team-a",
        "--lease-port=8443",
        "--lease-cert=/etc/gpubatch/lease/tls.crt",
        "--lease-key=/etc/gpubatch/lease/tls.key",
        "--lease-ca=/etc/gpubatch/lease/ca.crt",
        f"--lease-url=https://{LEASE_DNS}:8443/v1/lease",
        "--verbose",
    ]
    assert container["image"] == "gpubatch-operator:0.1.0"  # appVersion when tag is empty
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}} in pod["volumes"]
    assert pod["securityContext"]["fsGroup"] == 2000
    assert pod["securityContext"]["supplementalGroups"] == [3000]

    off = render("metrics.enabled=false")
    args = objects(off, "Deployment")[RELEASE]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--metrics-port=0" in args
    assert set(objects(off, "Service")) == {LEASE_SERVICE}
    monitor = render("metrics.serviceMonitor.enabled=true")
    assert objects(monitor, "ServiceMonitor")[RELEASE]["spec"]["endpoints"][0]["port"] == "metrics"
    refused = helm(
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.service.enabled=false",
        check=False,
    )
    assert "metrics.serviceMonitor.enabled needs" in refused.stderr


def _pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = objects(docs, "Deployment")[RELEASE]["spec"]["template"]["spec"]
    return spec


def test_lease_endpoint_has_a_service_a_certificate_for_its_name_and_the_flags():
    docs = render()
    service = objects(docs, "Service")[LEASE_SERVICE]
    assert service["spec"]["ports"] == [
        {"name": "leases", "port": 8443, "targetPort": "leases", "protocol": "TCP"}
    ]
    pod = _pod_spec(docs)
    assert {"name": "leases", "containerPort": 8443, "protocol": "TCP"} in pod["containers"][0][
        "ports"
    ]
    mount = {"name": "lease-tls", "mountPath": "/etc/gpubatch/lease", "readOnly": True}
    assert mount in pod["containers"][0]["volumeMounts"]
    secret_name = f"{RELEASE}-lease-tls"
    assert {"name": "lease-tls", "secret": {"secretName": secret_name}} in pod["volumes"]
    secret = objects(docs, "Secret")[secret_name]
    assert secret["type"] == "kubernetes.io/tls"
    cert, ca = (
        x509.load_pem_x509_certificate(base64.b64decode(secret["data"][key]))
        for key in ("tls.crt", "ca.crt")
    )
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert LEASE_DNS in names.get_values_for_type(x509.DNSName)


def test_lease_endpoint_off_or_with_the_users_certificate():
    off = render("leases.enabled=false")
    args = _pod_spec(off)["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--lease")]
    assert LEASE_SERVICE not in objects(off, "Service")
    assert not objects(off, "Secret")
    assert LEASES_ROLE not in objects(off, "ClusterRole")
    own = render("leases.existingSecret=lease-cert-from-cert-manager", "leases.port=9443")
    assert not objects(own, "Secret")
    pod = _pod_spec(own)
    volume = {"name": "lease-tls", "secret": {"secretName": "lease-cert-from-cert-manager"}}
    assert volume in pod["volumes"]
    assert f"--lease-url=https://{LEASE_DNS}:9443/v1/lease" in pod["containers"][0]["args"]


# ----------------------------------------------------------------------------- the install
class StrictTestbed(Testbed):
    """The test bed, plus OwnerReferencesPermissionEnforcement and an audit log that records
    each request as it starts (so long-running watches are seen at once)."""

    def _define_components(self) -> None:
        super()._define_components()
        apiserver = self.components["kube-apiserver"]
        apiserver.argv.append("--enable-admission-plugins=OwnerReferencesPermissionEnforcement")
        (self.workdir / "audit-policy.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived"],
                    "rules": [
                        {"level": "Metadata", "users": list(self.config.audit_users)},
                        {"level": "None"},
                    ],
                }
            )
        )


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    workdir = Path(tmp_path_factory.mktemp("chart-testbed"))
    strict = StrictTestbed.create(TestbedConfig(audit_users=[SA_USER]), workdir=workdir)
    strict.start()
    try:
        yield strict
    finally:
        strict.stop()
        if os.environ.get("GPUBATCH_KEEP_TESTBED_LOGS") is None:
            strict.destroy()


@dataclass
class TestbedCluster(Cluster):
    """The test bed as the user's cluster; the operator is a local process with the
    ServiceAccount's token and the Deployment's arguments."""

    __test__ = False

    bed: Testbed | None = None
    workdir: Path = Path()
    operator: OperatorProcess | None = None
    operator_args: list[str] = field(default_factory=list)
    install_output: str = ""
    lease_port: int = 0

    def start_operator(self) -> None:
        assert self.bed is not None
        self.stop_operator()
        token = self.kubectl(
            "create", "token", self.release, "-n", self.release_namespace, "--duration=2h"
        ).stdout.strip()
        kubeconfig = self.workdir / "kubeconfig-operator-sa"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "bed",
                            "cluster": {
                                "server": self.bed.server,
                                "certificate-authority": str(self.bed.certs.ca_cert),
                            },
                        }
                    ],
                    "users": [{"name": SA_USER, "user": {"token": token}}],
                    "contexts": [{"name": "sa", "context": {"cluster": "bed", "user": SA_USER}}],
                    "current-context": "sa",
                }
            )
        )
        deployment = self.get_json("deployment", self.release, "-n", self.release_namespace)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        # The local process gets free ports instead of the pod's 8080/8081/8443, and the lease
        # certificate from the chart's Secret instead of the pod's mount; the rest is as is.
        local = ("--metrics-port", "--liveness")
        kept = [a for a in args if not a.startswith(local)]
        self.operator_args = [local_arg for a in kept for local_arg in self._local_lease_args(a)]
        self.operator = OperatorProcess(
            testbed=self.bed,
            log_path=self.workdir / "operator.log",
            extra_args=self.operator_args,
            kubeconfig=kubeconfig,
            leases=False,  # the Deployment's own lease flags are in extra_args
        )
        self.operator.start()

    def _local_lease_args(self, arg: str) -> list[str]:
        """The lease flags for a local process: a free port on loopback, and each of
        --lease-cert/key/ca the chart Secret's key, written where the process can read it."""
        flag, _, path = arg.partition("=")
        if flag == "--lease-port":
            self.lease_port = free_port()
            return [f"--lease-port={self.lease_port}", "--lease-host=127.0.0.1"]
        if flag not in ("--lease-cert", "--lease-key", "--lease-ca"):
            return [arg]
        deployment = self.get_json("deployment", self.release, "-n", self.release_namespace)
        [volume] = [
            v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "lease-tls"
        ]
        secret_name = volume["secret"]["secretName"]
        secret = self.get_json("secret", secret_name, "-n", self.release_namespace)
        local = self.workdir / "lease-tls" / Path(path).name
        local.parent.mkdir(exist_ok=True)
        local.write_bytes(base64.b64decode(secret["data"][Path(path).name]))
        return [f"{flag}={local}"]

    def lease_post(self, token: str) -> tuple[int, str]:
        """POST a lease request to the local operator as a pod would: by the Service's DNS name
        (the name the chart's certificate is for), verified with the Secret's ca.crt."""
        context = ssl.create_default_context(cafile=str(self.workdir / "lease-tls" / "ca.crt"))
        url = f"https://127.0.0.1:{self.lease_port}/v1/lease"

        async def post() -> tuple[int, str]:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    url,
                    json={"batchUid": "none"},
                    headers={"Authorization": f"Bearer {token}"},
                    ssl=context,
                    server_hostname=LEASE_DNS,
                ) as response,
            ):
                return response.status, await response.text()

        return asyncio.run(post())

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()

    def tasks_ran(self, example: Example, indexes: Iterable[int]) -> None:
        """kwok runs no containers: write what the task would have written."""
        outputs = example.outputs()
        for index in indexes:
            for path in outputs[index]:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_text(f"task {index}\n")

    def list_outputs(self, example: Example) -> set[str]:
        root = Path(example.output_root)
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    def remove_outputs(self, example: Example, names: Iterable[str]) -> None:
        for name in names:
            (Path(example.output_root) / name).unlink()


@pytest.fixture(scope="module")
def cluster(bed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestbedCluster]:
    workdir = Path(tmp_path_factory.mktemp("chart"))
    user = bed.user_kubeconfig("alice", groups=())  # a namespace user: only the `edit` role
    the_cluster = TestbedCluster(
        kubeconfig=bed.kubeconfig,
        user_kubeconfig=user,
        bin_dir=bed.bin_dir,
        release=RELEASE,
        release_namespace=RELEASE_NS,
        gpu_model="NVIDIA-A100-SXM4-80GB",
        bed=bed,
        workdir=workdir,
    )
    the_cluster.install_output = user_path.install_chart(the_cluster, PARKED)
    try:
        yield the_cluster
    finally:
        the_cluster.stop_operator()
        if the_cluster.operator is not None:
            print(f"operator log: {the_cluster.workdir / 'operator.log'}")


def user_namespace(cluster: TestbedCluster, prefix: str) -> str:
    """A namespace where alice has the built-in `edit` role, and nothing else."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl(
        "create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", name
    )
    return name


def resource_requests(bed: Testbed, since: int) -> list[dict[str, Any]]:
    """The ServiceAccount's requests on API resources since line `since` of the audit log."""
    return [e for e in audited(bed, SA_USER, since) if "objectRef" in e]


def scanning_hint(refused: Iterable[Permission]) -> str:
    """kopf lists CRDs (and, with --namespace, namespaces) unless its cluster scanning is off."""
    if any(resource in ("customresourcedefinitions", "namespaces") for _, resource, _ in refused):
        return (
            "\nkopf scans the cluster: the operator's startup handler must set "
            "settings.scanning.disabled = True (the chart grants no CRD or namespace access)"
        )
    return ""


def permission(event: dict[str, Any]) -> Permission:
    ref = event["objectRef"]
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return (ref.get("apiGroup", ""), resource, event["verb"])


def test_install_created_the_objects_and_the_crd_is_the_charts_and_upgradable(
    cluster: TestbedCluster,
):
    # install_chart (in the fixture) has checked the Deployment, ServiceAccount, Service and
    # roles; here: the CRD came from the chart, the documented upgrade command works on it.
    chart_crd = yaml.safe_load((CHART / "crds" / "gpubatches.gpubatch.io.yaml").read_text())
    live = cluster.get_json("crd", user_path.CRD_NAME)
    assert live["spec"]["versions"][0]["schema"] == chart_crd["spec"]["versions"][0]["schema"]
    crds = cluster.helm("show", "crds", str(CHART)).stdout
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crds)
    # The Deployment's pod exists, parked (see PARKED), with the chart's ServiceAccount.
    pods = cluster.get_json("pods", "-n", RELEASE_NS, "-l", f"app.kubernetes.io/instance={RELEASE}")
    [pod] = pods["items"]
    assert pod["spec"]["serviceAccountName"] == RELEASE
    assert pod["status"]["phase"] == "Pending"


def test_install_notes_tell_the_user_what_to_do_next(cluster: TestbedCluster):
    notes = cluster.install_output.split("NOTES:", 1)[1]
    for expected in (
        f"rollout status deployment/{RELEASE}",
        "kubectl get gpub -w",
        "kubectl wait --for=condition=Complete",
        "no shared storage is mounted",
        "helm show crds",
        "It runs GPUBatches in every namespace.",
    ):
        assert expected in notes, notes


# What the ServiceAccount may and may not do, as the API server's authorizer answers.
CAN = [
    ("list", "gpubatches", "-A"), ("watch", "gpubatches", "-A"), ("patch", "gpubatches", "-A"),
    ("delete", "gpubatches", "-A"), ("patch", "gpubatches", "--subresource=status"),
    ("update", "gpubatches", "--subresource=finalizers"), ("list", "pods", "-A"),
    ("watch", "pods", "-A"), ("create", "pods", "-A"), ("patch", "pods", "-A"),
    ("delete", "pods", "-A"), ("create", "events", "-A"), ("list", "nodes", ""),
    ("watch", "nodes", ""), ("create", "tokenreviews.authentication.k8s.io", ""),
]  # fmt: skip
CANNOT = [
    ("get", "pods", "-A"), ("get", "gpubatches", "-A"), ("create", "gpubatches", "-A"),
    ("update", "gpubatches", "-A"), ("update", "gpubatches", "--subresource=status"),
    ("get", "secrets", "-A"), ("list", "secrets", "-A"), ("list", "configmaps", "-A"),
    ("create", "pods", "--subresource=exec"), ("get", "pods", "--subresource=log"),
    ("get", "nodes", ""), ("patch", "nodes", ""), ("delete", "nodes", ""),
    ("list", "namespaces", ""), ("list", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("patch", "events", "-A"), ("create", "events.events.k8s.io", "-A"),
    ("create", "jobs.batch", "-A"), ("create", "serviceaccounts", "-A"),
    ("create", "serviceaccounts", "--subresource=token"),
]  # fmt: skip


def can_i(cluster: Cluster, verb: str, resource: str, scope: str, namespace: str = "") -> bool:
    where = [scope] if scope else []
    if namespace:
        where = [a for a in where if a != "-A"] + ["-n", namespace]
    done = cluster.kubectl("auth", "can-i", verb, resource, *where, f"--as={SA_USER}", check=False)
    return done.stdout.strip() == "yes"


def test_authorizer_grants_the_service_account_exactly_the_operator_calls(cluster: TestbedCluster):
    refused = [c for c in CAN if not can_i(cluster, *c)]
    allowed = [c for c in CANNOT if can_i(cluster, *c)]
    assert (refused, allowed) == ([], [])


def test_user_path_with_the_charts_identity_uses_exactly_the_granted_permissions(
    cluster: TestbedCluster, bed: Testbed
):
    """The documented path, driven by a namespace user, with the operator as the chart's
    ServiceAccount; the audit log then shows every permission used and none refused."""
    since = audit_offset(bed)
    cluster.start_operator()
    namespace = user_namespace(cluster, "user-path")
    example = user_path.adapt_example(
        output_root=str(cluster.workdir / "data" / "hello-gpubatch"),
        data_volume={"emptyDir": {}},
        pod_annotations={"sim.gpubatch.io/duration": f"{int(SIM_SECONDS * 1000)}ms"},
    )
    user_path.apply(cluster, namespace, example)
    user_path.wait_complete(cluster, namespace, example)
    user_path.expect_first_run(cluster, namespace, example)
    user_path.expect_events(cluster, namespace, example, "Started", "Completed")
    user_path.expect_rerun_skips_finished_tasks(cluster, namespace, example, redo=[0, 4])

    # The lease endpoint, reached by the Service's name with the chart's CA: the operator checks
    # the token with a TokenReview (a token that names no pod is refused whatever the batch).
    not_a_pod = cluster.kubectl(
        "create", "token", "default", "-n", namespace, "--audience=gpubatch.io/lease"
    ).stdout.strip()
    assert cluster.lease_post(not_a_pod) == (
        403,
        f"system:serviceaccount:{namespace}:default is not a pod: present the pod's projected "
        "service-account token for audience gpubatch.io/lease",
    )

    # The rest of a batch's life: a failed task (Warning event, kept pod) and the TTL delete.
    ttl = batch(
        "ttl-and-failure",
        tasks={"range": {"start": 0, "stop": 3}},
        duration="300ms",
        annotations={"sim.gpubatch.io/fail-indexes": "1"},
        retry={"limit": 0},
        ttlSecondsAfterFinished=1,
    )
    cluster.user_kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(ttl))
    user_path.wait_until(
        lambda: (
            cluster.user_kubectl(
                "get", "gpub", "ttl-and-failure", "-n", namespace, check=False
            ).returncode
            != 0
        ),
        timeout=90,
        what="the TTL to delete the finished batch",
    )
    user_path.uninstall_batches(cluster, [namespace])

    events = resource_requests(bed, since)
    refused = sorted({permission(e) for e in events if e["responseStatus"]["code"] == 403})
    assert refused == [], f"requests refused: {refused}{scanning_hint(refused)}"
    used = {permission(e) for e in events}
    assert used == set(OPERATOR_PERMISSIONS) - ADMISSION_ONLY, (
        f"used but not expected: {used - set(OPERATOR_PERMISSIONS)}; "
        f"granted but unused: {set(OPERATOR_PERMISSIONS) - ADMISSION_ONLY - used}"
    )
    # Cluster-wide mode: kopf lists and watches across all namespaces.
    watches = {
        (e["objectRef"]["resource"], e["objectRef"].get("namespace"))
        for e in events
        if e["verb"] == "watch"
    }
    assert watches == {("gpubatches", None), ("pods", None), ("nodes", None)}


# ----------------------------------------------------------------------------- removal experiments
def _clean(role: dict[str, Any]) -> dict[str, Any]:
    role = copy.deepcopy(role)
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
        role["metadata"].pop(key, None)
    return role


def _strip(role: dict[str, Any], removed: set[Permission]) -> dict[str, Any]:
    role = _clean(role)
    rules = []
    for rule in role["rules"]:
        verbs = [
            v
            for v in rule["verbs"]
            if not any((g, r, v) in removed for g in rule["apiGroups"] for r in rule["resources"])
        ]
        if verbs:
            rules.append({**rule, "verbs": verbs})
    role["rules"] = rules
    return role


@contextlib.contextmanager
def without(cluster: TestbedCluster, removed: set[Permission]) -> Iterator[None]:
    """The chart's ClusterRoles minus `removed`, until the block ends."""
    roles = (ROLE, NODES_ROLE, LEASES_ROLE)
    originals = [cluster.get_json("clusterrole", name) for name in roles]
    try:
        for role in originals:
            cluster.kubectl("replace", "-f", "-", input=json.dumps(_strip(role, removed)))
        group, resource, verb = next(iter(removed))
        name, _, sub = resource.partition("/")
        target = f"{name}.{group}" if group else name
        scope = ["--subresource", sub] if sub else []
        user_path.wait_until(
            lambda: (
                cluster.kubectl(
                    "auth", "can-i", verb, target, *scope, "-A", f"--as={SA_USER}", check=False
                ).stdout.strip()
                == "no"
            ),
            timeout=10,
            what=f"the authorizer to drop {removed}",
            interval=0.2,
        )
        yield
    finally:
        for role in originals:
            cluster.kubectl("replace", "-f", "-", input=json.dumps(_clean(role)))


def _status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.user_get_json("gpubatch", name, "-n", ns).get("status") or {})


def _condition(cluster: Cluster, ns: str, name: str, type_: str) -> dict[str, Any] | None:
    for cond in _status(cluster, ns, name).get("conditions") or []:
        if cond["type"] == type_ and cond["status"] == "True":
            return dict(cond)
    return None


def _task_pods(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return list(cluster.get_json("pods", "-n", ns, "-l", "gpubatch.io/batch-uid")["items"])


def _holds_still(check: Callable[[], bool], seconds: float, what: str) -> None:
    """`check` stays true for `seconds` (the breakage is not just slowness)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), f"no longer true: {what}"
        time.sleep(0.5)


# A healthy operator starts the first pod of a batch within about a second and writes the status
# before it; "nothing happened" is judged over this window.
QUIET_SECONDS = 8.0


def _nothing_happens(cluster: TestbedCluster, ns: str) -> None:
    _holds_still(
        lambda: not _status(cluster, ns, "probe") and not _task_pods(cluster, ns),
        QUIET_SECONDS,
        "the batch has no status and no pods",
    )


def _completes_but_pods_remain(cluster: TestbedCluster, ns: str) -> None:
    user_path.wait_until(
        lambda: _condition(cluster, ns, "probe", "Complete"), timeout=60, what="Complete"
    )
    _holds_still(
        lambda: len(_task_pods(cluster, ns)) == 2, 3, "both succeeded pods are still there"
    )


def _completes_but_pods_keep_the_finalizer(cluster: TestbedCluster, ns: str) -> None:
    user_path.wait_until(
        lambda: _condition(cluster, ns, "probe", "Complete"), timeout=60, what="Complete"
    )
    _holds_still(
        lambda: (
            all(
                "gpubatch.io/task-tracking" in (p["metadata"].get("finalizers") or [])
                for p in _task_pods(cluster, ns)
            )
            and len(_task_pods(cluster, ns)) == 2
        ),
        3,
        "both pods still hold the tracking finalizer",
    )


def _fails_because_pods_are_refused(message: str) -> Callable[[TestbedCluster, str], None]:
    def check(cluster: TestbedCluster, ns: str) -> None:
        failed = user_path.wait_until(
            lambda: _condition(cluster, ns, "probe", "Failed"), timeout=60, what="Failed"
        )
        assert message in failed["message"], failed
        assert not _task_pods(cluster, ns)

    return check


def _completes_without_events(cluster: TestbedCluster, ns: str) -> None:
    user_path.wait_until(
        lambda: _condition(cluster, ns, "probe", "Complete"), timeout=60, what="Complete"
    )
    time.sleep(1)
    events = cluster.get_json("events", "-n", ns, "--field-selector", "involvedObject.name=probe")
    assert events["items"] == []


def _lease_requests_cannot_be_checked(cluster: TestbedCluster, ns: str) -> None:
    assert cluster.bed is not None
    cluster.bed.wait_for_default_service_account(ns)
    token = cluster.kubectl(
        "create", "token", "default", "-n", ns, "--audience=gpubatch.io/lease"
    ).stdout.strip()
    # 503, not 401: the worker asks again, and gets in once the permission is back.
    assert cluster.lease_post(token) == (503, "cannot check the token now; ask again")
    user_path.wait_until(
        lambda: _condition(cluster, ns, "probe", "Complete"), timeout=60, what="Complete"
    )


def _ttl_cannot_delete(cluster: TestbedCluster, ns: str) -> None:
    user_path.wait_until(
        lambda: _condition(cluster, ns, "probe", "Complete"), timeout=60, what="Complete"
    )
    _holds_still(
        lambda: cluster.user_kubectl("get", "gpub", "probe", "-n", ns, check=False).returncode == 0,
        4,
        "the batch outlives its ttlSecondsAfterFinished of 1 s",
    )


@dataclass(frozen=True)
class Removal:
    removed: frozenset[Permission]
    check: Callable[[TestbedCluster, str], None]
    refused: frozenset[Permission]  # the requests the audit log shows refused (403)


REMOVALS = {
    # Without these the operator cannot do its job at all:
    "status-patch": Removal(
        frozenset({("gpubatch.io", "gpubatches/status", "patch")}),
        _nothing_happens,  # the status is written before any pod is created
        frozenset({("gpubatch.io", "gpubatches/status", "patch")}),
    ),
    "nodes-list-watch": Removal(
        frozenset({("", "nodes", "list"), ("", "nodes", "watch")}),
        _nothing_happens,  # kopf runs no handler until its node index is filled
        frozenset({("", "nodes", "list")}),
    ),
    "pods-create": Removal(
        frozenset({("", "pods", "create")}),
        _fails_because_pods_are_refused('cannot create resource "pods"'),
        frozenset({("", "pods", "create")}),
    ),
    # Only on API servers that enforce owner-reference permissions (this one does):
    "finalizers-update": Removal(
        frozenset({("gpubatch.io", "gpubatches/finalizers", "update")}),
        _fails_because_pods_are_refused("blockOwnerDeletion"),
        frozenset({("", "pods", "create")}),  # refused by admission, not by the authorizer
    ),
    # Without these the batch completes, but leaves a mess or tells nobody:
    "pods-delete": Removal(
        frozenset({("", "pods", "delete")}),
        _completes_but_pods_remain,
        frozenset({("", "pods", "delete")}),
    ),
    "pods-patch": Removal(
        frozenset({("", "pods", "patch")}),
        _completes_but_pods_keep_the_finalizer,
        frozenset({("", "pods", "patch")}),
    ),
    "events-create": Removal(
        frozenset({("", "events", "create")}),
        _completes_without_events,
        frozenset({("", "events", "create")}),
    ),
    "gpubatches-delete": Removal(
        frozenset({("gpubatch.io", "gpubatches", "delete")}),
        _ttl_cannot_delete,
        frozenset({("gpubatch.io", "gpubatches", "delete")}),
    ),
    # Without this, pod-per-task batches run, but no warm pod gets work:
    "tokenreviews-create": Removal(
        frozenset({("authentication.k8s.io", "tokenreviews", "create")}),
        _lease_requests_cannot_be_checked,
        frozenset({("authentication.k8s.io", "tokenreviews", "create")}),
    ),
}


@pytest.mark.parametrize("name", list(REMOVALS))
def test_removing_one_permission_breaks_the_operator(
    cluster: TestbedCluster, bed: Testbed, name: str
):
    """Each experiment: the operator restarted without one rule, a two-task batch, what breaks;
    then the rule is restored and the same operator repairs what it could not do."""
    removal = REMOVALS[name]
    namespace = user_namespace(cluster, f"without-{name}")
    probe = batch("probe", tasks={"range": {"start": 0, "stop": 2}}, duration="300ms")
    if name == "gpubatches-delete":
        probe["spec"]["ttlSecondsAfterFinished"] = 1
    cluster.stop_operator()
    since = audit_offset(bed)
    with without(cluster, set(removal.removed)):
        cluster.start_operator()
        cluster.user_kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(probe))
        removal.check(cluster, namespace)
        cluster.stop_operator()
    refused = {
        permission(e) for e in resource_requests(bed, since) if e["responseStatus"]["code"] == 403
    }
    assert refused == removal.refused, f"refused: {refused}{scanning_hint(refused)}"
    # With every permission back, the operator finishes what it could not do.
    cluster.start_operator()
    if name != "gpubatches-delete":
        user_path.wait_until(
            lambda: (
                _condition(cluster, namespace, "probe", "Complete")
                or _condition(cluster, namespace, "probe", "Failed")
            ),
            timeout=60,
            what="the batch to end",
        )
    user_path.uninstall_batches(cluster, [namespace])
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


# ----------------------------------------------------------------------------- namespaced mode
def test_watch_namespaces_mode_runs_batches_only_there_with_namespaced_access(
    cluster: TestbedCluster, bed: Testbed
):
    watched = user_namespace(cluster, "watched")
    other = user_namespace(cluster, "other")
    cluster.stop_operator()
    values = cluster.workdir / "namespaced-values.yaml"
    values.write_text(yaml.safe_dump({**PARKED, "watchNamespaces": [watched]}))
    lease_tls = f"{RELEASE}-lease-tls"
    certificate = cluster.get_json("secret", lease_tls, "-n", RELEASE_NS)["data"]
    cluster.helm(
        "upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "--reset-values", "--values", str(values)
    )
    # The chart's lease certificate survives the upgrade (running warm pods keep trusting it).
    assert cluster.get_json("secret", lease_tls, "-n", RELEASE_NS)["data"] == certificate
    try:
        assert cluster.kubectl("get", "clusterrolebinding", ROLE, check=False).returncode != 0
        binding = cluster.get_json("rolebinding", RELEASE, "-n", watched)
        assert binding["roleRef"]["name"] == ROLE
        assert can_i(cluster, "list", "pods", "", namespace=watched)
        assert not can_i(cluster, "list", "pods", "", namespace=other)
        assert not can_i(cluster, "list", "pods", "-A")
        assert can_i(cluster, "list", "nodes", "")

        since = audit_offset(bed)
        cluster.start_operator()
        assert f"--namespace={watched}" in cluster.operator_args
        probe = yaml.safe_dump(batch("probe", tasks={"range": {"start": 0, "stop": 2}}))
        for namespace in (other, watched):
            cluster.user_kubectl("apply", "-n", namespace, "-f", "-", input=probe)
        user_path.wait_until(
            lambda: _condition(cluster, watched, "probe", "Complete"), timeout=60, what="Complete"
        )
        assert not _status(cluster, other, "probe") and not _task_pods(cluster, other)
        user_path.uninstall_batches(cluster, [watched])

        events = resource_requests(bed, since)
        refused = {permission(e) for e in events if e["responseStatus"]["code"] == 403}
        assert not refused, f"refused: {refused}{scanning_hint(refused)}"
        where = {(e["objectRef"]["resource"], e["objectRef"].get("namespace")) for e in events}
        assert {ns for resource, ns in where if resource != "nodes"} == {watched}
        watches = {
            (e["objectRef"]["resource"], e["objectRef"].get("namespace"))
            for e in events
            if e["verb"] == "watch"
        }
        assert watches == {("gpubatches", watched), ("pods", watched), ("nodes", None)}
    finally:
        cluster.stop_operator()
        values.write_text(yaml.safe_dump(PARKED))
        cluster.helm(
            "upgrade",
            RELEASE,
            str(CHART),
            "-n",
            RELEASE_NS,
            "--reset-values",
            "--values",
            str(values),
        )
        cluster.kubectl("delete", "namespace", watched, other, "--wait=false")
    assert cluster.get_json("clusterrolebinding", ROLE)["roleRef"]["name"] == ROLE


# ----------------------------------------------------------------------------- uninstall
def test_uninstall_removes_the_release_and_keeps_the_crd(cluster: TestbedCluster):
    cluster.start_operator()
    namespace = user_namespace(cluster, "last")
    probe = yaml.safe_dump(batch("probe", tasks={"range": {"start": 0, "stop": 2}}, duration="30s"))
    cluster.user_kubectl("apply", "-n", namespace, "-f", "-", input=probe)
    user_path.wait_until(lambda: _task_pods(cluster, namespace), timeout=30, what="task pods")
    user_path.uninstall(cluster, [namespace])  # deletes the running batch first, then the chart
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
