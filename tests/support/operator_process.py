"""The real operator as a child process against the test bed, so tests can SIGKILL it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from testbed import Testbed, env_with_kubeconfig
from testbed.leases import lease_flags, lease_url
from testbed.processes import _die_with_parent, free_port


@dataclass
class OperatorProcess:
    """`gpubatch-operator` running against a test bed; start, kill -9 and restart at will."""

    testbed: Testbed
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    kubeconfig: Path | None = None  # default: the test bed's admin kubeconfig
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. object-storage settings
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    starts: int = 0
    #: Serve the lease endpoint of warm workers (False where extra_args bring their own flags).
    leases: bool = True
    lease_port: int = 0  # chosen at the first start and kept, so warm pods' URL stays valid
    #: Where the lease endpoint listens and pods reach it (the real node's pod gateway for
    #: warm pods in real containers).
    lease_host: str = "127.0.0.1"

    @property
    def lease_url(self) -> str:
        """What warm pods are told (GPUBATCH_LEASE_URL)."""
        return lease_url(self.lease_port, self.lease_host)

    @property
    def lease_ca(self) -> Path:
        """The PEM file that verifies the lease endpoint (GPUBATCH_LEASE_CA): the test bed's CA."""
        return self.testbed.certs.ca_cert

    def lease_args(self) -> list[str]:
        if not self.leases:
            return []
        if not self.lease_port:
            self.lease_port = free_port()
        folder = self.log_path.parent / "lease-pki"
        return lease_flags(self.testbed.certs, folder, self.lease_port, self.lease_host)

    def start(self) -> None:
        self.metrics_port = free_port()
        liveness = free_port()
        argv = [
            sys.executable,
            "-m",
            "gpubatch.controller.main",
            f"--metrics-port={self.metrics_port}",
            f"--liveness=http://127.0.0.1:{liveness}/healthz",
            *self.lease_args(),
            *self.extra_args,
        ]
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env_with_kubeconfig(
                self.testbed,
                [
                    *([("KUBECONFIG", str(self.kubeconfig))] if self.kubeconfig else []),
                    *self.extra_env.items(),
                ],
            ),
            preexec_fn=_die_with_parent,
        )
        log.close()
        self.starts += 1
        self.liveness_url = f"http://127.0.0.1:{liveness}/healthz"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.liveness_url, timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"operator not live after 30s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye - the crash the operator must survive."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the running operator process, from /proc."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peak_rss_mib(self) -> float:
        """Peak resident memory (VmHWM) of the running operator process."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
