"""A real Kubernetes control plane on loopback, with kwok playing GPU nodes.

etcd + kube-apiserver + kube-scheduler + kube-controller-manager + kwok, all real binaries built
from Go modules (tests/testbed/testbin.sh). Nothing here is mocked: the scheduler really binds
pods and enforces `nvidia.com/gpu` allocatable, the controller-manager really runs Jobs, garbage
collection and namespace deletion, and kwok moves pods through their lifecycle by our Stages.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed import certs
from testbed.nodes import GpuNodePool, node_manifest
from testbed.processes import Component, StartError, free_port, wait_until
from testbed.realnode import images
from testbed.realnode.node import POD_GATEWAY, RealNode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
KWOK_CONFIG = HERE / "kwok-config.yaml"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager")
COMPONENTS = (*CONTROL_PLANE, "kube-scheduler", "kwok")


def testbin_dir() -> Path:
    """Build (or find cached) binaries and return their folder."""
    result = subprocess.run(
        ["bash", str(HERE / "testbin.sh")], stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode != 0:
        raise StartError("building the test-bed binaries failed (see the output above)")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class TestbedConfig:
    """What to start. The defaults suit the test suite: two 8-GPU nodes of one model."""

    __test__ = False  # not a pytest test class

    node_pools: list[GpuNodePool] = field(
        default_factory=lambda: [GpuNodePool(name="gpu", count=2, gpus=8)]
    )
    # kube-controller-manager client rate limits, stated because benchmarks compare with the Job
    # controller (its defaults are 20 QPS / burst 30).
    controller_manager_qps: int = 20
    controller_manager_burst: int = 30
    scheduler_qps: int = 200
    scheduler_burst: int = 400
    # Users whose requests kube-apiserver writes to an audit log (one JSON line per request),
    # so a benchmark can count exactly the API calls one client made.
    audit_users: list[str] = field(default_factory=list)
    # One real node (containerd + kubelet on this machine, real containers) beside the kwok
    # nodes; needs root. See testbed/realnode.
    real_node: bool = False
    # etcd, kube-apiserver and kube-controller-manager only: no scheduler, no kwok, no nodes.
    # For a cluster that only holds objects (a MultiKueue manager, whose work runs on a worker
    # cluster), at a third of the processes' cost on a small machine.
    control_plane_only: bool = False

    def __post_init__(self) -> None:
        if self.control_plane_only and self.real_node:
            raise ValueError(
                "a control-plane-only test bed runs no nodes: set real_node=False "
                "or control_plane_only=False"
            )

    def components(self) -> tuple[str, ...]:
        """The processes this test bed runs, in start order."""
        return CONTROL_PLANE if self.control_plane_only else COMPONENTS


@dataclass
class Testbed:
    """A running (or stopped) test bed; `start()` and `stop()` are idempotent."""

    __test__ = False

    bin_dir: Path
    workdir: Path
    config: TestbedConfig = field(default_factory=TestbedConfig)
    tied: bool = True
    ports: dict[str, int] = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)
    real: RealNode | None = None
    _api: Any = field(default=None, repr=False)

    # ----------------------------------------------------------------------------- paths
    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "logs" / "audit.log"

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ("system:masters",)) -> Path:
        """A kubeconfig for a client with its own identity (`user`, in `groups`)."""
        client = certs.client_certificate(self.certs, self.workdir / "pki", user, groups)
        path = self.workdir / f"kubeconfig-{user}"
        certs.write_kubeconfig(path, self.server, self.certs, user=user, client=client)
        return path

    def embedded_kubeconfig(self) -> Path:
        """The admin kubeconfig with the certificates and key inside it, for a reader that
        cannot open this machine's files by path (a MultiKueue manager's Secret)."""
        path = self.workdir / "kubeconfig-embedded"
        certs.write_kubeconfig(path, self.server, self.certs, embed=True)
        path.chmod(0o600)
        return path

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def certs(self) -> certs.CertPaths:
        return certs.CertPaths(
            ca_cert=self.workdir / "pki/ca.crt",
            ca_key=self.workdir / "pki/ca.key",
            serving_cert=self.workdir / "pki/apiserver.crt",
            serving_key=self.workdir / "pki/apiserver.key",
            admin_cert=self.workdir / "pki/admin.crt",
            admin_key=self.workdir / "pki/admin.key",
            kubelet_client_cert=self.workdir / "pki/apiserver-kubelet-client.crt",
            kubelet_client_key=self.workdir / "pki/apiserver-kubelet-client.key",
            sa_key=self.workdir / "pki/sa.key",
            sa_pub=self.workdir / "pki/sa.pub",
        )

    # ----------------------------------------------------------------------------- lifecycle
    @classmethod
    def create(
        cls,
        config: TestbedConfig | None = None,
        *,
        workdir: Path | None = None,
        bin_dir: Path | None = None,
        tied: bool = True,
    ) -> Testbed:
        workdir = workdir or Path(tempfile.mkdtemp(prefix="gpubatch-testbed-"))
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(
            bin_dir=bin_dir or testbin_dir(),
            workdir=workdir,
            config=config or TestbedConfig(),
            tied=tied,
        )

    def start(self) -> float:
        """Start every component and the GPU nodes; return the seconds it took."""
        began = time.monotonic()
        certs.generate(self.workdir / "pki", extra_ips=(POD_GATEWAY,))
        for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok"):
            self.ports.setdefault(name, free_port())
        certs.write_kubeconfig(self.kubeconfig, self.server, self.certs)
        self._define_components()
        try:
            for name in self.config.components():
                self._start_component(name)
            if not self.config.control_plane_only:
                self.create_nodes(self.config.node_pools)
            self.wait_for_default_service_account("default")
            if self.config.real_node:
                self.start_real_node()
        except BaseException:
            self.stop()
            raise
        self._save_state()
        return time.monotonic() - began

    def start_real_node(self) -> RealNode:
        """Build (or find cached) the node's images and start the real node."""
        if self.real is None:
            self.real = RealNode(testbed=self, images=images.build_all())
        self.real.start()
        self._save_state()
        return self.real

    def stop(self) -> None:
        """Stop in reverse order of dependency (the real node first, which also puts the host
        back as it was); the etcd data goes with the workdir."""
        if self.real is not None:
            self.real.stop()
        for name in reversed(COMPONENTS):
            component = self.components.get(name)
            if component is not None:
                component.stop()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ----------------------------------------------------------------------------- components
    def _define_components(self) -> None:
        b, c, w, p = self.bin_dir, self.certs, self.workdir, self.ports
        logs = w / "logs"
        logs.mkdir(exist_ok=True)
        etcd_url = f"http://127.0.0.1:{p['etcd']}"
        peer_url = f"http://127.0.0.1:{p['etcd-peer']}"
        kc = str(self.kubeconfig)
        scheduler_config = w / "scheduler-config.yaml"
        scheduler_config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {
                        "kubeconfig": kc,
                        "qps": self.config.scheduler_qps,
                        "burst": self.config.scheduler_burst,
                    },
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        argvs: dict[str, list[str]] = {
            "etcd": [
                str(b / "etcd"),
                "--name=testbed",
                f"--data-dir={w / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=testbed={peer_url}",
                "--unsafe-no-fsync=true",  # a test bed, not a database: trade durability for speed
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ],
            "kube-apiserver": [
                str(b / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={p['apiserver']}",
                f"--tls-cert-file={c.serving_cert}",
                f"--tls-private-key-file={c.serving_key}",
                f"--client-ca-file={c.ca_cert}",
                f"--service-account-key-file={c.sa_pub}",
                f"--service-account-signing-key-file={c.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                "--event-ttl=1h",
                f"--cert-dir={w / 'pki'}",
                # How the API server reaches a real node's kubelet (logs, exec): with its own
                # client certificate, at the node's Hostname (which resolves to loopback, where
                # the kubelet listens). kwok nodes serve no kubelet API either way.
                f"--kubelet-client-certificate={c.kubelet_client_cert}",
                f"--kubelet-client-key={c.kubelet_client_key}",
                "--kubelet-preferred-address-types=Hostname,InternalIP,ExternalIP",
            ],
            "kube-controller-manager": [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['controller-manager']}",
                "--leader-elect=false",
                f"--service-account-private-key-file={c.sa_key}",
                f"--root-ca-file={c.ca_cert}",
                "--use-service-account-credentials=true",
                f"--kube-api-qps={self.config.controller_manager_qps}",
                f"--kube-api-burst={self.config.controller_manager_burst}",
                "--controllers=*",
            ],
            "kube-scheduler": [
                str(b / "kube-scheduler"),
                f"--config={scheduler_config}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
            ],
            "kwok": [
                str(b / "kwok"),
                f"--kubeconfig={kc}",
                f"--config={KWOK_CONFIG}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--server-address=127.0.0.1:{p['kwok']}",
                "--node-ip=10.255.0.1",
            ],
        }
        if self.config.audit_users:
            policy = w / "audit-policy.yaml"
            policy.write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "audit.k8s.io/v1",
                        "kind": "Policy",
                        "omitStages": ["RequestReceived", "ResponseStarted"],
                        "rules": [
                            {"level": "Metadata", "users": list(self.config.audit_users)},
                            {"level": "None"},
                        ],
                    }
                )
            )
            argvs["kube-apiserver"] += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
            ]
        for name in self.config.components():
            self.components[name] = Component(
                name=name, argv=argvs[name], log_path=logs / f"{name}.log", tied=self.tied
            )

    def _start_component(self, name: str) -> None:
        component = self.components[name]
        component.start()
        health = {
            "etcd": lambda: self._http_ok(f"http://127.0.0.1:{self.ports['etcd']}/health"),
            "kube-apiserver": lambda: self._http_ok(f"{self.server}/readyz"),
            "kube-controller-manager": lambda: self._http_ok(
                f"https://127.0.0.1:{self.ports['controller-manager']}/healthz"
            ),
            "kube-scheduler": lambda: self._http_ok(
                f"https://127.0.0.1:{self.ports['scheduler']}/healthz"
            ),
            "kwok": lambda: self._http_ok(f"http://127.0.0.1:{self.ports['kwok']}/healthz"),
        }[name]
        wait_until(health, timeout=90, what=f"{name} to be healthy", component=component)

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.certs.ca_cert))
        context.load_cert_chain(str(self.certs.admin_cert), str(self.certs.admin_key))
        return context

    def _http_ok(self, url: str) -> bool:
        context: ssl.SSLContext | None = None
        if url.startswith("https://127.0.0.1:" + str(self.ports["apiserver"])):
            context = self._ssl_context()
        elif url.startswith("https://"):
            # controller-manager and scheduler serve self-signed certificates on loopback.
            context = ssl._create_unverified_context()
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)

    # ----------------------------------------------------------------------------- chaos support
    def restart(self, name: str, *, kill: bool = False) -> float:
        """Stop (or SIGKILL) one component and start it again on the same port and data."""
        began = time.monotonic()
        component = self.components[name]
        component.kill() if kill else component.stop()
        if name == "kwok":
            self._release_node_leases()
        self._start_component(name)
        if name == "kwok":
            self._touch_pods_on_kwok_nodes()
        self._save_state()
        return time.monotonic() - began

    def _touch_pods_on_kwok_nodes(self) -> None:
        """A restarted kwok (v0.8.0) can leave the pods already on its nodes untouched for 5 to
        10 minutes: it lists a node's pods as it creates the node's lease, and a pod it sees
        before its own lease cache has the new lease is skipped as not its own, until the pod
        changes or kwok's watch relists (seen in the etcd chaos run: 40 tasks took 570 s instead
        of 30, or a deleted pod stayed Terminating). Once every kwok node has its lease again,
        change each pod on one (an annotation nothing reads): the event kwok acts on."""
        core = self.core_v1()
        fake = {
            n.metadata.name
            for n in core.list_node().items
            if (n.metadata.annotations or {}).get("kwok.x-k8s.io/node") == "fake"
        }

        def leases_back() -> bool:
            leases = self.coordination_v1().list_namespaced_lease("kube-node-lease").items
            return fake <= {lease.metadata.name for lease in leases}

        wait_until(leases_back, timeout=60, what="kwok to hold its node leases again")
        touched = {
            "metadata": {"annotations": {"sim.gpubatch.io/kwok-restarted": str(time.time())}}
        }
        for pod in core.list_pod_for_all_namespaces().items:
            if pod.spec.node_name in fake:
                try:
                    core.patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace, touched)
                except Exception as error:  # gone since the list: nothing to touch
                    if getattr(error, "status", None) != 404:
                        raise

    def _release_node_leases(self) -> None:
        """A restarted kubelet renews its node's lease under the same identity (the node name);
        a restarted kwok has a new random identity, waits out the old holder's lease and, once
        it takes the lease over, does not pick up the pods already on the node (seen with kwok
        v0.8.0: pods left Running past their duration). Deleting the dead holder's leases
        lets the new kwok create them at start-up, as a restarted kubelet would carry on."""
        from kubernetes.client.rest import ApiException

        leases = self.coordination_v1()
        for lease in leases.list_namespaced_lease("kube-node-lease").items:
            try:
                leases.delete_namespaced_lease(lease.metadata.name, "kube-node-lease")
            except ApiException as error:
                if error.status != 404:
                    raise

    def restart_apiserver(self) -> float:
        return self.restart("kube-apiserver")

    def restart_etcd(self) -> float:
        return self.restart("etcd")

    def delete_node(self, name: str) -> None:
        self.core_v1().delete_node(name)

    # ----------------------------------------------------------------------------- API helpers
    def api_client(self) -> Any:
        """A fresh kubernetes.client.ApiClient for the admin identity."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        return client.ApiClient(configuration)

    def core_v1(self) -> Any:
        from kubernetes import client

        if self._api is None:
            self._api = self.api_client()
        return client.CoreV1Api(self._api)

    def coordination_v1(self) -> Any:
        from kubernetes import client

        return client.CoordinationV1Api(self.api_client())

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this test bed."""
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result

    def create_nodes(self, pools: Iterable[GpuNodePool]) -> list[str]:
        """Create fake GPU nodes and wait until kwok reports them Ready."""
        api = self.core_v1()
        names: list[str] = []
        for pool in pools:
            for i in range(pool.count):
                manifest = node_manifest(pool, i)
                api.create_node(manifest)
                names.append(manifest["metadata"]["name"])

        def all_ready() -> bool:
            ready = set()
            for node in api.list_node().items:
                for cond in node.status.conditions or []:
                    if cond.type == "Ready" and cond.status == "True":
                        ready.add(node.metadata.name)
            return set(names) <= ready

        wait_until(
            all_ready,
            timeout=60,
            what=f"nodes {names} Ready",
            component=self.components.get("kwok"),
        )
        return names

    def create_namespace(self, name: str) -> str:
        """Create a namespace and wait for its default ServiceAccount (pods need it)."""
        from kubernetes import client

        self.core_v1().create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        self.wait_for_default_service_account(name)
        return name

    def wait_for_default_service_account(self, namespace: str) -> None:
        api = self.core_v1()

        def present() -> bool:
            api.read_namespaced_service_account("default", namespace)
            return True

        wait_until(
            present,
            timeout=60,
            what=f"ServiceAccount default in {namespace}",
            component=self.components.get("kube-controller-manager"),
        )

    # ----------------------------------------------------------------------------- state file
    def _save_state(self) -> None:
        state = {
            "workdir": str(self.workdir),
            "bin_dir": str(self.bin_dir),
            "kubeconfig": str(self.kubeconfig),
            "ports": self.ports,
            "pids": {name: comp.pid for name, comp in self.components.items()},
            "real_node": self.real.to_state() if self.real is not None else None,
            "config": asdict(self.config),
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def from_state(cls, workdir: Path) -> Testbed:
        """Re-attach to a detached test bed (for `testbed down` / `status`)."""
        state = json.loads((workdir / "state.json").read_text())
        real_state = state.pop("real_node", None)
        pools = [GpuNodePool(**pool) for pool in state["config"].pop("node_pools")]
        bed = cls(
            bin_dir=Path(state["bin_dir"]),
            workdir=workdir,
            config=TestbedConfig(node_pools=pools, **state["config"]),
            tied=False,
            ports=state["ports"],
        )
        bed._define_components()
        for name, pid in state["pids"].items():
            bed.components[name].pid = pid
        if real_state is not None:
            bed.real = RealNode.from_state(bed, real_state)
        return bed

    def all_components(self) -> dict[str, Component]:
        """The control plane's components and, with a real node, containerd and the kubelet."""
        return {**self.components, **(self.real.components if self.real else {})}

    def summary(self) -> str:
        alive = ", ".join(
            f"{name}={'up' if comp.alive() else 'DOWN'}"
            for name, comp in self.all_components().items()
        )
        return f"server {self.server}; {alive}"


def env_with_kubeconfig(bed: Testbed, extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """Environment for a subprocess that talks to the test bed (KUBECONFIG, kubectl on PATH)."""
    env = dict(os.environ)
    env["KUBECONFIG"] = str(bed.kubeconfig)
    env["PATH"] = f"{bed.bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(dict(extra))
    return env
