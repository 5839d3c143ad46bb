"""The CLAP steps both audio rewards share: resample, cut into segments, embed text and audio in batches.

Text adherence (cosine of prompt and audio) and the quality model (a head over audio embeddings) read
audio the same way, so they cut it the same way: CLAP takes 10 s of 48 kHz audio, and the paper averages
its MuLan scores over 10 s segments. Segments are cut at the caller's sample rate and resampled one by
one, so a long clip embeds exactly like its segments sent as separate clips (no filter state crosses a
segment boundary).
"""

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from musicrl.errors import InvalidRequest
from musicrl.models.clap_features import ClapLogMel
from musicrl.models.clap_loading import ClapBundle
from musicrl.models.resampling import resample_many


logger = logging.getLogger(__name__)


def split_segments(audio: np.ndarray, sample_rate: int, segment_s: float, min_segment_s: float) -> list[np.ndarray]:
    """Cut a waveform into consecutive segments of ``segment_s`` seconds.

    The last, shorter segment is kept when it lasts at least ``min_segment_s``; a clip shorter than
    ``min_segment_s`` is one segment (every clip gets a score).

    Args:
        audio: float [S].
        sample_rate: Samples per second of ``audio``.
        segment_s: Segment length in seconds.
        min_segment_s: Shortest trailing segment kept, in seconds.

    Returns:
        Views into ``audio``, at least one.
    """
    step = max(1, int(round(segment_s * sample_rate)))
    shortest = int(round(min_segment_s * sample_rate))
    segments = [audio[start : start + step] for start in range(0, audio.shape[0], step)]
    kept = [s for i, s in enumerate(segments) if i == 0 or s.shape[0] >= shortest]
    return kept


def check_segment_length(bundle: ClapBundle, segment_s: float) -> None:
    """Raise InvalidRequest if ``segment_s`` exceeds what the feature extractor takes whole.

    Longer audio would be cropped at random by ``ClapFeatureExtractor``, and scores would not repeat.
    """
    if segment_s > bundle.max_audio_s:
        raise InvalidRequest(
            f"segment_s={segment_s} is longer than the {bundle.max_audio_s:g} s that {bundle.uri} embeds whole; "
            f"use segment_s <= {bundle.max_audio_s:g}"
        )


@torch.inference_mode()
def embed_texts(bundle: ClapBundle, texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm CLAP text embeddings.

    Args:
        bundle: The CLAP model and its tokenizer.
        texts: N prompts (truncated to the tokenizer's ``model_max_length``).

    Returns:
        float32 [N, D] on the model's device.
    """
    tokens = bundle.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    output = bundle.model.get_text_features(
        input_ids=tokens["input_ids"].to(bundle.device),  # [N, L]
        attention_mask=tokens["attention_mask"].to(bundle.device),  # [N, L]
    )
    return _unit_embeddings(output)


@torch.inference_mode()
def embed_segments(
    bundle: ClapBundle, segments: Sequence[np.ndarray], sample_rate: int, batch_size: int
) -> torch.Tensor:
    """Unit-norm CLAP audio embeddings of segments no longer than ``bundle.max_audio_s``.

    Args:
        bundle: The CLAP model and its feature extractor.
        segments: N mono waveforms, float [S_n], at ``sample_rate``.
        sample_rate: Their samples per second; each is resampled to ``bundle.sample_rate``.
        batch_size: Segments per forward pass of the audio tower.

    Returns:
        float32 [N, D] on the model's device.
    """
    limit = int(bundle.feature_extractor.nb_max_samples)
    # a resampled segment may round up by a sample or two past the limit: crop it so no random crop happens
    resampled = [s[:limit] for s in resample_many(segments, sample_rate, bundle.sample_rate, bundle.device)]
    fused = bool(bundle.model.config.audio_config.enable_fusion)
    truncation = "fusion" if fused else "rand_trunc"  # the unfused tower takes one channel, the fused four
    log_mel = ClapLogMel(bundle.feature_extractor, bundle.device)  # the extractor's spectrograms, batched in torch
    chunks = []
    for start in range(0, len(resampled), batch_size):
        batch = resampled[start : start + batch_size]
        features = log_mel(batch, truncation)  # [n, C, frames, mels], C = 4 if fused else 1
        # no segment is longer than the window; the extractor would mark one at random as "longer" for fusion
        is_longer = torch.zeros(len(batch), 1, dtype=torch.bool, device=bundle.device)  # [n, 1]
        output = bundle.model.get_audio_features(input_features=features, is_longer=is_longer)
        chunks.append(_unit_embeddings(output))
    return torch.cat(chunks)  # [N, D]


def _unit_embeddings(output: object) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output holds the projected, normalised
    # embeddings; 4.x returned the tensor itself. Normalising again is a no-op for either.
    embeddings = output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]
    return F.normalize(embeddings.float(), dim=-1)


def mean_by_group(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of ``values`` per group: segments per clip, windows per clip, ratings per clip.

    Args:
        values: [N, ...] float.
        group: int64 [N], each in [0, num_groups); every group must occur at least once.
        num_groups: G.

    Returns:
        [G, ...] float: the mean of the rows of each group.
    """
    totals = torch.zeros((num_groups, *values.shape[1:]), dtype=values.dtype, device=values.device)
    totals.index_add_(0, group, values)  # [G, ...]
    counts = torch.bincount(group, minlength=num_groups).to(values.dtype)  # [G]
    return totals / counts.reshape(-1, *([1] * (values.dim() - 1)))  # [G, ...]
