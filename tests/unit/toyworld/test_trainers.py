"""Tests of the toy codec and policy trainers at a few steps: same seed, same weights; the platform loads them."""

import numpy as np
import pytest
import torch

from musicrl.config import SamplingParams
from musicrl.models.checkpoint import CheckpointMetadata, save_checkpoint
from musicrl.models.engine import GenerationEngine
from musicrl.toyworld.train_codec import CodecTrainConfig, decode, encode, train_codec
from musicrl.toyworld.train_policy import PolicyTrainConfig, train_policy, training_set


QUICK_CODEC = {
    "clips": 8,
    "decoder_steps": 2,
    "encoder_steps": 2,
    "steps": 3,
    "batch_size": 2,
    "crop_frames": 8,
    "threads": 1,
}
QUICK_POLICY = {"clips": 8, "steps": 4, "batch_size": 4, "threads": 1}


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def codec_runs():  # two runs of seed 0 and one of seed 1
    return [train_codec(CodecTrainConfig(seed=seed, **QUICK_CODEC))[0] for seed in (0, 0, 1)]


def test_the_codec_trainer_gives_the_same_weights_for_the_same_seed(codec_runs) -> None:
    first, again, other = (_weights(m) for m in codec_runs)

    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_the_trained_codebooks_are_filled_and_codes_round_trip_at_fifty_frames_a_second(codec_runs) -> None:
    codec = codec_runs[0]
    audio = np.random.default_rng(0).standard_normal((2, 16_000)).astype(np.float32) * 0.1

    codes = encode(codec, audio)

    assert codes.shape == (2, 4, 50)
    assert all(layer.codebook.embed.abs().sum() > 0 for layer in codec.quantizer.layers)
    assert decode(codec, codes).shape == (2, 16_000)


def test_a_quick_policy_trains_deterministically_and_the_engine_samples_it(codec_runs, tmp_path) -> None:
    codec = codec_runs[0]
    config = PolicyTrainConfig(seed=0, **QUICK_POLICY)
    captions, codes = training_set(config, codec, start=0)
    runs = [train_policy(config, codec, captions, codes) for _ in range(2)]
    first, again = (_weights(model) for model, _, _ in runs)
    assert all(torch.equal(first[k], again[k]) for k in first)

    model, tokenizer, history = runs[0]
    assert [row["step"] for row in history][-1] == config.steps - 1
    save_checkpoint(model, tokenizer, str(tmp_path / "policy"), CheckpointMetadata(kind="policy"))
    engine = GenerationEngine.from_uri(str(tmp_path / "policy"))
    audio, sampled = engine.generate(["a fast, high melody"], SamplingParams(duration_s=1.0), seeds=[0])
    assert (engine.sample_rate, engine.frame_rate) == (16_000, 50.0)
    assert audio.shape == (1, 16_000) and sampled.shape == (1, 4, 50)
