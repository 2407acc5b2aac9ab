"""What a real node changes on the host, recorded before it starts and put back after it stops.

The kubelet and containerd change machine-wide state whatever folders they are given: kernel
sysctls, nftables tables, a network bridge, `/kubepods` cgroups in every hierarchy, mounts, and
files at fixed paths. A test bed must leave the machine as it found it, or a second run (or the
next CI job) meets a half-configured host; `HostState` is the before/after record a test compares.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Set by the kubelet (protectKernelDefaults: false) or the bridge plugin.
SYSCTLS = (
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/ip_forward",
)
# Created by the kubelet, containerd, CNI and buildah at these paths whatever their roots are.
FIXED_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/etc/cni/net.d",
    "/run/containers",
    "/var/lib/containers",
    "/opt/containerd",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
BRIDGE = "gpubatch0"
SETS = ("nft_tables", "cgroups", "mounts", "links", "paths")


def _sysctl(name: str) -> str:
    return (Path("/proc/sys") / name).read_text().strip()


def _nft_tables() -> frozenset[str]:
    result = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=False, timeout=30
    )
    return frozenset(line.strip() for line in result.stdout.splitlines() if line.strip())


def _cgroup_dirs() -> frozenset[str]:
    """Top-level cgroups of every hierarchy (the kubelet adds `kubepods` to each)."""
    found: set[str] = set()
    if not CGROUP_ROOT.is_dir():
        return frozenset()
    for hierarchy in CGROUP_ROOT.iterdir():
        if hierarchy.is_dir() and not hierarchy.is_symlink():
            found.update(str(child) for child in hierarchy.iterdir() if child.is_dir())
    return frozenset(found)


def _mount_points() -> frozenset[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return frozenset(line.split()[4] for line in lines)


def _links() -> frozenset[str]:
    return frozenset(os.listdir("/sys/class/net"))


@dataclass(frozen=True)
class HostState:
    """The host settings a real node touches, as comparable values."""

    sysctls: tuple[tuple[str, str], ...]
    nft_tables: frozenset[str]
    cgroups: frozenset[str]
    mounts: frozenset[str]
    links: frozenset[str]
    paths: frozenset[str]

    @classmethod
    def capture(cls) -> HostState:
        return cls(
            sysctls=tuple((name, _sysctl(name)) for name in SYSCTLS),
            nft_tables=_nft_tables(),
            cgroups=_cgroup_dirs(),
            mounts=_mount_points(),
            links=_links(),
            paths=frozenset(p for p in FIXED_PATHS if os.path.lexists(p)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "sysctls": [list(pair) for pair in self.sysctls],
            **{k: sorted(getattr(self, k)) for k in SETS},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostState:
        return cls(
            sysctls=tuple((name, value) for name, value in data["sysctls"]),
            **{k: frozenset(data[k]) for k in SETS},
        )

    def differences(self, other: HostState) -> list[str]:
        """What `other` (after) has that `self` (before) did not, one line per change."""
        changes = [
            f"sysctl {name}: {old} -> {new}"
            for (name, old), (_, new) in zip(self.sysctls, other.sysctls, strict=True)
            if old != new
        ]
        for label, before, after in (
            ("nft table", self.nft_tables, other.nft_tables),
            ("cgroup", self.cgroups, other.cgroups),
            ("mount", self.mounts, other.mounts),
            ("network link", self.links, other.links),
            ("path", self.paths, other.paths),
        ):
            changes += [f"{label} added: {item}" for item in sorted(after - before)]
            changes += [f"{label} removed: {item}" for item in sorted(before - after)]
        return changes

    def restore(self) -> list[str]:
        """Put back everything recorded here; return what could not be undone (empty: all)."""
        problems: list[str] = []
        now = HostState.capture()
        for mount in sorted(now.mounts - self.mounts, key=len, reverse=True):
            _unmount(mount, problems)
        for name, value in self.sysctls:
            if _sysctl(name) != value:
                try:
                    (Path("/proc/sys") / name).write_text(value)
                except OSError as error:
                    problems.append(f"sysctl {name}: {error}")
        for table in sorted(now.nft_tables - self.nft_tables):
            _run_quiet(["nft", "delete", *table.split()], problems)
        for link in sorted(now.links - self.links):
            # A pod's veth goes with its network namespace; only what is still there is ours.
            subprocess.run(["ip", "link", "delete", link], capture_output=True, check=False)
            if os.path.exists(f"/sys/class/net/{link}"):
                problems.append(f"could not delete network link {link}")
        for cgroup in sorted(now.cgroups - self.cgroups):
            _remove_cgroup(Path(cgroup), problems)
        for path in sorted(set(FIXED_PATHS) - self.paths):
            if os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return problems + self.differences(HostState.capture())


def _run_quiet(argv: list[str], problems: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        problems.append(f"{' '.join(argv)}: {result.stderr.strip()}")


def _unmount(mount: str, problems: list[str]) -> None:
    """Lazy unmount: a mount's process may be gone while the kernel still holds it busy."""
    result = subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    if result.returncode != 0 and mount in _mount_points():
        problems.append(f"could not unmount {mount}")


def _remove_cgroup(path: Path, problems: list[str]) -> None:
    """cgroup folders go leaf first (rmdir only; their files are the kernel's)."""
    if not path.exists():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            child.rmdir()
    try:
        path.rmdir()
    except OSError as error:
        problems.append(f"cgroup {path}: {error}")
