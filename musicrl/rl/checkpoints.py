"""Checkpoints of an RL run: a generator-loadable policy directory plus the trainer's state, and resuming.

``<run>/checkpoints/step-000100/`` is a ``save_pretrained`` MusicGen with its tokenizer and a ``musicrl.json``
(kind ``policy``, the init as parent, the stage, step, KL reference and rewards), so the generator serves it
by path; ``trainer_state.pt`` beside it holds the value model, the optimisers and the alarm. The file
``<run>/checkpoints/latest`` names the newest complete checkpoint and is replaced atomically after it is
written, so a crash mid-save resumes from the previous one.
"""

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import MusicgenForConditionalGeneration

from musicrl.models.checkpoint import CheckpointMetadata, save_checkpoint
from musicrl.models.loading import MusicgenBundle
from musicrl.rl.alarm import OverOptimisationAlarm
from musicrl.rl.config import RLConfig
from musicrl.rl.metrics import MetricsLog


logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
LATEST = "latest"


def save(
    run: Path,
    step: int,
    policy: MusicgenBundle,
    value: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    alarm: OverOptimisationAlarm | None,
    config: RLConfig,
    tag: str | None = None,
) -> str:
    """Write the checkpoint of ``step`` (named ``tag`` if given; only untagged ones become ``latest``)."""
    folder = run / "checkpoints" / (tag or f"step-{step:06d}")
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
    save_checkpoint(policy.model, policy.tokenizer, str(folder), metadata)
    state = {
        "step": step,
        "value": value.state_dict(),
        "optimizers": [o.state_dict() for o in optimizers],
        "alarm": None if alarm is None else {"best_mean": alarm.best_mean, "best_step": alarm.best_step},
    }
    torch.save(state, folder / TRAINER_STATE)
    if tag is None:
        _replace_text(run / "checkpoints" / LATEST, folder.name)
    logger.info("saved checkpoint %s", folder)
    return str(folder)


def resume(
    run: Path,
    policy: MusicgenForConditionalGeneration,
    value: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    alarm: OverOptimisationAlarm | None,
    log: MetricsLog,
) -> int:
    """Load the run's latest checkpoint into the models and optimisers; returns its step (0 for a new run)."""
    pointer = run / "checkpoints" / LATEST
    if not pointer.exists():
        return 0
    folder = run / "checkpoints" / pointer.read_text().strip()
    saved = MusicgenForConditionalGeneration.from_pretrained(folder)
    policy.load_state_dict(saved.state_dict())
    state = torch.load(folder / TRAINER_STATE, weights_only=False)  # our own file, written by save()
    value.load_state_dict(state["value"])
    for optimizer, optimizer_state in zip(optimizers, state["optimizers"], strict=True):
        optimizer.load_state_dict(optimizer_state)
    if alarm is not None and state["alarm"] is not None:
        alarm.best_mean, alarm.best_step = state["alarm"]["best_mean"], state["alarm"]["best_step"]
    log.truncate_after(state["step"])
    logger.info("resumed from %s at step %d", folder, state["step"])
    return int(state["step"])


def _replace_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
        f.write(text)
        temporary = f.name
    os.replace(temporary, path)
