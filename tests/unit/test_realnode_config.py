"""The real node's pure parts: the Debian mirror read from apt sources, containerd's TOML, the
build context taken from a Dockerfile's allow-list, and the host-state comparison."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from testbed.realnode.hoststate import HostState
from testbed.realnode.images import REPO, ImageBuildError, _context_files, host_debian_source
from testbed.realnode.node import _toml

pytestmark = pytest.mark.unit

DEB822 = """Types: deb
# a comment line
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
"""


def test_the_base_image_mirror_is_the_first_plain_main_suite_of_the_hosts_apt_sources(
    tmp_path: Path,
):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)

    source = host_debian_source(tmp_path)

    assert (source.uri, source.suite) == ("http://mirror.invalid/debian", "bookworm")
    assert source.keyring == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_one_line_apt_sources_are_read_too(tmp_path: Path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://old.invalid/debian buster main\n"
        "deb http://mirror.invalid/debian-security bookworm-security main\n"
        "deb http://mirror.invalid/debian bookworm main contrib\n"
    )

    source = host_debian_source(tmp_path)

    assert (source.uri, source.suite, source.keyring) == (
        "http://mirror.invalid/debian",
        "bookworm",
        None,
    )


def test_no_debian_source_is_an_error_that_says_where_to_add_one(tmp_path: Path):
    (tmp_path / "sources.list.d").mkdir()

    with pytest.raises(ImageBuildError, match=r"add your Debian mirror"):
        host_debian_source(tmp_path)


def test_containerd_toml_reads_back_as_the_same_nested_config():
    config = {
        "version": 2,
        "disabled_plugins": ["a", "b"],
        "grpc": {"address": "/x/containerd.sock"},
        "plugins": {
            "io.containerd.grpc.v1.cri": {
                "restrict_oom_score_adj": True,
                "containerd": {"runtimes": {"runc": {"options": {"SystemdCgroup": False}}}},
            }
        },
    }

    assert tomllib.loads(_toml(config)) == config


def test_build_context_is_exactly_what_the_dockerfiles_allow_list_lets_in():
    files = _context_files(REPO / "worker-image" / "Dockerfile.dockerignore")
    relative = {str(f.relative_to(REPO)) for f in files}

    assert {"pyproject.toml", "README.md", "worker-image/requirements_from_extras.py"} <= relative
    assert "operator/src/gpubatch/worker/main.py" in relative
    assert all(
        r.startswith(("operator/src/gpubatch/", "worker-image/")) or "/" not in r for r in relative
    )
    assert not [r for r in relative if "__pycache__" in r or r.endswith(".pyc")]


def test_host_state_differences_name_each_change_and_survive_a_json_round_trip():
    before = HostState(
        sysctls=(("vm/overcommit_memory", "0"),),
        nft_tables=frozenset(),
        cgroups=frozenset({"/sys/fs/cgroup/cpu/user.slice"}),
        mounts=frozenset({"/"}),
        links=frozenset({"lo", "eth0"}),
        paths=frozenset(),
    )
    after = HostState(
        sysctls=(("vm/overcommit_memory", "1"),),
        nft_tables=frozenset({"table ip filter"}),
        cgroups=before.cgroups | {"/sys/fs/cgroup/cpu/kubepods"},
        mounts=before.mounts,
        links=before.links | {"gpubatch0"},
        paths=frozenset({"/var/lib/cni"}),
    )

    assert before.differences(after) == [
        "sysctl vm/overcommit_memory: 0 -> 1",
        "nft table added: table ip filter",
        "cgroup added: /sys/fs/cgroup/cpu/kubepods",
        "network link added: gpubatch0",
        "path added: /var/lib/cni",
    ]
    assert HostState.from_json(after.to_json()) == after
    assert after.differences(after) == []
