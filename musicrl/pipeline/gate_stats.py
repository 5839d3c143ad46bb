"""The gate's statistics: paired differences, win rates and their bootstrap intervals, over prompts.

Every measurement is a table [P, C]: P held-out prompts, C paired clips per prompt (clip j of prompt i has
the same seed under both policies). Clips of one prompt are correlated, so the bootstrap resamples prompts
with all their clips (a cluster bootstrap, Davison & Hinkley 1997, §3.8), not clips one by one, which would
give intervals too narrow. Every statistic of one gate run uses the same resampled prompt sets.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Estimate:
    """A mean with its percentile bootstrap interval.

    Attributes:
        mean: The estimate on the full table.
        low: Lower bound of the interval.
        high: Upper bound of the interval.
    """

    mean: float
    low: float
    high: float


class PromptBootstrap:
    """Resampled prompt sets, drawn once and shared by every statistic of a gate run.

    Args:
        prompts: P, the number of prompts.
        resamples: Number of resampled sets R.
        confidence_level: Two-sided coverage of the intervals.
        seed: Seed of numpy's generator, an int or a ``SeedSequence`` (the same seed gives the same intervals).
    """

    def __init__(
        self, prompts: int, resamples: int, confidence_level: float, seed: int | np.random.SeedSequence
    ) -> None:
        self.draws = np.random.default_rng(seed).integers(0, prompts, size=(resamples, prompts))  # [R, P]
        self.confidence_level = confidence_level

    def mean(self, table: np.ndarray) -> Estimate:
        """The mean of ``table`` [P, C] with its interval.

        Args:
            table: One value per (prompt, clip), float [P, C].
        """
        per_prompt = table.mean(axis=1)  # [P]: every prompt has C clips, so the mean of means is the mean
        resampled = per_prompt[self.draws].mean(axis=1)  # [R]
        tail = (1.0 - self.confidence_level) / 2.0
        low, high = np.quantile(resampled, [tail, 1.0 - tail])
        return Estimate(float(per_prompt.mean()), float(low), float(high))


def wins(candidate: np.ndarray, stable: np.ndarray) -> np.ndarray:
    """1 where the candidate's score is higher, 0 where lower, 0.5 on ties: float [P, C] from two [P, C]."""
    return np.where(candidate > stable, 1.0, np.where(candidate < stable, 0.0, 0.5))


def standardised(candidate: np.ndarray, stable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both policies' scores as z-scores over the pooled clips of one reward, so rewards can be averaged.

    A reward that gives every clip the same score has no spread; its z-scores are all 0 (it favours neither).

    Args:
        candidate: The candidate's scores [P, C]; stable: the stable policy's, same shape.

    Returns:
        The two tables standardised with the same pooled mean and standard deviation.
    """
    pooled = np.concatenate([candidate.ravel(), stable.ravel()]).astype(np.float64)
    spread = pooled.std()
    if spread == 0.0:
        return np.zeros_like(candidate, dtype=np.float64), np.zeros_like(stable, dtype=np.float64)
    centre = pooled.mean()
    return (candidate - centre) / spread, (stable - centre) / spread
