"""Analytic rewards: closed-form functions of a clip, with no model to train.

They make RL testable and debuggable on tiny models (a run must raise them by a clear margin), and serve as
held-out sanity checks. ``low-codes``: the share of codebook-0 tokens in the lower half of the vocabulary;
``high-codes``: the share in the upper half, which falls exactly as ``low-codes`` rises (a held-out reward
that over-optimising ``low-codes`` must trip). ``loudness``: the RMS level, mapped from [-60, 0] dBFS to [0, 1].
"""

import numpy as np

from musicrl.rewards.base import ClipBatch, ClipInput, finite_scores


SILENCE_DB = -60.0  # the floor of the loudness scale


class LowCodesShare:
    """Share of codebook-0 tokens below ``vocab_size / 2``; in [0, 1].

    Args:
        vocab_size: The codebook size of the policy.
    """

    name = "low-codes"
    reads = ClipInput.CODES

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def score(self, batch: ClipBatch) -> np.ndarray:
        batch.require(self.reads, self.name)
        assert batch.codes is not None
        return finite_scores([float((c[0] < self.vocab_size // 2).mean()) for c in batch.codes], self.name)


class HighCodesShare(LowCodesShare):
    """Share of codebook-0 tokens at or above ``vocab_size / 2``; in [0, 1]."""

    name = "high-codes"

    def score(self, batch: ClipBatch) -> np.ndarray:
        return finite_scores(1.0 - super().score(batch), self.name)


class Loudness:
    """RMS level in dBFS, mapped linearly from [SILENCE_DB, 0] to [0, 1] and clipped."""

    name = "loudness"
    reads = ClipInput.AUDIO

    def score(self, batch: ClipBatch) -> np.ndarray:
        batch.require(self.reads, self.name)
        assert batch.audio is not None
        levels = []
        for clip in batch.audio:
            rms = float(np.sqrt(np.mean(np.square(clip.astype(np.float64)))))
            decibels = 20 * np.log10(max(rms, 1e-12))
            levels.append(float(np.clip(1 - decibels / SILENCE_DB, 0.0, 1.0)))
        return finite_scores(levels, self.name)
