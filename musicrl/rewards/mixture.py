"""A weighted mix of rewards (MusicRL-R: text adherence + quality), with optional per-reward normalisation.

Rewards live on different scales (a cosine in [-1, 1], a rescaled MOS in [0, 1], an unbounded BT logit).
Normalising each before weighting keeps one reward from drowning the other, which is what the weights are
meant to decide:

* ``none``: the raw score;
* ``batch``: z-scored within the batch (a scale-free advantage-like signal; needs batches of 2+);
* ``running``: z-scored with a running mean and variance (exponential moving averages), so a score means
  the same across batches — the usual choice for RL rewards.
"""

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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

    def _normalized(self, term: MixtureTerm, scores: np.ndarray) -> np.ndarray:
        if term.normalization is Normalization.NONE:
            return scores
        if term.normalization is Normalization.BATCH:
            if len(scores) < 2:
                raise InvalidRequest(f"batch normalisation of {term.reward!r} needs at least 2 clips per batch")
            return (scores - scores.mean()) / (scores.std() + EPSILON)
        stats = self._stats.setdefault(term.reward, _RunningStats())
        mean, var = float(scores.mean()), float(scores.var())
        if not stats.seen:  # the first batch sets the scale instead of averaging with arbitrary priors
            stats.mean, stats.var, stats.seen = mean, max(var, EPSILON), True
        else:
            m = self.config.momentum
            stats.mean = m * stats.mean + (1 - m) * mean
            stats.var = m * stats.var + (1 - m) * var
        return (scores - stats.mean) / math.sqrt(stats.var + EPSILON)
