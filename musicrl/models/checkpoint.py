"""Checkpoints: ``save_pretrained`` directories plus a ``musicrl.json`` that says what they are."""

import dataclasses
import datetime
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

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


def save_checkpoint(model: Any, tokenizer: Any, dest: str, metadata: CheckpointMetadata) -> str:
    """Save ``model`` and ``tokenizer`` with ``save_pretrained`` plus ``musicrl.json`` under ``dest``.

    ``dest`` is a local path or any fsspec URL. ``musicrl.json`` is written last: on object stores,
    where a directory cannot be renamed into place, its presence marks a complete checkpoint.

    Args:
        model: A transformers model.
        tokenizer: Its tokenizer (or processor); None to skip.
        dest: Local directory or fsspec URL of the checkpoint.
        metadata: What the checkpoint is.

    Returns:
        ``dest``, usable as a model URI.
    """
    fs, root = fsspec.core.url_to_fs(dest)
    with tempfile.TemporaryDirectory(prefix="musicrl-ckpt-") as tmp:
        staging = Path(tmp)
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        fs.makedirs(root, exist_ok=True)
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                target = f"{root.rstrip('/')}/{path.relative_to(staging).as_posix()}"
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                fs.put_file(str(path), target)
    with fs.open(f"{root.rstrip('/')}/{METADATA_FILE}", "w") as f:
        json.dump(metadata.to_wire(), f, indent=2, sort_keys=True)
    logger.info("saved %s checkpoint to %s", metadata.kind, dest)
    return dest
