"""Rollouts: clips sampled with the serving engine, plus what the trainer needs to score and learn from them."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from musicrl.config import SamplingParams
from musicrl.models.delay import delay, window_mask
from musicrl.models.engine import GenerationEngine, GenerationRequest
from musicrl.rewards.base import ClipBatch


@dataclass(frozen=True, slots=True)
class Rollout:
    """A batch of sampled clips.

    Attributes:
        prompts: B prompts.
        codes: int64 [B, K, T].
        grid: The delayed grid int64 [B, K, L = T + K].
        token_mask: Which predicted positions hold a real token, bool [B, K, P = L - 1].
        audio: B waveforms float32 [S].
        sample_rate: Of ``audio``.
    """

    prompts: list[str]
    codes: torch.Tensor
    grid: torch.Tensor
    token_mask: torch.Tensor
    audio: list[np.ndarray]
    sample_rate: int

    def clip_batch(self) -> ClipBatch:
        """The clips as a reward batch (audio and codes)."""
        return ClipBatch(
            prompts=self.prompts,
            audio=self.audio,
            sample_rate=self.sample_rate,
            codes=[c.cpu().numpy() for c in self.codes],
        )


def sample_rollouts(
    engine: GenerationEngine, prompts: Sequence[str], params: SamplingParams, seeds: Sequence[int]
) -> Rollout:
    """Sample one clip per prompt with the serving sampler (same guidance, temperature, top-k as served)."""
    clips = engine.generate_batch([GenerationRequest(p, params, s) for p, s in zip(prompts, seeds, strict=True)])
    # clone: the engine samples under inference_mode, whose tensors cannot take part in autograd
    codes = torch.stack([c.codes for c in clips]).clone().to(engine.device)  # [B, K, T]
    grid = delay(codes, engine.start_token_id)  # [B, K, L]
    frames = torch.full((len(clips),), codes.shape[-1], device=codes.device)
    token_mask = window_mask(frames, engine.num_codebooks, grid.shape[-1])[:, :, 1:]  # [B, K, P]
    return Rollout(
        prompts=list(prompts),
        codes=codes,
        grid=grid,
        token_mask=token_mask,
        audio=[c.audio.numpy() for c in clips],
        sample_rate=clips[0].sample_rate,
    )
