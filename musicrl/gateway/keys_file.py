"""Edit the keys file the gateway reads: add a key, keeping every other entry, atomically.

The gateway re-reads the file when it changes (:class:`musicrl.gateway.auth.KeyFile`), so a key added here
works at once; the write is atomic, so the gateway never reads half a file.
"""

import json
from pathlib import Path
from typing import Any

from musicrl.data.durable import write_durably
from musicrl.errors import InvalidRequest
from musicrl.gateway.auth import ApiKey


def read_entries(keys_file: Path) -> list[dict[str, Any]]:
    """The entries of ``keys_file`` as stored ([] when it does not exist).

    Raises:
        InvalidRequest: The file is not a JSON list of objects (it is left as it is).
    """
    if not keys_file.exists():
        return []
    try:
        entries = json.loads(keys_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidRequest(f"cannot read {keys_file}: {e}; fix it or move it away (it is not overwritten)") from e
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise InvalidRequest(f"{keys_file} must hold a JSON list of API key entries; fix it or move it away")
    return entries


def add_key(keys_file: Path, key: ApiKey) -> int:
    """Write ``key`` into ``keys_file``, replacing an entry with the same id and keeping all others.

    Args:
        keys_file: The JSON keys file (created if missing, owner-only).
        key: The key's entry.

    Returns:
        How many other entries were kept.

    Raises:
        InvalidRequest: The existing file is not a list of entries (nothing is written).
    """
    kept = [entry for entry in read_entries(keys_file) if entry.get("id") != key.id]
    write_durably(str(keys_file), (json.dumps([*kept, key.to_wire()], indent=2) + "\n").encode())
    return len(kept)
