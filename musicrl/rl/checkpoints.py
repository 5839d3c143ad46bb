"""Checkpoints of an RL run: a generator-loadable policy directory plus the trainer's state, and resuming.

``<run>/checkpoints/step-000100/`` is a ``save_pretrained`` MusicGen with its tokenizer and a ``musicrl.json``
(kind ``policy``, the init as parent, the stage, step, KL reference and rewards), so the generator serves it
by path; ``trainer_state.pt`` inside it holds the value model, the optimisers and whatever else the trainer
must restore to continue exactly (alarm, reward statistics, RNG states). Each folder is staged and published
by :func:`~musicrl.models.checkpoint.save_checkpoint`, so ``musicrl.json`` marks only complete ones.

Two small pointer files name checkpoints without copying them: ``<run>/checkpoints/latest`` (the newest,
replaced after it is written, so a crash mid-save resumes from the previous one) and
``<run>/checkpoints/best`` (the one with the best held-out reward). ``<run>`` is a local path or an fsspec URL.
"""

import logging
import os
import random
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
import torch.distributed as dist
from fsspec.implementations.local import LocalFileSystem
from transformers import MusicgenForConditionalGeneration

from musicrl.models.checkpoint import CheckpointMetadata, save_checkpoint
from musicrl.models.loading import MusicgenBundle
from musicrl.rl.config import RLConfig


logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
LATEST = "latest"
BEST = "best"


def step_name(step: int) -> str:
    """The folder name of ``step``'s checkpoint."""
    return f"step-{step:06d}"


def is_due(step: int, config: RLConfig, fired: bool) -> bool:
    """Whether ``step`` (1-based, just finished) gets a checkpoint: every ``checkpoint_every`` steps, the last
    step, and the step the over-optimisation alarm fires."""
    return step % config.checkpoint_every == 0 or step == config.optim.steps or fired


@dataclass(slots=True)
class BestCheckpoint:
    """Which saved checkpoint had the best held-out window mean; ``best`` points at it.

    Only saved checkpoints compete, so the pointer always names a folder that exists, at the cost of the
    best step being known to within ``checkpoint_every`` steps.
    """

    name: str | None = None
    step: int = -1
    held_out_mean: float = float("-inf")

    def offer(self, name: str, step: int, held_out_mean: float | None) -> bool:
        """Consider a checkpoint just saved; True when it becomes the best (None: no full window yet)."""
        if held_out_mean is None or held_out_mean <= self.held_out_mean:
            return False
        self.name, self.step, self.held_out_mean = name, step, held_out_mean
        return True

    def state_dict(self) -> dict[str, Any]:
        """Plain data for the trainer state."""
        return {"name": self.name, "step": self.step, "held_out_mean": self.held_out_mean}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.name, self.step, self.held_out_mean = state["name"], int(state["step"]), float(state["held_out_mean"])


def save(
    run: str | Path,
    step: int,
    policy: MusicgenBundle,
    value: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    config: RLConfig,
    state: Mapping[str, Any],
) -> str:
    """Write, stage by stage, the checkpoint of ``step`` and point ``latest`` at it.

    Args:
        run: The run's folder (path or fsspec URL).
        step: The steps done.
        policy: The policy, saved as a generator-loadable MusicGen.
        value: The value model; optimizers: the policy's and the value's.
        config: The run (recorded in ``musicrl.json``).
        state: More of the trainer's state (plain data and tensors), stored in ``trainer_state.pt``.

    Returns:
        The checkpoint's folder (a model URI).
    """
    folder = f"{_root(run)}/checkpoints/{step_name(step)}"
    metadata = CheckpointMetadata(
        kind="policy",
        parent_uri=config.policy_uri,
        training_run=str(run),
        extra={
            "stage": config.stage,
            "step": step,
            "reference_uri": config.reference,
            "alpha": config.alpha,
            "rewards": [{"reward": r.reward, "uri": r.uri, "weight": r.weight} for r in config.rewards],
        },
    )
    trainer_state = {
        **state,
        "step": step,
        "value": value.state_dict(),
        "optimizers": [o.state_dict() for o in optimizers],
    }
    save_checkpoint(policy.model, policy.tokenizer, folder, metadata,
                    write_extra=lambda staging: torch.save(trainer_state, staging / TRAINER_STATE))  # fmt: skip
    write_pointer(run, LATEST, step_name(step))
    logger.info("saved checkpoint %s", folder)
    return folder


def resume(
    run: str | Path,
    policy: MusicgenForConditionalGeneration,
    value: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
) -> dict[str, Any] | None:
    """Load the run's latest checkpoint into the models and optimisers.

    Returns:
        The rest of its trainer state (``step`` included), or None for a run without checkpoints.
    """
    name = read_pointer(run, LATEST)
    if name is None:
        return None
    with _local_folder(f"{_root(run)}/checkpoints/{name}") as folder:
        saved = MusicgenForConditionalGeneration.from_pretrained(folder)
        policy.load_state_dict(saved.state_dict())
        state: dict[str, Any] = torch.load(folder / TRAINER_STATE, weights_only=False)  # ours, from save()
    value.load_state_dict(state.pop("value"))
    for optimizer, optimizer_state in zip(optimizers, state.pop("optimizers"), strict=True):
        optimizer.load_state_dict(optimizer_state)
    logger.info("resumed from %s at step %d", name, state["step"])
    return state


def write_pointer(run: str | Path, pointer: str, name: str) -> None:
    """Make ``<run>/checkpoints/<pointer>`` name the checkpoint folder ``name``, atomically."""
    fs, path = fsspec.core.url_to_fs(f"{_root(run)}/checkpoints/{pointer}")
    if isinstance(fs, LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if Path(path).is_dir():  # a run from before pointers copied its best checkpoint here: keep the copy
            legacy = Path(path).with_name(f"{pointer}-copy-{uuid.uuid4().hex[:8]}")
            logger.warning("moving the checkpoint copy %s to %s: %s is now a pointer file", path, legacy, pointer)
            os.rename(path, legacy)
        with tempfile.NamedTemporaryFile("w", dir=Path(path).parent, prefix=f".{pointer}-", delete=False) as f:
            f.write(name)
        os.replace(f.name, path)
    else:
        fs.pipe_file(path, name.encode())  # one object written in one request: readers see old or new


def read_pointer(run: str | Path, pointer: str) -> str | None:
    """The checkpoint folder name ``<run>/checkpoints/<pointer>`` holds, or None if there is no such file."""
    fs, path = fsspec.core.url_to_fs(f"{_root(run)}/checkpoints/{pointer}")
    if not fs.exists(path):
        return None
    return str(fs.cat_file(path).decode().strip())


def rng_states() -> list[dict[str, Any]]:
    """Every process's random-number generators (torch, CUDA, numpy, Python), indexed by rank.

    A collective when distributed: every process must call it.
    """
    local = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if not (dist.is_available() and dist.is_initialized()):
        return [local]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, local)
    return states


def restore_rng_states(states: Sequence[Mapping[str, Any]], rank: int) -> None:
    """Restore this process's generators from :func:`rng_states`' list (left alone if it has no entry)."""
    if rank >= len(states):
        logger.warning("the checkpoint holds RNG states of %d processes, none for rank %d", len(states), rank)
        return
    state = states[rank]
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _root(run: str | Path) -> str:
    return str(run).rstrip("/")


@contextmanager
def _local_folder(url: str) -> Iterator[Path]:
    """A local folder holding the checkpoint at ``url``: itself when local, else a temporary download."""
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="musicrl-resume-") as tmp:
        for remote in fs.find(path):
            target = Path(tmp) / remote[len(path.rstrip("/")) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(target))
        yield Path(tmp)
