"""A real node in the test bed: containerd and a kubelet on this machine, joined with a node
certificate from the test bed's CA, running real containers from locally built images.

Everything lives in one state folder except what the kubelet and containerd change machine-wide
(see hoststate.py); that is recorded before start and put back by `stop()`. Only one real node can
run per machine: the bridge, the `/kubepods` cgroups and a few fixed paths are shared.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from testbed import certs
from testbed.nodes import GPU_MODEL_LABEL, GPU_RESOURCE
from testbed.processes import Component, StartError, free_port, wait_until
from testbed.realnode.hoststate import BRIDGE, CGROUP_ROOT, HostState
from testbed.realnode.images import BuiltImage, NodeImages

if TYPE_CHECKING:
    from testbed.controlplane import Testbed

REAL_NODE_MODEL = "Testbed-Real-Node"
REAL_POOL_LABEL = "gpubatch.io/testbed-pool"
REAL_NODE_TAINT = "gpubatch.io/real-node"
NODE_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "nft", "umount")
POD_SUBNET = "10.244.250.0/24"
# The bridge's own address: pods' default route, where the kubelet's probes come from, and where
# the API forwarder (apiproxy.py) listens for pods that talk to the API server.
POD_GATEWAY = "10.244.250.1"
# The only way a caller can know the kubelet's pods are gone: nothing left in these cgroups.
POD_CGROUP = "kubepods"


def unavailable_reason() -> str | None:
    """Why this machine cannot run containers at all (then real-node tests skip), or None."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, runc, cgroups, mounts)"
    if not CGROUP_ROOT.is_dir():
        return "no cgroup filesystem at /sys/fs/cgroup"
    return None


@dataclass
class RealNode:
    """containerd + kubelet as test-bed components; `start()`/`stop()` may be called again."""

    testbed: Testbed
    images: NodeImages
    gpus: int = 4
    model: str = REAL_NODE_MODEL
    name: str = field(default_factory=lambda: socket.gethostname().lower())
    components: dict[str, Component] = field(default_factory=dict)
    host_before: HostState | None = None
    ports: dict[str, int] = field(default_factory=dict)
    _kubelet_started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    _leases: Any = field(default=None, repr=False)

    @property
    def folder(self) -> Path:
        return self.testbed.workdir / "realnode"

    @property
    def socket_path(self) -> Path:
        return self.folder / "containerd" / "containerd.sock"

    # ----------------------------------------------------------------------------- lifecycle
    def start(self) -> float:
        """Record the host, start containerd, load images, start the kubelet, patch in GPUs."""
        began = time.monotonic()
        missing = [tool for tool in NODE_TOOLS if shutil.which(tool) is None]
        if missing:
            raise StartError(
                f"{', '.join(missing)} not found: install the real node's Debian packages with "
                "`make realnode-packages` (tests/testbed/realnode/packages.sh)"
            )
        if self.host_before is None:
            _clear_leftovers()
            self.host_before = HostState.capture()
        try:
            self._write_configs()
            _make_bridge()
            self._start("apiproxy", self._apiproxy_ready)
            self._start("containerd", self._containerd_ready)
            self._import_images()
            self._kubelet_started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            self._start("kubelet", self._node_ready)
            self._advertise_gpus()
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - began

    def stop(self) -> list[str]:
        """Stop the kubelet, then every pod process, then containerd and its shims, and put the
        host back. Returns what differs from before start (empty when all was undone)."""
        kubelet, containerd = self.components.get("kubelet"), self.components.get("containerd")
        if kubelet is not None:
            kubelet.stop(grace=15)
        _kill_cgroup(POD_CGROUP)
        if containerd is not None:
            containerd.stop(grace=20)
        _kill_shims(self.socket_path)
        if "apiproxy" in self.components:
            self.components["apiproxy"].stop()
        problems: list[str] = []
        if self.host_before is not None:
            problems = self.host_before.restore()
            self.host_before = None  # a restart records the host afresh
        return problems

    def _start(self, name: str, ready: Any) -> None:
        component = self.components[name]
        component.start()
        wait_until(ready, timeout=120, what=f"{name} to be ready", component=component)

    # ----------------------------------------------------------------------------- state file
    def to_state(self) -> dict[str, Any]:
        """What `testbed down` needs to stop a detached node and put the host back."""
        return {
            "name": self.name,
            "gpus": self.gpus,
            "model": self.model,
            "ports": self.ports,
            "images": {k: [v.ref, str(v.archive)] for k, v in self.images.as_dict().items()},
            "pids": {name: comp.pid for name, comp in self.components.items()},
            "host_before": self.host_before.to_json() if self.host_before else None,
        }

    @classmethod
    def from_state(cls, testbed: Testbed, state: dict[str, Any]) -> RealNode:
        node = cls(
            testbed=testbed,
            images=NodeImages.from_dict(
                {k: BuiltImage(ref, Path(archive)) for k, (ref, archive) in state["images"].items()}
            ),
            gpus=state["gpus"],
            model=state["model"],
            name=state["name"],
            ports=state["ports"],
            host_before=HostState.from_json(state["host_before"]) if state["host_before"] else None,
        )
        node._define_components()
        for name, pid in state["pids"].items():
            node.components[name].pid = pid
        return node

    # ----------------------------------------------------------------------------- configs
    def _write_configs(self) -> None:
        f = self.folder
        for sub in ("containerd", "cni/net.d", "cni/ipam", "kubelet", "logs", "pod-logs"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        self.ports.setdefault("kubelet", free_port())
        self.ports.setdefault("kubelet-healthz", free_port())
        self.ports.setdefault("apiproxy", free_port())
        (f / "containerd" / "config.toml").write_text(self._containerd_config())
        (f / "cni" / "net.d" / "10-gpubatch.conflist").write_text(json.dumps(_cni_config(f)))
        client = certs.client_certificate(
            self.testbed.certs, f, f"system:node:{self.name}", ("system:nodes",)
        )
        certs.write_kubeconfig(
            f / "kubeconfig",
            self.testbed.server,
            self.testbed.certs,
            user=f"system:node:{self.name}",
            client=client,
        )
        (f / "kubelet-config.yaml").write_text(yaml.safe_dump(self._kubelet_config()))
        self._define_components()

    def _define_components(self) -> None:
        f, tied = self.folder, self.testbed.tied
        self.components["apiproxy"] = Component(
            name="apiproxy",
            argv=[
                sys.executable,
                str(Path(__file__).with_name("apiproxy.py")),
                POD_GATEWAY,
                str(self.ports["apiproxy"]),
                str(self.testbed.ports["apiserver"]),
            ],
            log_path=f / "logs" / "apiproxy.log",
            tied=tied,
        )
        self.components["containerd"] = Component(
            name="containerd",
            argv=["containerd", f"--config={f / 'containerd' / 'config.toml'}"],
            log_path=f / "logs" / "containerd.log",
            tied=tied,
        )
        self.components["kubelet"] = Component(
            name="kubelet",
            argv=[
                str(self.testbed.bin_dir / "kubelet"),
                f"--config={f / 'kubelet-config.yaml'}",
                f"--kubeconfig={f / 'kubeconfig'}",
                f"--root-dir={f / 'kubelet'}",
                f"--cert-dir={f / 'kubelet' / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-labels={GPU_MODEL_LABEL}={self.model},{REAL_POOL_LABEL}=real,"
                f"nvidia.com/gpu.count={self.gpus}",
                # Only pods that ask for real containers land here, never a kwok-simulated one.
                f"--register-with-taints={REAL_NODE_TAINT}=true:NoSchedule",
                "--v=1",
            ],
            log_path=f / "logs" / "kubelet.log",
            tied=tied,
        )

    def _containerd_config(self) -> str:
        f = self.folder / "containerd"
        cri = {
            "sandbox_image": self.images.pause.ref,
            # This machine (a VM) drops CAP_SYS_RESOURCE from every bounding set, so runc cannot
            # lower the pause container's OOM score to the -998 the CRI asks for and every
            # sandbox fails; clamping at containerd's own score is harmless where it could.
            "restrict_oom_score_adj": True,
            "stream_server_address": "127.0.0.1",
            "stream_server_port": "0",
            "enable_selinux": False,
            "containerd": {
                "snapshotter": "overlayfs",
                "default_runtime_name": "runc",
                "runtimes": {
                    "runc": {
                        "runtime_type": "io.containerd.runc.v2",
                        "options": {"SystemdCgroup": False},
                    }
                },
            },
            "cni": {"bin_dir": "/usr/lib/cni", "conf_dir": str(self.folder / "cni" / "net.d")},
        }
        config = {
            "version": 2,
            "root": str(f / "root"),
            "state": str(f / "state"),
            "grpc": {"address": str(self.socket_path)},
            "ttrpc": {"address": str(f / "containerd.sock.ttrpc")},
            "debug": {"address": ""},
            "metrics": {"address": ""},
            "disabled_plugins": [
                "io.containerd.internal.v1.opt",
                "io.containerd.snapshotter.v1.aufs",
                "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.snapshotter.v1.zfs",
                "io.containerd.tracing.processor.v1.otlp",
            ],
            "plugins": {"io.containerd.grpc.v1.cri": cri},
        }
        return _toml(config)

    def _kubelet_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": self.ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports["kubelet-healthz"],
            # Only holders of a certificate from the test bed's CA (the API server has one)
            # may call the kubelet; nothing anonymous.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.testbed.certs.ca_cert)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.socket_path}",
            # containerd 1.6 does not answer the kubelet's RuntimeConfig call: say it here.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "podLogsDir": str(self.folder / "pod-logs"),
            # The images cannot be pulled back once collected.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "serializeImagePulls": False,
            "registerNode": True,
            "nodeStatusUpdateFrequency": "5s",
        }

    # ----------------------------------------------------------------------------- readiness
    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", f"--address={self.socket_path}", "--namespace=k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def api_for_pods(self) -> tuple[str, int]:
        """Where a pod on this node reaches the API server (KUBERNETES_SERVICE_HOST/PORT)."""
        return POD_GATEWAY, self.ports["apiproxy"]

    def _apiproxy_ready(self) -> bool:
        with socket.create_connection(self.api_for_pods, timeout=1):
            return True

    def _containerd_ready(self) -> bool:
        return self.socket_path.exists() and self.ctr("version").returncode == 0

    def _import_images(self) -> None:
        have = self.ctr("images", "list", "--quiet").stdout.split()
        for image in self.images.all():
            if image.ref in have:
                continue
            result = self.ctr("images", "import", "--no-unpack", str(image.archive))
            if result.returncode != 0:
                raise StartError(f"importing {image.archive} into containerd: {result.stderr}")

    def _node_ready(self) -> bool:
        """Ready, as reported by THIS kubelet: after a restart the node object still says Ready
        from before, so the kubelet must also answer its health check and have renewed the
        node's lease since it started."""
        url = f"http://127.0.0.1:{self.ports['kubelet-healthz']}/healthz"
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status != 200:
                return False
        if self._leases is None:
            self._leases = self.testbed.coordination_v1()
        lease = self._leases.read_namespaced_lease(self.name, "kube-node-lease")
        if lease.spec.renew_time is None or lease.spec.renew_time < self._kubelet_started:
            return False
        node = self.testbed.core_v1().read_node(self.name)
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    def _advertise_gpus(self) -> None:
        """Fake GPUs: the kubelet keeps extended resources it does not manage itself, and the
        real scheduler enforces them (the same JSON patch a device-plugin-less demo would use)."""
        resource = GPU_RESOURCE.replace("/", "~1")
        patch = [
            {"op": "add", "path": f"/status/capacity/{resource}", "value": str(self.gpus)},
            {"op": "add", "path": f"/status/allocatable/{resource}", "value": str(self.gpus)},
        ]
        self.testbed.kubectl(
            "patch",
            "node",
            self.name,
            "--subresource=status",
            "--type=json",
            f"--patch={json.dumps(patch)}",
        )

        def advertised() -> bool:
            node = self.testbed.core_v1().read_node(self.name)
            return (node.status.allocatable or {}).get(GPU_RESOURCE) == str(self.gpus)

        wait_until(advertised, timeout=30, what=f"{GPU_RESOURCE} on node {self.name}")


def _make_bridge() -> None:
    """The pod bridge with its gateway address, made before any pod so the API forwarder can
    listen on it at once (the CNI bridge plugin takes an existing bridge as it is)."""
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "replace", f"{POD_GATEWAY}/24", "dev", BRIDGE], check=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)


def _cni_config(folder: Path) -> dict[str, Any]:
    """A bridge with a gateway address on the host, so the kubelet's probes reach pods and pods
    reach the API forwarder; no masquerading (pods reach nothing off the node). The plugin
    turns IP forwarding on, which the host state puts back."""
    return {
        "cniVersion": "0.4.0",
        "name": "gpubatch-testbed",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "dataDir": str(folder / "cni" / "ipam"),
                },
            }
        ],
    }


def _toml(config: dict[str, Any], prefix: str = "") -> str:
    """The little TOML containerd's config needs: scalars, lists of strings, nested tables."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{prefix}.{json.dumps(key) if '.' in key else key}".lstrip(".")
        out += f"\n[{name}]\n" + _toml(value, name)
    return out


def _kill_cgroup(name: str, timeout: float = 30) -> None:
    """SIGKILL every process in `name` in every hierarchy until none is left: the pods' processes
    outlive a stopped kubelet and containerd (runc containers belong to no parent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {
            int(pid)
            for procs in CGROUP_ROOT.glob(f"*/{name}/**/cgroup.procs")
            for pid in _read(procs).split()
        }
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _clear_leftovers() -> None:
    """What a real node killed without its teardown (SIGKILLed pytest: the kubelet and containerd
    die with it, their pods do not) leaves behind: pod processes, orphaned shims, the bridge,
    the pod cgroups and mounts. Refuses to touch a real node that is still running."""
    running = [pid for pid, argv in _processes() if argv[:1] and Path(argv[0]).name == "kubelet"]
    if running:
        raise StartError(
            f"a kubelet is already running here (pid {running[0]}): only one real node fits on "
            "a machine; stop the other test bed first (make testbed-down)"
        )
    _kill_cgroup(POD_CGROUP)
    for pid, argv in _processes():
        if argv[:1] and argv[0].endswith("containerd-shim-runc-v2"):
            address = argv[argv.index("-address") + 1] if "-address" in argv else ""
            if not Path(address).exists():  # its containerd (and state folder) is gone
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    stale = [
        line.split()[4]
        for line in mounts
        if line.split()[4].startswith(("/run/containerd/", "/var/lib/kubelet/"))
        or "/realnode/containerd/" in line.split()[4]
        or "/realnode/kubelet" in line.split()[4]
    ]
    for mount in sorted(stale, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
    for hierarchy in CGROUP_ROOT.iterdir():
        pods = hierarchy / POD_CGROUP
        if pods.is_dir():
            for child in sorted(
                (p for p in pods.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    child.rmdir()
            with contextlib.suppress(OSError):
                pods.rmdir()


def _processes() -> list[tuple[int, list[str]]]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            argv = _read(proc / "cmdline").split("\0")
            found.append((int(proc.name), [a for a in argv if a]))
    return found


def _kill_shims(socket_path: Path) -> None:
    """The runc shims of this containerd (they re-parent to init and would outlive it)."""
    for pid, argv in _processes():
        if (
            argv[:1]
            and argv[0].endswith("containerd-shim-runc-v2")
            and any(str(socket_path) in arg for arg in argv)
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
