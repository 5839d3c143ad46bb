"""Checkpoints: ``save_pretrained`` directories plus a ``musicrl.json`` that says what they are."""

import dataclasses
import datetime
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from musicrl.errors import InvalidRequest


logger = logging.getLogger(__name__)

METADATA_FILE = "musicrl.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class CheckpointMetadata:
    """What a checkpoint is and where it came from.

    Attributes:
        kind: ``policy``, ``value``, ``reward/preference``, ``reward/quality`` ...
        parent_uri: The model URI this checkpoint was trained from, if any.
        training_run: Identifier of the run that produced it.
        metrics: Final metrics of that run (name → value).
        extra: Free-form fields (for example the KL reference of an RL run).
        created_at: ISO-8601 UTC timestamp.
        schema_version: Version of this file's layout.
    """

    kind: str
    parent_uri: str | None = None
    training_run: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat())
    schema_version: int = SCHEMA_VERSION

    def to_wire(self) -> dict[str, Any]:
        """The JSON object written to ``musicrl.json``."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "CheckpointMetadata":
        """Read a ``musicrl.json`` object; unknown fields (from a newer writer) are ignored.

        Raises:
            InvalidRequest: ``kind`` is missing.
        """
        if "kind" not in data:
            raise InvalidRequest(f"{METADATA_FILE} has no 'kind' field")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


def read_metadata(directory: Path) -> CheckpointMetadata | None:
    """The checkpoint's metadata, or None for a directory without ``musicrl.json`` (a hub checkpoint)."""
    path = directory / METADATA_FILE
    if not path.exists():
        return None
    return CheckpointMetadata.from_wire(json.loads(path.read_text()))


def save_checkpoint(
    model: Any,
    tokenizer: Any,
    dest: str,
    metadata: CheckpointMetadata,
    *,
    write_extra: Callable[[Path], None] | None = None,
) -> str:
    """Save ``model`` and ``tokenizer`` with ``save_pretrained`` plus ``musicrl.json`` under ``dest``.

    ``dest`` is a local path or any fsspec URL. Everything is first written to a staging folder, and
    ``musicrl.json`` is published last, so its presence always marks a complete checkpoint:

    * a new local ``dest`` is a sibling staging folder renamed into place (atomic);
    * an existing local ``dest``, or any object store (where a folder cannot be renamed), first loses its
      ``musicrl.json``, then receives each file, then the new ``musicrl.json``.

    A failure before publication removes the staging folder and leaves no ``musicrl.json`` behind.

    Args:
        model: A transformers model.
        tokenizer: Its tokenizer (or processor); None to skip.
        dest: Local directory or fsspec URL of the checkpoint.
        metadata: What the checkpoint is.
        write_extra: Called with the staging folder to add files of the caller's (for example a trainer's
            state), which are published with the model, before ``musicrl.json``.

    Returns:
        ``dest``, usable as a model URI.
    """
    fs, root = fsspec.core.url_to_fs(dest)
    root = root.rstrip("/")
    local = isinstance(fs, LocalFileSystem)
    parent = Path(root).parent if local else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_folder(parent, Path(root).name)
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if write_extra is not None:
            write_extra(staging)
        if local and not Path(root).exists():
            (staging / METADATA_FILE).write_text(json.dumps(metadata.to_wire(), indent=2, sort_keys=True))
            os.rename(staging, root)
        else:
            _publish_files(fs, staging, root, metadata)
    finally:
        if staging.exists():  # not after a rename into place
            shutil.rmtree(staging)
    logger.info("saved %s checkpoint to %s", metadata.kind, dest)
    return dest


def _staging_folder(parent: Path | None, name: str) -> Path:
    """A fresh folder to write a checkpoint into before it is published."""
    if parent is None:  # an object store: stage on local disk, then upload
        return Path(tempfile.mkdtemp(prefix="musicrl-ckpt-"))
    # beside dest (one filesystem, so it can be renamed into place); mkdir, not mkdtemp, whose 0700 would
    # hide the published checkpoint from a server running as another user
    staging = parent / f".{name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    return staging


def _publish_files(fs: fsspec.AbstractFileSystem, staging: Path, root: str, metadata: CheckpointMetadata) -> None:
    """Copy ``staging`` over ``root`` file by file, unmarked while the files change, marked at the end."""
    marker = f"{root}/{METADATA_FILE}"
    if fs.exists(marker):
        fs.rm(marker)  # the folder's files are about to change: it must not claim to be complete meanwhile
    fs.makedirs(root, exist_ok=True)
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            target = f"{root}/{path.relative_to(staging).as_posix()}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), target)
    with fs.open(marker, "w") as f:
        json.dump(metadata.to_wire(), f, indent=2, sort_keys=True)
