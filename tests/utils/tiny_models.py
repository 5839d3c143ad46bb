"""Factories for tiny MusicGen models and checkpoints, built through the production code path."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from musicrl.models.checkpoint import CheckpointMetadata, save_checkpoint
from musicrl.models.loading import MusicgenBundle, load_musicgen


TINY_MUSICGEN_URI = "tiny://musicgen?seed=0"  # ~0.4M parameters: builds in well under a second on a CPU


@dataclass(frozen=True)
class SavedTinyCheckpoint:
    """A tiny MusicGen saved with ``save_checkpoint``, and the in-memory bundle it was saved from."""

    uri: str
    original: MusicgenBundle
    metadata: CheckpointMetadata


def tiny_policy_metadata(**overrides: object) -> CheckpointMetadata:
    """Metadata of a policy checkpoint trained from the seed-0 tiny model."""
    fields: dict = {
        "kind": "policy",
        "parent_uri": TINY_MUSICGEN_URI,
        "training_run": "run-test-1",
        "metrics": {"reward/mean": 0.25, "kl": 0.01},
    }
    fields.update(overrides)
    return CheckpointMetadata(**fields)


def save_tiny_checkpoint(
    dest: str | Path, *, uri: str = TINY_MUSICGEN_URI, metadata: CheckpointMetadata | None = None
) -> SavedTinyCheckpoint:
    """Load ``uri`` (a ``tiny://`` model) and save it, with its tokenizer, under ``dest`` (path or fsspec URL)."""
    original = load_musicgen(uri)
    metadata = metadata or tiny_policy_metadata()
    saved = save_checkpoint(original.model, original.tokenizer, str(dest), metadata)
    return SavedTinyCheckpoint(uri=saved, original=original, metadata=metadata)


def differing_tensors(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """Names of state-dict entries that are missing from one side or not bit-identical (``torch.equal``)."""
    sa, sb = a.state_dict(), b.state_dict()
    names = sorted(set(sa) | set(sb))
    return [n for n in names if n not in sa or n not in sb or not torch.equal(sa[n].cpu(), sb[n].cpu())]


def state_dict_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over the state dict: each name, then the bytes of its contiguous float32 CPU tensor, sorted by name."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
