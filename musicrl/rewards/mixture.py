"""A weighted mix of rewards (MusicRL-R: text adherence + quality), with optional per-reward normalisation.

Rewards live on different scales (a cosine in [-1, 1], a rescaled MOS in [0, 1], an unbounded BT logit).
Normalising each before weighting keeps one reward from drowning the other, which is what the weights are
meant to decide:

* ``none``: the raw score;
* ``batch``: z-scored within the batch (a scale-free advantage-like signal; needs batches of 2+);
* ``running``: z-scored with a running mean and variance (exponential moving averages), so a score means
  the same across batches — the usual choice for RL rewards.

Under ``torch.distributed`` the batch is the union of every process's clips: each process's count, mean and
sum of squared deviations are gathered and combined before normalising, so all processes normalise alike
(and their running statistics stay equal). The running statistics are part of a trainer's checkpoint
(:meth:`RewardMixture.state_dict`), so a resumed run normalises as the uninterrupted one would.
"""

import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from musicrl.errors import InvalidRequest
from musicrl.rewards.base import ClipBatch, RewardModel


EPSILON = 1e-6  # keeps a constant reward from dividing by zero


class Normalization(enum.StrEnum):
    NONE = "none"
    BATCH = "batch"
    RUNNING = "running"


@dataclass(frozen=True, slots=True)
class MixtureTerm:
    """One reward of the mix.

    Attributes:
        reward: The reward's name (``text-adherence``, ``quality``, ``preference``).
        weight: Its weight in the sum.
        normalization: How it is normalised before weighting.
    """

    reward: str
    weight: float
    normalization: Normalization = Normalization.NONE

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight):
            raise InvalidRequest(f"the weight of {self.reward!r} must be a finite number, got {self.weight}")


@dataclass(frozen=True, slots=True)
class MixtureConfig:
    """The mix: ``R = Σ weight_i · normalise_i(r_i)``.

    Attributes:
        terms: The rewards and their weights.
        momentum: For ``running`` normalisation: weight of the old statistics per batch.
    """

    terms: tuple[MixtureTerm, ...]
    momentum: float = 0.99  # ~100 batches of memory: stable, yet follows a policy that improves

    def __post_init__(self) -> None:
        if not self.terms:
            raise InvalidRequest("a reward mixture needs at least one term")
        names = [t.reward for t in self.terms]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"a reward appears twice in the mixture: {names}")
        if not 0 <= self.momentum < 1:
            raise InvalidRequest(f"momentum must be in [0, 1), got {self.momentum}")

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "MixtureConfig":
        """From JSON: ``{"terms": [{"reward": "quality", "weight": 1.0, "normalization": "running"}], ...}``."""
        try:
            terms = tuple(
                MixtureTerm(str(t["reward"]), float(t["weight"]), Normalization(t.get("normalization", "none")))
                for t in data["terms"]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidRequest(f"malformed reward mixture {json.dumps(data)[:200]}: {e}") from e
        return cls(terms=terms, momentum=float(data.get("momentum", 0.99)))


@dataclass(frozen=True, slots=True)
class BatchMoments:
    """A batch's scores summarised: ``count`` clips, their ``mean`` and ``m2`` (sum of squared deviations)."""

    count: float
    mean: float
    m2: float

    @classmethod
    def of(cls, scores: np.ndarray) -> "BatchMoments":
        """The moments of float64 scores [B]."""
        mean = float(scores.mean()) if len(scores) else 0.0
        return cls(float(len(scores)), mean, float(((scores - mean) ** 2).sum()))

    @property
    def var(self) -> float:
        """Population variance (as ``np.var``)."""
        return self.m2 / self.count if self.count else 0.0

    @staticmethod
    def combine(parts: Sequence["BatchMoments"]) -> "BatchMoments":
        """The moments of the union of batches (Chan, Golub & LeVeque's pairwise update, exact in float64)."""
        count = sum(p.count for p in parts)
        if not count:
            return BatchMoments(0.0, 0.0, 0.0)
        mean = sum(p.count * p.mean for p in parts) / count
        m2 = sum(p.m2 + p.count * (p.mean - mean) ** 2 for p in parts)
        return BatchMoments(count, mean, m2)


def all_reduce_moments(moments: BatchMoments) -> BatchMoments:
    """This process's moments combined with every other process's (itself when not distributed).

    Every process of the group must call it, in the same order (one call per normalised reward per batch).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return moments
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    local = torch.tensor([moments.count, moments.mean, moments.m2], dtype=torch.float64, device=device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    # gather, not sum: combining in rank order gives every process bit-identical statistics
    dist.all_gather(gathered, local)
    return BatchMoments.combine([BatchMoments(*(float(v) for v in g.tolist())) for g in gathered])


@dataclass(slots=True)
class _RunningStats:
    mean: float = 0.0
    var: float = 1.0
    seen: bool = False


@dataclass(slots=True)
class RewardMixture:
    """Scores a batch with every reward of the mix and combines them.

    Args:
        rewards: The reward models by name (every term's reward must be here).
        config: Weights and normalisation.
    """

    rewards: Mapping[str, RewardModel]
    config: MixtureConfig
    _stats: dict[str, _RunningStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [t.reward for t in self.config.terms if t.reward not in self.rewards]
        if missing:
            raise InvalidRequest(f"the mixture names rewards that are not loaded: {missing}")

    def score(self, batch: ClipBatch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The mixed reward float32 [B] and each reward's raw score float32 [B] by name."""
        raw = {t.reward: self.rewards[t.reward].score(batch) for t in self.config.terms}
        total = np.zeros(len(batch), dtype=np.float64)
        for term in self.config.terms:
            total += term.weight * self._normalized(term, raw[term.reward].astype(np.float64))
        return total.astype(np.float32), raw

    def state_dict(self) -> dict[str, Any]:
        """The running statistics by reward (plain floats), for a trainer's checkpoint."""
        return {"stats": {name: {"mean": s.mean, "var": s.var, "seen": s.seen} for name, s in self._stats.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._stats = {name: _RunningStats(float(s["mean"]), float(s["var"]), bool(s["seen"]))
                       for name, s in state["stats"].items()}  # fmt: skip

    def _normalized(self, term: MixtureTerm, scores: np.ndarray) -> np.ndarray:
        if term.normalization is Normalization.NONE:
            return scores
        batch = all_reduce_moments(BatchMoments.of(scores))
        if term.normalization is Normalization.BATCH:
            if batch.count < 2:
                raise InvalidRequest(f"batch normalisation of {term.reward!r} needs at least 2 clips per batch")
            return (scores - batch.mean) / (math.sqrt(batch.var) + EPSILON)
        stats = self._stats.setdefault(term.reward, _RunningStats())
        if not stats.seen:  # the first batch sets the scale instead of averaging with arbitrary priors
            stats.mean, stats.var, stats.seen = batch.mean, max(batch.var, EPSILON), True
        else:
            m = self.config.momentum
            stats.mean = m * stats.mean + (1 - m) * batch.mean
            stats.var = m * stats.var + (1 - m) * batch.var
        return (scores - stats.mean) / math.sqrt(stats.var + EPSILON)
