"""The text-adherence reward: how well a clip matches its prompt, by CLAP cosine similarity.

MusicRL (Cideron et al., 2024, §3.1) scores text adherence with MuLan: the cosine between the prompt's
embedding and the audio's, averaged over 10 s segments because MuLan embeds 10 s of audio. CLAP has the
same contract (10 s of 48 kHz audio, a shared embedding space), so we keep the recipe and swap the model.
"""

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from musicrl.errors import InvalidRequest
from musicrl.models.clap_loading import ClapBundle, load_clap
from musicrl.rewards.base import ClipBatch, ClipInput, finite_scores
from musicrl.rewards.clap_embedding import (
    check_segment_length,
    embed_segments,
    embed_texts,
    mean_by_group,
    split_segments,
)


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TextAdherenceConfig:
    """How clips are cut and batched for CLAP.

    Attributes:
        segment_s: Segment length in seconds; a clip's score is the mean over its segments.
        min_segment_s: A trailing segment shorter than this is dropped (a clip shorter than it is one segment).
        batch_size: Segments per forward pass of the audio tower.
    """

    segment_s: float = 10.0  # MuLan's and CLAP's input length (MusicRL §3.1)
    min_segment_s: float = 1.0  # shorter tails are mostly padding once CLAP repeats them to 10 s
    batch_size: int = 16  # ~16 × 1001 × 64 float32 spectrograms: small next to any model

    def __post_init__(self) -> None:
        if not (math.isfinite(self.segment_s) and self.segment_s > 0):
            raise InvalidRequest(f"segment_s must be a positive number of seconds, got {self.segment_s}")
        if not (math.isfinite(self.min_segment_s) and 0 <= self.min_segment_s <= self.segment_s):
            raise InvalidRequest(
                f"min_segment_s must lie in [0, segment_s={self.segment_s}] seconds, got {self.min_segment_s}"
            )
        if self.batch_size < 1:
            raise InvalidRequest(f"batch_size must be >= 1, got {self.batch_size}")


class TextAdherence:
    """Cosine similarity of CLAP prompt and audio embeddings, averaged over segments: scores in [-1, 1].

    Args:
        bundle: A loaded CLAP (``load_clap``).
        config: Segmenting and batching.

    Raises:
        InvalidRequest: ``config.segment_s`` is longer than the audio the model embeds whole.
    """

    name = "text-adherence"
    reads = ClipInput.AUDIO

    def __init__(self, bundle: ClapBundle, config: TextAdherenceConfig) -> None:
        check_segment_length(bundle, config.segment_s)
        self.bundle = bundle
        self.config = config

    @classmethod
    def load(cls, uri: str, config: TextAdherenceConfig | None = None, *, device: str = "cpu") -> "TextAdherence":
        """Load the CLAP at ``uri`` (see ``load_clap``) and wrap it."""
        return cls(load_clap(uri, device=device), config or TextAdherenceConfig())

    def score(self, batch: ClipBatch) -> np.ndarray:
        """Score each clip against its prompt.

        Args:
            batch: B prompts with their audio and sample rate.

        Returns:
            float32 [B]: per clip, the mean over its segments of cos(text, segment), in [-1, 1].

        Raises:
            InvalidRequest: The batch carries no audio.
        """
        batch.require(ClipInput.AUDIO, self.name)
        assert batch.audio is not None and batch.sample_rate is not None  # checked by require / ClipBatch
        segments, owner = [], []
        for index, clip in enumerate(batch.audio):
            cut = split_segments(clip, batch.sample_rate, self.config.segment_s, self.config.min_segment_s)
            segments.extend(cut)
            owner.extend([index] * len(cut))
        prompts = sorted(set(batch.prompts))  # each distinct prompt is embedded once
        position = {prompt: i for i, prompt in enumerate(prompts)}
        text = embed_texts(self.bundle, prompts)  # [P, D]
        audio = embed_segments(self.bundle, segments, batch.sample_rate, self.config.batch_size)  # [N, D]
        prompt_of_clip = torch.tensor([position[p] for p in batch.prompts], device=audio.device)  # [B]
        clip_of_segment = torch.tensor(owner, device=audio.device)  # [N]
        cosine = (audio * text[prompt_of_clip[clip_of_segment]]).sum(dim=-1)  # [N]
        scores = mean_by_group(cosine, clip_of_segment, len(batch)).clamp(-1.0, 1.0)  # [B]; rounding can pass ±1
        return finite_scores(scores.cpu().numpy(), self.name)
