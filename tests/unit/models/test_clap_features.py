"""The torch log-mel front end against transformers' ClapFeatureExtractor, and the rewards that read it.

Tolerance: 1e-4 dB on every bin (float32 rounding of the decibels gives about 1e-5), and 1e-5 on embeddings
and scores.
"""

import numpy as np
import pytest
import torch
from transformers import ClapFeatureExtractor

from musicrl.errors import InvalidRequest
from musicrl.models.audio import resample
from musicrl.models.clap_features import ClapLogMel
from musicrl.models.clap_loading import load_clap
from musicrl.rewards.base import ClipBatch
from musicrl.rewards.clap_embedding import _unit_embeddings, embed_segments, embed_texts
from musicrl.rewards.text_adherence import TextAdherence, TextAdherenceConfig


DECIBELS = 1e-4
RATE = 48_000


def _real_shaped(length: int, seed: int = 0) -> list[np.ndarray]:
    """Audio a reward meets: noise, a tone that stops, a clipped bass, near-silence, short clips."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / RATE
    return [
        (0.1 * rng.standard_normal(length)).astype(np.float32),
        (0.5 * np.sin(2 * np.pi * 440 * t) * (t < t[-1] / 3)).astype(np.float32),  # a tone, then silence
        np.clip(2 * np.sin(2 * np.pi * 110 * t), -1, 1).astype(np.float32),
        (1e-6 * rng.standard_normal(length)).astype(np.float32),  # at the -100 dB floor
        (0.3 * rng.standard_normal(length // 7)).astype(np.float32),  # short: repeat-padded
        (0.3 * rng.standard_normal(777)).astype(np.float32),
    ]


@pytest.mark.parametrize("truncation", ["rand_trunc", "fusion"])
@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
def test_spectrograms_equal_the_feature_extractor(truncation, padding):
    extractor = ClapFeatureExtractor(max_length_s=2, padding=padding)  # the laion settings, a shorter window
    waves = _real_shaped(extractor.nb_max_samples)
    expected = extractor(waves, sampling_rate=RATE, truncation=truncation, return_tensors="pt")["input_features"]
    got = ClapLogMel(extractor)(waves, truncation)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=DECIBELS)


def test_random_audio_at_the_full_window_equals_the_feature_extractor():
    extractor = ClapFeatureExtractor()  # 10 s
    waves = list(np.random.default_rng(1).standard_normal((2, extractor.nb_max_samples)).astype(np.float32))
    expected = extractor(waves, sampling_rate=RATE, truncation="rand_trunc", return_tensors="pt")["input_features"]
    torch.testing.assert_close(ClapLogMel(extractor)(waves, "rand_trunc"), expected, rtol=0, atol=DECIBELS)


def test_audio_longer_than_the_window_is_refused_not_cropped_at_random():
    extractor = ClapFeatureExtractor(max_length_s=1)
    with pytest.raises(InvalidRequest, match="1 to 48000 samples"):
        ClapLogMel(extractor)([np.zeros(RATE + 1, np.float32)], "rand_trunc")
    with pytest.raises(InvalidRequest, match="truncation"):
        ClapLogMel(extractor)([np.zeros(10, np.float32)], "crop")


@torch.inference_mode()
def _reference_embeddings(bundle, segments: list[np.ndarray], sample_rate: int) -> torch.Tensor:
    """What embed_segments computed before the torch front end: scipy resampling and the extractor."""
    limit = bundle.feature_extractor.nb_max_samples
    resampled = [resample(s, sample_rate, bundle.sample_rate)[:limit] for s in segments]
    features = bundle.feature_extractor(
        resampled, sampling_rate=bundle.sample_rate, truncation="rand_trunc", return_tensors="pt"
    )["input_features"]
    output = bundle.model.get_audio_features(
        input_features=features.float(), is_longer=torch.zeros(len(segments), 1, dtype=torch.bool)
    )
    return _unit_embeddings(output)


def test_clap_embeddings_and_scores_stay_the_same():
    bundle = load_clap("tiny://clap?seed=0")
    segments = [np.resize(w, 32_000 * 3) for w in _real_shaped(32_000 * 3, seed=2)[:4]]  # 3 s at the codec's rate
    segments += [np.random.default_rng(3).standard_normal(5_000).astype(np.float32)]  # a short one, another length
    got = embed_segments(bundle, segments, 32_000, batch_size=2)
    expected = _reference_embeddings(bundle, segments, 32_000)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    prompts = [f"prompt {i}" for i in range(len(segments))]
    batch = ClipBatch(prompts, audio=segments, sample_rate=32_000)
    text = embed_texts(bundle, prompts)  # [N, D]
    np.testing.assert_allclose(
        TextAdherence(bundle, TextAdherenceConfig()).score(batch), (expected * text).sum(-1).numpy(), atol=1e-5
    )
