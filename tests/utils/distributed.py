"""Workers for tests that need a real ``torch.distributed`` group: gloo on loopback, spawned per rank.

They live here, not in a test module, because ``torch.multiprocessing.spawn`` pickles the worker by its
import path and pytest's importlib mode gives test modules names a child process cannot import.
"""

import json
from pathlib import Path

import numpy as np
import torch.distributed as dist

from musicrl.rewards.base import ClipBatch, ClipInput
from musicrl.rewards.mixture import MixtureConfig, MixtureTerm, Normalization, RewardMixture


# each rank's scores of two batches: different sizes and scales, so per-rank statistics would differ
RANK_SCORES = {
    0: [[1.0, 2.0, 3.0], [2.0, 2.5, 4.0]],
    1: [[10.0, 30.0], [0.0, 5.0]],
}


class ScriptedReward:
    """Returns the next scripted batch of scores on each call."""

    reads = ClipInput.AUDIO

    def __init__(self, name: str, batches: list[list[float]]) -> None:
        self.name = name
        self._batches = iter(batches)

    def score(self, batch: ClipBatch) -> np.ndarray:
        return np.asarray(next(self._batches), dtype=np.float32)


def scripted_mixture(batches: list[list[float]]) -> RewardMixture:
    """A mixture of one running-normalised reward and one batch-normalised reward, both scripted."""
    config = MixtureConfig(
        (MixtureTerm("running", 1.0, Normalization.RUNNING), MixtureTerm("batch", 1.0, Normalization.BATCH)),
        momentum=0.5,  # a short memory: the second batch moves the statistics visibly
    )
    return RewardMixture({"running": ScriptedReward("running", batches), "batch": ScriptedReward("batch", batches)},
                         config)  # fmt: skip


def clips(n: int) -> ClipBatch:
    """``n`` silent clips (the scripted rewards ignore them)."""
    return ClipBatch(prompts=["x"] * n, audio=[np.zeros(16, np.float32)] * n, sample_rate=16_000)


def mixture_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """Score this rank's batches in a gloo group; write the totals and the running statistics to ``out``."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        mixture = scripted_mixture(RANK_SCORES[rank])
        totals = [mixture.score(clips(len(b)))[0].tolist() for b in RANK_SCORES[rank]]
        result = {"totals": totals, "state": mixture.state_dict()}
        (Path(out) / f"rank-{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()
