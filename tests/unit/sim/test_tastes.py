import numpy as np
import pytest

from musicrl.errors import InvalidRequest
from musicrl.sim.tastes import TASTES, CodeShare, HeardClip, PromptTimbre, scores, taste_by_name


RATE = 16_000


def _tone(harmonics: int, *, seconds: float = 1.0, envelope: np.ndarray | None = None) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    wave = sum(np.sin(2 * np.pi * 220 * n * t) / n for n in range(1, harmonics + 1))
    wave = 0.2 * wave / np.max(np.abs(wave))
    return (wave * (1.0 if envelope is None else envelope)).astype(np.float32)


def _clip(audio: np.ndarray, prompt: str = "a melody", codes: np.ndarray | None = None) -> HeardClip:
    return HeardClip(prompt, np.zeros((4, 50), np.int64) if codes is None else codes, audio, RATE)


def _clicks(per_second: int, seconds: float = 2.0) -> np.ndarray:
    audio = np.zeros(int(seconds * RATE), np.float32)
    for start in (np.arange(int(per_second * seconds)) * RATE // per_second).astype(int):
        audio[start : start + 400] = 0.5 * np.exp(-np.arange(min(400, len(audio) - start)) / 80.0)
    return audio


def test_brightness_rises_with_harmonics_and_darkness_is_its_opposite():
    dull, rich = _clip(_tone(1)), _clip(_tone(12))
    assert taste_by_name("brightness").score(rich) > taste_by_name("brightness").score(dull) + 1.0  # over an octave
    assert taste_by_name("darkness").score(rich) == pytest.approx(-taste_by_name("brightness").score(rich))


def test_crescendo_reads_the_sign_of_the_loudness_trend():
    ramp = np.linspace(0.05, 1.0, RATE)
    rising, falling = _clip(_tone(3, envelope=ramp)), _clip(_tone(3, envelope=ramp[::-1]))
    taste = taste_by_name("crescendo")
    assert taste.score(rising) > 10.0  # dB per second: 0.05 → 1 is +26 dB over the second
    assert taste.score(falling) < -10.0


@pytest.mark.parametrize("per_second", [2, 5, 9])
def test_onset_rate_counts_attacks_per_second(per_second):
    assert taste_by_name("onset-rate").score(_clip(_clicks(per_second))) == pytest.approx(per_second, abs=0.5)


def test_code_share_is_the_share_of_codebook_zero_in_the_hidden_set():
    taste = CodeShare()
    members = np.flatnonzero(taste.members()[:128])
    outsiders = np.setdiff1d(np.arange(128), members)
    codes = np.zeros((4, 40), np.int64)
    codes[0, :30], codes[0, 30:] = members[0], outsiders[0]
    codes[1:] = members[1]  # other codebooks do not count
    assert taste.score(_clip(np.zeros(RATE, np.float32), codes=codes)) == pytest.approx(0.75)
    assert 0.2 < np.mean(taste.members()) < 0.3  # a quarter of the ids


def test_prompt_timbre_flips_with_the_words_the_prompt_uses():
    dull, rich = _tone(1), _tone(12)
    taste = PromptTimbre()
    assert taste.score(_clip(rich, "a bright melody")) > taste.score(_clip(dull, "a bright melody"))
    assert taste.score(_clip(rich, "a mellow drone")) < taste.score(_clip(dull, "a mellow drone"))
    assert taste.score(_clip(rich, "a fast melody")) == 0.0  # asks for neither: indifferent


def test_every_registered_taste_gives_finite_scores_even_to_silence():
    silence = _clip(np.zeros(RATE, np.float32), "a bright tune")
    for name in TASTES:
        assert np.isfinite(scores(taste_by_name(name), [silence, _clip(_tone(4))])).all(), name


def test_an_unknown_taste_is_refused_with_the_known_names():
    with pytest.raises(InvalidRequest, match="unknown taste 'loudness'; known: brightness"):
        taste_by_name("loudness")


def test_the_random_taste_is_consistent_per_clip_but_follows_nothing_a_policy_can_change():
    import io

    import soundfile

    from musicrl.sim.tastes import Arbitrary, Brightness

    taste = taste_by_name("random")
    assert isinstance(taste, Arbitrary)

    def through_wav(audio: np.ndarray) -> np.ndarray:  # what a listener gets from the API: 16-bit PCM WAV
        wav = io.BytesIO()
        soundfile.write(wav, audio, RATE, format="WAV", subtype="PCM_16")
        return soundfile.read(io.BytesIO(wav.getvalue()), dtype="float32")[0]

    heard = through_wav(_tone(5))
    assert taste.score(_clip(heard)) == taste.score(_clip(through_wav(heard)))  # heard again: the same score
    assert taste.score(_clip(heard)) != taste.score(_clip(through_wav(_tone(5) * 0.99)))  # another clip: another draw
    rng = np.random.default_rng(0)
    clips = [_clip(_tone(int(h)) * rng.uniform(0.5, 1.0)) for h in rng.integers(1, 16, 400)]
    values = scores(taste, clips)
    assert 0.0 <= values.min() and values.max() < 1.0 and abs(values.mean() - 0.5) < 0.05
    bright = scores(Brightness(), clips)
    assert abs(np.corrcoef(values, bright)[0, 1]) < 0.15  # 400 clips: |r| of unrelated scores is ~0.05
