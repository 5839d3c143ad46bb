"""The text-adherence reward on the tiny and the toy CLAP: segment averaging, resampling, batching, input checks."""

import numpy as np
import pytest

from musicrl.errors import InvalidRequest
from musicrl.rewards.base import ClipBatch, ClipInput, RewardModel
from musicrl.rewards.text_adherence import TextAdherence, TextAdherenceConfig


TINY_CLAP_URI = "tiny://clap?seed=0"  # ~0.1M parameters: a 10 s segment embeds in milliseconds
SR = 32_000  # MusicGen's rate: every test clip is resampled to CLAP's 48 kHz


def _sine(freq_hz: float, seconds: float, sample_rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def _chirp(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (200 + 800 * t) * t)).astype(np.float32)


@pytest.fixture(params=[TINY_CLAP_URI, "toy://clap"])  # random weights, and the CLAP trained on the toy world
def reward(request: pytest.FixtureRequest) -> TextAdherence:
    return TextAdherence.load(request.param)


def test_implements_the_reward_protocol(reward: TextAdherence) -> None:
    assert isinstance(reward, RewardModel)
    assert (reward.name, reward.reads) == ("text-adherence", ClipInput.AUDIO)


def test_a_long_clip_scores_the_mean_of_its_segments(reward: TextAdherence) -> None:
    # 25 s → segments of 10 s, 10 s and 5 s (the 5 s tail is longer than min_segment_s = 1 s)
    parts = [_noise(10.0), _sine(440, 10.0), _chirp(5.0)]
    prompt = "a noisy intro, a pure tone, then a rising sweep"

    whole = reward.score(ClipBatch([prompt], [np.concatenate(parts)], SR))
    alone = reward.score(ClipBatch([prompt] * 3, parts, SR))

    assert np.ptp(alone) > 1e-3  # the parts really score differently, so the mean is a real test
    np.testing.assert_allclose(whole, [alone.mean()], rtol=0, atol=1e-6)


def test_a_tail_shorter_than_min_segment_is_dropped(reward: TextAdherence) -> None:
    head, tail = _noise(10.0), _sine(440, 0.5)

    with_tail = reward.score(ClipBatch(["p"], [np.concatenate([head, tail])], SR))
    without = reward.score(ClipBatch(["p"], [head], SR))

    np.testing.assert_allclose(with_tail, without, rtol=0, atol=1e-6)


def test_a_clip_shorter_than_min_segment_still_gets_a_score(reward: TextAdherence) -> None:
    scores = reward.score(ClipBatch(["a blip"], [_sine(880, 0.2)], SR))

    assert scores.shape == (1,) and np.isfinite(scores).all()


def test_scores_are_float32_cosines_in_range(reward: TextAdherence) -> None:
    clips = [_noise(3.0), _sine(220, 12.0), np.zeros(SR, dtype=np.float32), np.ones(SR, dtype=np.float32)]
    prompts = ["rain", "ギターのアルペジオ 🎸", "", "a" * 500]  # unicode, empty and over-long prompts

    scores = reward.score(ClipBatch(prompts, clips, SR))

    assert scores.dtype == np.float32 and scores.shape == (4,)
    assert np.all((scores >= -1.0) & (scores <= 1.0))
    assert len(set(scores.tolist())) == 4


def test_resampling_makes_the_score_independent_of_the_sample_rate(reward: TextAdherence) -> None:
    at_48k = reward.score(ClipBatch(["a sine"], [_sine(440, 5.0, 48_000)], 48_000))[0]
    at_16k = reward.score(ClipBatch(["a sine"], [_sine(440, 5.0, 16_000)], 16_000))[0]
    # what the 16 kHz samples would be if they were not resampled: a 1320 Hz tone at 48 kHz
    misread = reward.score(ClipBatch(["a sine"], [_sine(440, 5.0, 16_000)], 48_000))[0]

    assert abs(at_16k - at_48k) < 1e-3
    assert abs(misread - at_48k) > 10 * abs(at_16k - at_48k)


def test_batching_does_not_change_a_clip_score(reward: TextAdherence) -> None:
    clips = [_noise(4.0, seed=1), _sine(330, 15.0), _chirp(2.0)]
    prompts = ["hiss", "a long tone", "a sweep"]
    small = TextAdherence(reward.bundle, TextAdherenceConfig(batch_size=1))

    together = reward.score(ClipBatch(prompts, clips, SR))
    one_by_one = np.concatenate([small.score(ClipBatch([p], [c], SR)) for p, c in zip(prompts, clips, strict=True)])

    np.testing.assert_allclose(together, one_by_one, rtol=0, atol=1e-6)


def test_each_clip_is_compared_with_its_own_prompt(reward: TextAdherence) -> None:
    clips = [_noise(3.0), _sine(440, 3.0)]

    forward = reward.score(ClipBatch(["hiss", "a tone"], clips, SR))
    swapped = reward.score(ClipBatch(["a tone", "hiss"], clips, SR))
    alone = reward.score(ClipBatch(["a tone"], clips[:1], SR))

    assert not np.allclose(forward, swapped)
    np.testing.assert_allclose(swapped[0], alone[0], rtol=0, atol=1e-6)


def test_nan_audio_is_refused_by_the_batch() -> None:
    clip = _noise(1.0)
    clip[100] = np.nan

    with pytest.raises(InvalidRequest, match=r"audio\[0\] holds NaN or infinite samples"):
        ClipBatch(["p"], [clip], SR)


def test_audio_without_sample_rate_is_refused_by_the_batch() -> None:
    with pytest.raises(InvalidRequest, match=r"sample_rate must be between 1 and 192000 Hz, got None"):
        ClipBatch(["p"], [_noise(1.0)], None)


def test_a_batch_of_codes_only_is_refused(reward: TextAdherence) -> None:
    batch = ClipBatch(["p"], codes=[np.zeros((4, 10), dtype=np.int64)])

    with pytest.raises(InvalidRequest, match=r"the text-adherence reward scores audio"):
        reward.score(batch)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"segment_s": 0.0}, r"segment_s must be a positive number of seconds"),
        ({"segment_s": 5.0, "min_segment_s": 6.0}, r"min_segment_s must lie in \[0, segment_s=5.0\]"),
        ({"batch_size": 0}, r"batch_size must be >= 1"),
    ],
)
def test_bad_config_is_refused(fields: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        TextAdherenceConfig(**fields)


def test_segments_longer_than_clap_input_are_refused(reward: TextAdherence) -> None:
    # ClapFeatureExtractor crops longer audio at random: scores would not repeat
    with pytest.raises(InvalidRequest, match=r"segment_s=12.0 is longer than the 10 s"):
        TextAdherence(reward.bundle, TextAdherenceConfig(segment_s=12.0))
