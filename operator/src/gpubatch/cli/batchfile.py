"""A GPUBatch YAML file, read and checked the way the API server and the operator would.

Every command that takes FILE goes through here, so `validate`, `expand`, `run` and `submit`
refuse the same files with the same messages. Two depths of checking:

- `load_batch_file` checks the object: apiVersion and kind, a usable metadata.name, and the
  spec against the pydantic models, which repeat the CRD's schema and CEL rules (`api/spec.py`),
  so no file passes here that `kubectl apply` would refuse;
- `prepare` then does what the operator does before creating any pod (`core.prepare`): expand
  the tasks through storage (globs, manifests) and compile every template. It reads the task
  sources on this machine, which is right for local mode and for a shared filesystem, and why
  `validate` and `submit` can skip it for inputs that exist only on the cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from gpubatch.api.names import API_VERSION, KIND
from gpubatch.api.spec import GPUBatch
from gpubatch.cli.errors import CliError, Exit
from gpubatch.core.errors import SpecError
from gpubatch.core.prepare import PreparedBatch, parse_spec, prepare_batch
from gpubatch.edges import storage

#: metadata.name must be a DNS-1123 subdomain (the API server's rule); locally it also names
#: the folder of run records, so the same rule keeps it a safe file name.
_NAME: Final = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_NAME_MAX: Final = 253


@dataclass(frozen=True)
class BatchFile:
    """A batch file that passed the object checks: the model, and the document as written."""

    path: Path
    batch: GPUBatch
    document: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.batch.metadata["name"])

    @property
    def namespace(self) -> str | None:
        value = self.batch.metadata.get("namespace")
        return str(value) if value else None


def load_batch_file(path: str | Path) -> BatchFile:
    """Read and check one GPUBatch; CliError (exit 2) naming the file and what to change."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise CliError(f"cannot read {file}: {err.strerror or err}") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise CliError(f"{file}: not valid YAML: {err}") from None
    if len(documents) != 1:
        raise CliError(
            f"{file}: expected one GPUBatch document, found {len(documents)}; gpubatch reads "
            "one batch per file"
        )
    document = documents[0]
    if not isinstance(document, dict):
        raise CliError(f"{file}: expected a GPUBatch object (a mapping), not {type(document)}")
    return BatchFile(path=file, batch=_check_object(file, document), document=document)


def _check_object(file: Path, document: dict[str, Any]) -> GPUBatch:
    problems = []
    if document.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion must be {API_VERSION}, not {document.get('apiVersion')!r}")
    if document.get("kind") != KIND:
        problems.append(f"kind must be {KIND}, not {document.get('kind')!r}")
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        problems.append("metadata.name is required (it names the batch)")
    elif len(name) > _NAME_MAX or not _NAME.match(name):
        problems.append(
            f"metadata.name {name!r} must be lower-case letters, digits, '-' and '.', starting "
            "and ending with a letter or digit (a Kubernetes object name)"
        )
    if not isinstance(document.get("spec"), dict):
        problems.append("spec is required: the tasks, the outputs and the pod template")
    if problems:
        raise CliError(f"{file}: " + "; ".join(problems))
    try:
        spec = parse_spec(document["spec"])
    except SpecError as err:
        raise CliError(f"{file}: {err}") from None
    assert isinstance(metadata, dict)
    return GPUBatch(metadata=dict(metadata), spec=spec)


def prepare(batch_file: BatchFile) -> PreparedBatch:
    """Expand the tasks and compile the templates, reading task sources on this machine.

    Relative globs and manifest paths are taken relative to the current directory. The error
    says where the files were looked for, since a spec written for a cluster names paths that
    may only exist there.
    """
    source = storage.Storage()
    try:
        return prepare_batch(batch_file.batch.spec, files=source, manifests=source)
    except SpecError as err:
        hint = ""
        if (err.field or "").startswith("spec.tasks"):
            hint = (
                " (task sources are read on this machine; when they only exist on the "
                "cluster, check the file with `gpubatch validate --no-expand`)"
            )
        raise CliError(f"{batch_file.path}: {err}{hint}") from None
    except storage.StorageError as err:
        raise CliError(
            f"{batch_file.path}: cannot read the task sources: {err}", Exit.ENVIRONMENT
        ) from None
