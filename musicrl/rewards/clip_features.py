"""Fixed features of a clip for the preference baselines: code histograms, log-mel statistics, CLAP embeddings.

A baseline learns a Bradley–Terry head over one of these (:mod:`musicrl.rewards.feature_preference`); the
platform's own reward learns its features from the codes with the generator's decoder
(:mod:`musicrl.rewards.preference`). Where a baseline wins, the default model is missing what its
features hold.
"""

from collections.abc import Sequence

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from musicrl.models.clap_loading import ClapBundle
from musicrl.rewards.clap_embedding import embed_texts
from musicrl.rewards.clap_preference import ClapPreferenceHead, embed_clips


MEL_BANDS = 32  # coarse enough that 1k pairs fit a head over its statistics
FRAME_S = 0.032  # STFT frame (rounded up to a power of two samples) and
HOP_S = 0.010  # hop, the usual speech and music front-end settings


def code_histograms(codes: Sequence[np.ndarray], vocab_size: int) -> np.ndarray:
    """Each clip's token frequencies per codebook: float32 [C, K * V], each codebook's V entries summing to 1.

    Args:
        codes: C grids, integer [K, T_c], ids in [0, vocab_size).
        vocab_size: V.
    """
    out = []
    for grid in codes:
        grid = np.asarray(grid, np.int64)
        offsets = np.arange(grid.shape[0])[:, None] * vocab_size  # [K, 1]: codebook k's bins start at k * V
        counts = np.bincount((grid + offsets).ravel(), minlength=grid.shape[0] * vocab_size)  # [K * V]
        out.append(counts / grid.shape[1])
    return np.stack(out).astype(np.float32)


def log_mel_statistics(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per-band statistics of a clip's log-mel spectrogram over time: float32 [4 * MEL_BANDS].

    For each of :data:`MEL_BANDS` bands (0 Hz to Nyquist) of the log10 power: its mean, its standard
    deviation, the mean absolute change from frame to frame (onsets) and its least-squares slope per second
    (crescendos).
    """
    frame = 1 << int(np.ceil(np.log2(FRAME_S * sample_rate)))
    hop = int(round(HOP_S * sample_rate))
    filters = mel_filter_bank(frame // 2 + 1, MEL_BANDS, 0.0, sample_rate / 2, sample_rate, mel_scale="htk")
    mel = spectrogram(
        np.asarray(audio, np.float32),
        window_function(frame, "hann"),
        frame_length=frame,
        hop_length=hop,
        power=2.0,
        mel_filters=filters,
        log_mel="log10",
    ).astype(np.float64)  # [MEL_BANDS, F]
    time_s = (np.arange(mel.shape[1]) - (mel.shape[1] - 1) / 2) * HOP_S  # [F], centred
    slope = (mel * time_s).sum(axis=1) / max(float((time_s**2).sum()), 1e-12)  # [MEL_BANDS]
    change = np.abs(np.diff(mel, axis=1)).mean(axis=1) if mel.shape[1] > 1 else np.zeros(MEL_BANDS)
    return np.concatenate([mel.mean(axis=1), mel.std(axis=1), change, slope]).astype(np.float32)


@torch.inference_mode()
def clap_features(
    bundle: ClapBundle, audio: Sequence[np.ndarray], sample_rate: int, prompts: Sequence[str]
) -> np.ndarray:
    """The CLAP baseline's features of each clip with its prompt, [a, a ⊙ t]: float32 [C, 2D].

    Args:
        bundle: The CLAP.
        audio: C mono waveforms, float32 [S_c].
        sample_rate: Their samples per second.
        prompts: The prompt of each clip.
    """
    embedded = embed_clips(bundle, list(audio), sample_rate).cpu()  # [C, D]
    distinct = sorted(set(prompts))
    text = embed_texts(bundle, distinct).cpu()  # [P, D]
    row = {prompt: i for i, prompt in enumerate(distinct)}
    features = ClapPreferenceHead.features(text[[row[p] for p in prompts]], embedded)  # [C, 2D]
    return features.numpy().astype(np.float32)


@torch.inference_mode()
def decoder_features(
    policy_uri: str, prompts: Sequence[str], codes: Sequence[np.ndarray], batch_size: int = 64
) -> np.ndarray:
    """The untrained preference reward's pooled decoder state of each clip with its prompt: float32 [C, D].

    A linear probe on these tells what the generator initialisation already holds before any finetuning: if
    it beats the finetuned reward, the recipe loses information; if it matches it, the features are the limit.

    Args:
        policy_uri: The policy the reward would be initialised from.
        prompts: The prompt of each clip.
        codes: C grids, integer [K, T_c].
        batch_size: Clips per forward pass.
    """
    from musicrl.rewards.preference import PreferenceRewardModel
    from musicrl.rewards.preference_inputs import delayed_grid

    model = PreferenceRewardModel.from_policy(policy_uri)
    width = int(model.backbone.config.decoder.hidden_size)
    identity = torch.nn.Linear(width, width)  # the head returns the pooled state itself: [B, D]
    torch.nn.init.eye_(identity.weight)
    torch.nn.init.zeros_(identity.bias)
    model.head = identity
    out = []
    for start in range(0, len(codes), batch_size):
        clips = [torch.as_tensor(np.asarray(c, np.int64)) for c in codes[start : start + batch_size]]
        grid, mask = delayed_grid(clips, model.start_token_id)  # [B, K, T + K], [B, T + K]
        states, text_mask = model.encode_text(prompts[start : start + batch_size])
        out.append(model(grid, mask, states, text_mask).numpy())  # [B, D]
    return np.concatenate(out).astype(np.float32)
