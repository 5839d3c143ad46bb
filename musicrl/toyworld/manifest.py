"""The manifest of the shipped toy models: how they were trained, what they measured, and their hashes.

A checkpoint in the repository is a binary nobody can review; the manifest is what makes it auditable.
It names the command and seeds that rebuild it, the metrics measured on held-out data when it was
trained, and the SHA-256 of every file, which a test compares against what is on disk.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from musicrl.toyworld.shipped import MANIFEST_FILE


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by path relative to it."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def write_manifest(
    root: Path,
    *,
    command: str,
    configs: Mapping[str, Any],
    metrics: Mapping[str, Mapping[str, float]],
    commands: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write ``root/manifest.json`` for the model folders under ``root``.

    Args:
        root: The folder of the model folders.
        command: The command that wrote this manifest.
        configs: Each trainer's settings.
        metrics: Per model, what it measured when it was trained.
        commands: Per model, the commands that built its folder, in order (default: ``command``).
    """
    models: dict[str, dict[str, Any]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        hashes = file_hashes(folder)
        models[folder.name] = {
            "uri": f"toy://{folder.name}",
            "files": hashes,
            "bytes": sum((folder / name).stat().st_size for name in hashes),
            "metrics": dict(metrics.get(folder.name, {})),
            "commands": list((commands or {}).get(folder.name, [command])),
        }
    manifest = {
        "command": command,
        "configs": dict(configs),
        "models": models,
        "total_bytes": sum(m["bytes"] for m in models.values()),
    }
    path = root / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest under ``root``."""
    return json.loads((root / MANIFEST_FILE).read_text())
