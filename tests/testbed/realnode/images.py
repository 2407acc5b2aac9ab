"""Container images for the real node, built here without Docker or a registry.

Three images, each cached under `<cache>/images/` by a hash of everything that goes into it, so
a second run only finds the archives:
- pause: a static C program (pause.c) in a scratch image, the pod sandbox's first process;
- base: Debian minbase + python3 from the mirror in this machine's apt sources (debootstrap),
  standing in for `python:3.12-slim`, which cannot be pulled here;
- worker / operator: `worker-image/Dockerfile` and `operator/Dockerfile` exactly as they stand,
  built by `buildah bud` with BASE_IMAGE = the local base.

pip inside a build uses this machine's own pip settings and trusted CA (mounted read-only into
the build), and uv.lock's versions as constraints; no package host is named here.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
# Bump when a recipe below changes in a way the hashed inputs do not show.
RECIPE = "1"


def cache_root() -> Path:
    base = os.environ.get("GPUBATCH_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpubatch"
    )
    return Path(base) / "images"


@dataclass(frozen=True)
class BuiltImage:
    """An image saved as a docker-archive that `ctr images import` loads under `ref`."""

    ref: str
    archive: Path


class ImageBuildError(RuntimeError):
    """A build step failed; the message carries the command and the tail of its output."""


def _run(argv: list[str], *, what: str, timeout: float = 900, **kwargs: object) -> str:
    print(f"[images] {what}", file=sys.stderr, flush=True)
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise ImageBuildError(f"{what} failed ({' '.join(argv[:4])} ...):\n{tail}")
    return str(result.stdout)


def _buildah(*args: str, what: str) -> str:
    """buildah with its storage under the cache folder, not /var/lib/containers."""
    root = cache_root() / "buildah"
    return _run(
        [
            "buildah",
            f"--root={root / 'storage'}",
            f"--runroot={root / 'run'}",
            "--storage-driver=overlay",
            *args,
        ],
        what=what,
    )


def _digest(parts: Iterable[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256(RECIPE.encode())
    for label, data in parts:
        digest.update(label.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def _cached(name: str, key: str) -> BuiltImage:
    return BuiltImage(
        ref=f"localhost/gpubatch-{name}:{key}", archive=cache_root() / f"{name}-{key}.tar"
    )


def _save(image: BuiltImage) -> BuiltImage:
    """Write the image as a docker-archive (atomically): the cache entry containerd imports."""
    partial = image.archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    _buildah("push", image.ref, f"docker-archive:{partial}:{image.ref}", what=f"save {image.ref}")
    partial.rename(image.archive)
    _prune_older(image)
    return image


def _prune_older(image: BuiltImage) -> None:
    """Keep one version per image: older archives and their copies in buildah's storage go."""
    name = image.archive.name.rsplit("-", 1)[0]
    for old in image.archive.parent.glob(f"{name}-*.tar"):
        if old != image.archive:
            old.unlink()
            ref = f"localhost/gpubatch-{name}:{old.stem.rsplit('-', 1)[1]}"
            with contextlib.suppress(ImageBuildError):
                _buildah("rmi", ref, what=f"remove {ref}")


# ------------------------------------------------------------------------------------- pause
def pause_image() -> BuiltImage:
    source = (HERE / "pause.c").read_bytes()
    image = _cached("pause", _digest([("pause.c", source)]))
    if image.archive.exists():
        return image
    image.archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        _run(
            ["gcc", "-Os", "-static", "-o", str(binary), str(HERE / "pause.c")],
            what="compile pause",
        )
        container = _buildah("from", "scratch", what="pause: from scratch").strip()
        try:
            _buildah("copy", container, str(binary), "/pause", what="pause: copy")
            _buildah(
                "config",
                '--entrypoint=["/pause"]',
                "--user=65535:65535",
                container,
                what="pause: config",
            )
            _buildah("commit", "--rm", container, image.ref, what="pause: commit")
        except BaseException:
            _buildah("rm", container, what="pause: remove the working container")
            raise
    return _save(image)


# ------------------------------------------------------------------------------------- base
@dataclass(frozen=True)
class DebianSource:
    """The first plain Debian `main` source in this machine's apt configuration."""

    uri: str
    suite: str
    keyring: str | None


def host_debian_source(apt: Path = Path("/etc/apt")) -> DebianSource:
    """Read /etc/apt/sources.list(.d): the mirror this machine already uses for Debian."""
    candidates: list[DebianSource] = []

    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = _deb822(stanza)
            if (
                "deb" in fields.get("types", "").split()
                and "main" in fields.get("components", "").split()
            ):
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        candidates.append(DebianSource(uri, suite, fields.get("signed-by")))
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["deb"] and "main" in words[3:] and not words[1].startswith("["):
                candidates.append(DebianSource(words[1], words[2], None))
    for source in candidates:
        if "security" not in source.uri and "-" not in source.suite:
            return source
    raise ImageBuildError(
        "no Debian `main` source in /etc/apt/sources.list(.d) to build the base image from; "
        "add your Debian mirror there (the base image is debootstrapped from it)"
    )


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    return fields


BASE_PACKAGES = "python3,python3-venv"
# What the image never needs at run time: apt's indexes and caches, docs, man pages, locales.
BASE_TRIM = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)


def base_image() -> BuiltImage:
    source = host_debian_source()
    image = _cached(
        "base", _digest([("source", f"{source.uri} {source.suite} {BASE_PACKAGES}".encode())])
    )
    if image.archive.exists():
        return image
    image.archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=image.archive.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        keyring = [f"--keyring={source.keyring}"] if source.keyring else []
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                *keyring,
                source.suite,
                str(rootfs),
                source.uri,
            ],
            what=f"debootstrap {source.suite} from {source.uri} (about a minute)",
            timeout=1200,
        )
        for relative in BASE_TRIM:
            target = rootfs / relative
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        tarball = Path(tmp) / "rootfs.tar"
        _run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], what="base: tar the rootfs")
        container = _buildah("from", "scratch", what="base: from scratch").strip()
        try:
            _buildah("add", container, str(tarball), "/", what="base: add the rootfs")
            _buildah(
                "config",
                '--cmd=["/bin/sh"]',
                "--env=LANG=C.UTF-8",
                container,
                what="base: config",
            )
            _buildah("commit", "--rm", container, image.ref, what="base: commit")
        except BaseException:
            _buildah("rm", container, what="base: remove the working container")
            raise
    return _save(image)


# ------------------------------------------------------------------------------------- app
def _context_files(ignore_file: Path) -> list[Path]:
    """The files a Dockerfile's allow-list .dockerignore lets into the build (`*` then `!x`)."""
    files: list[Path] = []
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line.startswith("!"):
            continue
        path = REPO / line[1:]
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [f for f in found if "__pycache__" not in f.parts and f.suffix != ".pyc"]
    return files


def _uv_constraints() -> bytes:
    """Every version uv.lock pins, as pip constraints (pip then installs exactly those)."""
    uv = REPO / ".uv" / "bin" / "uv"
    if not uv.exists():
        raise ImageBuildError(f"{uv} is missing; run `make venv` first")
    return _run(
        [
            str(uv),
            "export",
            "--frozen",
            "--all-extras",
            "--no-hashes",
            "--no-emit-project",
            "--no-header",
            "--no-annotate",
        ],
        what="pins from uv.lock",
        cwd=REPO,
    ).encode()


def _python_with_pip() -> str:
    """A Python whose pip reads this machine's configuration (the uv-made venv has no pip)."""
    for python in (sys.executable, shutil.which("python3"), str(REPO / ".uv" / "bin" / "python")):
        if (
            python
            and subprocess.run(
                [python, "-m", "pip", "--version"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return python
    raise ImageBuildError("no Python with pip found to read this machine's pip settings")


def _host_pip_settings() -> tuple[bytes, list[Path]]:
    """This machine's effective pip settings (files and PIP_* variables) as one pip.conf, and
    the files they name (the CA bundle) that the build must see at the same paths."""
    listed = _run(
        [_python_with_pip(), "-m", "pip", "config", "list"],
        what="read this machine's pip settings",
    )
    config = configparser.ConfigParser()
    config["global"] = {}
    needed: list[Path] = []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        section, _, option = key.rpartition(".")
        value = value.strip().strip("'\"")
        if option in ("find-links", "constraint", "requirement", "log"):
            continue  # paths on this machine only, or set by the build itself
        section = "global" if section in (":env:", "") else section
        if not config.has_section(section):
            config[section] = {}
        config[section][option] = value
        if option in ("cert", "client-cert") and Path(value).is_file():
            needed.append(Path(value).resolve())
    config["global"]["constraint"] = "/run/gpubatch-build/constraints.txt"
    lines: list[str] = []
    for section in config.sections():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in config[section].items()]
    return ("\n".join(lines) + "\n").encode(), needed


def _in_storage(image: BuiltImage) -> None:
    """Make sure buildah's storage holds `image` (a later FROM names it), reloading it from its
    archive when the storage was cleared but the archive was not."""
    try:
        _buildah("inspect", "--type=image", image.ref, what=f"look up {image.ref}")
    except ImageBuildError:
        _buildah("pull", f"docker-archive:{image.archive}", what=f"reload {image.ref}")


def app_image(name: str, dockerfile: Path, base: BuiltImage) -> BuiltImage:
    """`buildah bud` of one of the project's Dockerfiles as it stands, on the local base."""
    files = _context_files(dockerfile.with_name(dockerfile.name + ".dockerignore"))
    constraints = _uv_constraints()
    pip_conf, pip_files = _host_pip_settings()
    parts = [("dockerfile", dockerfile.read_bytes()), ("base", base.ref.encode())]
    parts += [(str(f.relative_to(REPO)), f.read_bytes()) for f in files]
    parts += [("constraints", constraints), ("pip.conf", pip_conf)]
    image = _cached(name, _digest(parts))
    if image.archive.exists():
        return image
    began = time.monotonic()
    _in_storage(base)
    with tempfile.TemporaryDirectory(dir=image.archive.parent) as tmp:
        context = Path(tmp) / "context"
        for file in files:
            target = context / file.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
        mounts = Path(tmp) / "mounts"
        mounts.mkdir()
        (mounts / "pip.conf").write_bytes(pip_conf)
        (mounts / "constraints.txt").write_bytes(constraints)
        volumes = [
            f"--volume={mounts / 'pip.conf'}:/etc/pip.conf:ro",
            f"--volume={mounts}:/run/gpubatch-build:ro",
            *(f"--volume={f}:{f}:ro" for f in pip_files),
        ]
        _buildah(
            "bud",
            "--isolation=chroot",
            "--layers=false",
            f"--file={dockerfile}",
            f"--build-arg=BASE_IMAGE={base.ref}",
            *volumes,
            f"--tag={image.ref}",
            str(context),
            what=f"build {name} from {dockerfile.relative_to(REPO)}",
        )
    print(f"[images] {name} built in {time.monotonic() - began:.0f}s", file=sys.stderr)
    return _save(image)


@dataclass(frozen=True)
class NodeImages:
    pause: BuiltImage
    base: BuiltImage
    worker: BuiltImage
    operator: BuiltImage

    def all(self) -> list[BuiltImage]:
        return [self.pause, self.base, self.worker, self.operator]

    def as_dict(self) -> dict[str, BuiltImage]:
        return {
            "pause": self.pause,
            "base": self.base,
            "worker": self.worker,
            "operator": self.operator,
        }

    @classmethod
    def from_dict(cls, images: dict[str, BuiltImage]) -> NodeImages:
        return cls(**images)


def build_all() -> NodeImages:
    """Every image the real node and its tests use, built only where the cache lacks it."""
    missing = [tool for tool in ("buildah", "debootstrap", "gcc") if shutil.which(tool) is None]
    if missing:
        raise ImageBuildError(
            f"{', '.join(missing)} not found: install them with `make realnode-packages`"
        )
    base = base_image()
    return NodeImages(
        pause=pause_image(),
        base=base,
        worker=app_image("worker", REPO / "worker-image" / "Dockerfile", base),
        operator=app_image("operator", REPO / "operator" / "Dockerfile", base),
    )
