"""Where the toy world's trained checkpoints ship: inside the package, named by ``toy://<name>``.

This module imports nothing heavy: the model resolver reads it on every ``toy://`` URI.
"""

from pathlib import Path


CHECKPOINTS_DIR = Path(__file__).parent / "checkpoints"
MANIFEST_FILE = "manifest.json"


def shipped_dir(name: str) -> Path:
    """The folder of ``toy://<name>`` (which may not exist)."""
    return CHECKPOINTS_DIR / name


def shipped_names() -> list[str]:
    """The toy models this package holds."""
    if not CHECKPOINTS_DIR.is_dir():
        return []
    return sorted(p.name for p in CHECKPOINTS_DIR.iterdir() if p.is_dir() and not p.name.startswith("."))
