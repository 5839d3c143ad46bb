import logging

import numpy as np
import pytest
import torch
from transformers import MusicgenForCausalLM

from musicrl.config import SamplingParams
from musicrl.errors import IncompatibleModel, InvalidRequest
from musicrl.models.engine import GenerationEngine, GenerationRequest
from musicrl.models.loading import load_musicgen
from musicrl.rewards.base import ClipBatch, ClipInput, RewardModel
from musicrl.rewards.preference import PreferenceReward, PreferenceRewardModel, load_preference
from musicrl.rewards.preference_inputs import delayed_grid, length_buckets
from tests.utils.tiny_models import TINY_MUSICGEN_URI, differing_tensors


START = 128  # the tiny model's start token: id == codebook size, as MusicGen


@pytest.fixture(scope="module")
def trained_like() -> PreferenceRewardModel:
    """The seed-0 tiny reward model with a random (non-zero) head, so scores differ between clips."""
    model = PreferenceRewardModel.from_policy(TINY_MUSICGEN_URI)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=generator))
        model.head.bias.fill_(0.25)
    return model


def _codes(seed: int, frames: int, k: int = 4, vocab: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(k, frames), dtype=np.int64)


def test_delayed_grid_places_codebook_k_frame_f_at_position_f_plus_k_plus_1():
    codes = torch.arange(12).reshape(4, 3)  # [K=4, T=3]: distinct ids, none equal to START
    grid, mask = delayed_grid([codes], START)
    assert grid.shape == (1, 4, 3 + 4) and mask.shape == (1, 7) and bool(mask.all())
    for k in range(4):
        for position in range(7):
            expected = codes[k, position - k - 1] if k + 1 <= position <= k + 3 else START
            assert grid[0, k, position] == expected, (k, position)


def test_delayed_grid_matches_transformers_delay_pattern():
    # transformers' build_delay_pattern_mask is an independent implementation of the same layout
    policy: MusicgenForCausalLM = load_musicgen(TINY_MUSICGEN_URI).model.decoder
    codes = torch.from_numpy(_codes(1, 9))  # [K, T]
    with_start = torch.cat([torch.full((4, 1), START), codes], dim=1)  # [K, T + 1]: position 0 = start token
    _, pattern = policy.build_delay_pattern_mask(with_start, pad_token_id=START, max_length=9 + 4)
    grid, _ = delayed_grid([codes], START)
    assert torch.equal(grid[0], pattern)


def test_delayed_grid_is_what_the_engine_feeds_the_decoder():
    engine = GenerationEngine.from_uri(TINY_MUSICGEN_URI)
    fed = []
    decoder_forward = engine.model.decoder.forward

    def capturing_forward(*args, **kwargs):
        fed.append(kwargs["input_ids"].reshape(-1, engine.num_codebooks).clone())  # [B, K] at this step
        return decoder_forward(*args, **kwargs)

    engine.model.decoder.forward = capturing_forward
    params = SamplingParams(duration_s=0.2, guidance_scale=1.0)  # no guidance: one decoder row per clip
    codes = engine.sample_codes([GenerationRequest("drums", params, seed=1), GenerationRequest("harp", params, 2)])
    fed_grid = torch.stack(fed, dim=-1)  # [B, K, T + K - 1]: the engine feeds every position but the last
    grid, _ = delayed_grid(codes, engine.start_token_id)
    assert torch.equal(grid[..., :-1], fed_grid)


def test_shorter_clips_in_a_batch_are_padded_and_masked():
    long, short = torch.from_numpy(_codes(2, 10)), torch.from_numpy(_codes(3, 4))
    grid, mask = delayed_grid([long, short], START)
    alone, _ = delayed_grid([short], START)
    assert grid.shape == (2, 4, 14)
    assert mask.sum(dim=1).tolist() == [14, 8]
    assert torch.equal(grid[1, :, :8], alone[0])
    assert bool((grid[1, :, 8:] == START).all())


def test_init_from_policy_copies_the_text_encoder_and_decoder():
    policy = load_musicgen(TINY_MUSICGEN_URI).model
    model = PreferenceRewardModel.from_policy(TINY_MUSICGEN_URI)
    assert differing_tensors(model.backbone.decoder, policy.decoder) == []
    assert differing_tensors(model.backbone.text_encoder, policy.text_encoder) == []
    assert model.parent_uri == TINY_MUSICGEN_URI
    assert not any(p.requires_grad for p in model.parameters())  # frozen until set_trainable


def test_untrained_head_is_zero_so_every_pair_starts_at_chance():
    model = PreferenceRewardModel.from_policy(TINY_MUSICGEN_URI)
    scores = model.score_codes(["a", "b"], [_codes(4, 20), _codes(5, 20)])
    assert torch.equal(scores, torch.zeros(2))


def test_scores_have_one_float32_per_clip_and_are_deterministic(trained_like):
    reward = PreferenceReward(trained_like, batch_size=2)
    batch = ClipBatch(prompts=["rock", "jazz", "rock"], codes=[_codes(6, 25), _codes(7, 12), _codes(8, 25)])
    first, again = reward.score(batch), reward.score(batch)
    assert first.shape == (3,) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert len(set(first.tolist())) == 3  # different clips, different scores
    assert isinstance(reward, RewardModel) and reward.name == "preference" and reward.reads is ClipInput.CODES


def test_a_clip_scores_the_same_alone_and_batched_with_longer_clips(trained_like):
    clip = _codes(9, 7)
    alone = trained_like.score_codes(["calm"], [clip])
    batched = trained_like.score_codes(["a much longer prompt than the other", "calm"], [_codes(10, 30), clip])
    torch.testing.assert_close(batched[1:], alone, rtol=1e-5, atol=1e-5)


def test_padding_in_one_forward_pass_does_not_change_a_clips_reward(trained_like):
    """Buckets keep padding small, not at zero: a padded row must still score as it does alone."""
    clip, longer = _codes(9, 7), _codes(10, 30)
    grid, mask = delayed_grid([torch.as_tensor(longer), torch.as_tensor(clip)], START)
    states, text_mask = trained_like.encode_text(["a much longer prompt than the other", "calm"])
    padded = trained_like(grid, mask, states, text_mask)
    alone_grid, alone_mask = delayed_grid([torch.as_tensor(clip)], START)
    alone = trained_like(alone_grid, alone_mask, *trained_like.encode_text(["calm"]))
    torch.testing.assert_close(padded[1:], alone, rtol=1e-5, atol=1e-5)


def test_length_buckets_bound_the_padding_and_keep_every_clip():
    lengths = [500, 50, 480, 100, 250, 500, 90, 10]
    buckets = length_buckets(lengths, max_padding=0.2)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for bucket in buckets:
        longest = max(lengths[i] for i in bucket)
        assert 1 - sum(lengths[i] for i in bucket) / (longest * len(bucket)) <= 0.2
    assert len(buckets) < len(lengths)  # similar lengths share a pass
    assert length_buckets([7, 7, 7]) == [[0, 1, 2]]


def test_the_prompt_changes_the_score(trained_like):
    clip = _codes(11, 15)
    scores = trained_like.score_codes(["calm piano", "brutal death metal"], [clip, clip])
    assert not torch.isclose(scores[0], scores[1])


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (_codes(12, 10, k=3), "has 3 codebooks; this model uses 4"),
        (_codes(13, 10) + 128, "outside [0, 128)"),
        (-_codes(14, 10) - 1, "outside [0, 128)"),
    ],
)
def test_codes_the_policy_cannot_read_are_refused(trained_like, codes, message):
    with pytest.raises(InvalidRequest, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        PreferenceReward(trained_like).score(ClipBatch(prompts=["x"], codes=[codes]))


def test_audio_only_batches_are_encoded_with_the_policys_encodec(trained_like):
    engine = GenerationEngine.from_uri(TINY_MUSICGEN_URI)
    (clip,) = engine.generate_batch(
        [GenerationRequest("flute", SamplingParams(duration_s=0.4, guidance_scale=1.0), 3)]
    )
    audio_16k = clip.audio.numpy()[::2].copy()  # resampled by the reward back to 32 kHz
    reward = PreferenceReward(trained_like)
    from_audio = reward.score(ClipBatch(prompts=["flute"], audio=[audio_16k], sample_rate=16_000))
    codes = trained_like.codes_from_audio([clip.audio.numpy()], clip.sample_rate)
    assert codes[0].shape == (4, 20) and codes[0].dtype == np.int64
    assert from_audio.shape == (1,) and np.isfinite(from_audio).all()


def test_save_then_load_by_path_and_file_url_gives_identical_scores(trained_like, tmp_path):
    batch = ClipBatch(prompts=["ambient", "techno"], codes=[_codes(15, 20), _codes(16, 11)])
    expected = PreferenceReward(trained_like).score(batch)
    dest = tmp_path / "preference"
    trained_like.save(str(dest), {"eval/accuracy": 0.8}, training_run="run-1")
    for uri in (str(dest), f"file://{dest}"):
        loaded = PreferenceReward.from_uri(uri)
        np.testing.assert_array_equal(loaded.score(batch), expected)
    assert loaded.model.parent_uri == TINY_MUSICGEN_URI
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_save_and_load_through_an_fsspec_url(trained_like, memory_filesystem):
    batch = ClipBatch(prompts=["folk"], codes=[_codes(17, 9)])
    trained_like.save("memory://models/preference", {"eval/accuracy": 0.7})
    np.testing.assert_array_equal(
        PreferenceReward.from_uri("memory://models/preference").score(batch),
        PreferenceReward(trained_like).score(batch),
    )


def test_a_policy_checkpoint_is_not_a_preference_reward(saved_tiny_checkpoint):
    with pytest.raises(IncompatibleModel, match="'policy' checkpoint, not 'reward/preference'"):
        load_preference(saved_tiny_checkpoint.uri)


def test_a_tiny_uri_loads_an_untrained_reward_that_scores_zero():
    reward = PreferenceReward.from_uri(TINY_MUSICGEN_URI)
    np.testing.assert_array_equal(reward.score(ClipBatch(prompts=["x"], codes=[_codes(18, 5)])), [0.0])


def test_set_trainable_leaves_encodec_lm_heads_and_by_default_t5_frozen():
    model = PreferenceRewardModel.from_policy(TINY_MUSICGEN_URI)
    params = {id(p) for p in model.set_trainable(text_encoder=False)}
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if id(p) in params}
    assert any(n.startswith("backbone.decoder.model.decoder.layers") for n in trainable)
    assert {"head.weight", "head.bias"} <= trainable
    assert not any(
        n.startswith(("backbone.audio_encoder", "backbone.text_encoder", "backbone.decoder.lm_heads"))
        for n in trainable
    )
    model.train()
    assert model.backbone.decoder.training and not model.backbone.text_encoder.training
    assert any(
        n.startswith("backbone.text_encoder")
        for n, p in named.items()
        if id(p) in {id(q) for q in model.set_trainable(text_encoder=True)}
    )


def test_a_preference_checkpoint_cannot_be_loaded_as_a_policy(trained_like, tmp_path):
    trained_like.save(str(tmp_path / "preference"), {})
    with pytest.raises(IncompatibleModel):
        load_musicgen(str(tmp_path / "preference"))


# clips longer than the window


def _windowed(model: PreferenceRewardModel, window_frames: int) -> PreferenceRewardModel:
    """``model``'s weights, scoring clips on windows of ``window_frames`` frames."""
    return PreferenceRewardModel(model.backbone, model.tokenizer, model.head, window_frames=window_frames)


def test_a_clip_longer_than_the_window_scores_the_mean_of_its_first_and_last_window(trained_like):
    model = _windowed(trained_like, 20)
    long, short = _codes(20, 30), _codes(21, 20)
    scores = model.score_codes(["calm", "calm", "calm", "rock"], [long, long[:, :20], long[:, -20:], short])
    torch.testing.assert_close(scores[0], (scores[1] + scores[2]) / 2, rtol=1e-5, atol=1e-6)
    alone = model.score_codes(["rock"], [short])  # exactly the window: one window, the plain score
    torch.testing.assert_close(scores[3:], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone, trained_like.score_codes(["rock"], [short]), rtol=1e-5, atol=1e-6)


def test_a_clip_longer_than_the_decoders_positions_is_windowed_and_says_so(caplog):
    model = PreferenceRewardModel.from_policy(f"{TINY_MUSICGEN_URI}&max_position_embeddings=64")
    assert (model.max_frames, model.window_frames) == (60, 60)  # 64 positions less the 4-step delay
    with caplog.at_level(logging.INFO, logger="musicrl.rewards.preference"):
        scores = PreferenceReward(model).score(ClipBatch(prompts=["long"], codes=[_codes(22, 100)]))
    assert scores.shape == (1,) and np.isfinite(scores).all()  # no refusal, no index error past position 64
    assert "a clip of 100 frames is longer than the 60-frame window" in caplog.text
    assert "first and last 60 frames" in caplog.text


def test_the_window_is_saved_with_the_head(trained_like, tmp_path):
    model = _windowed(trained_like, 20)
    model.save(str(tmp_path / "rm"), {})
    loaded = load_preference(str(tmp_path / "rm"))
    assert loaded.window_frames == 20
    clip = [_codes(23, 45)]
    torch.testing.assert_close(loaded.score_codes(["x"], clip), model.score_codes(["x"], clip))
    with pytest.raises(InvalidRequest, match="window_frames must be >= 1"):
        _windowed(trained_like, 0)
