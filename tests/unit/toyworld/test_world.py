"""Tests of the toy world: clips fixed by seeds, captions that say what the clip is, probes that hear it."""

import numpy as np
import pytest

from musicrl.toyworld.captions import describe, read_prompt, vocabulary
from musicrl.toyworld.codec_curriculum import FEATURES, PITCHES, frame_features
from musicrl.toyworld.corpus import captions, clean_caption, clean_example, degraded_example, examples, split_of
from musicrl.toyworld.degrade import Damage, Degradation, degrade, mean_opinion_score
from musicrl.toyworld.probes import measure, spectral_entropy, spectral_flux
from musicrl.toyworld.tokenizer import roberta_word_tokenizer, t5_word_tokenizer
from musicrl.toyworld.world import SAMPLE_RATE, Attributes, Pitch, Tempo, Texture, Timbre, draw_clip


def test_a_clip_is_fixed_by_its_seed() -> None:
    first, again, other = draw_clip(7), draw_clip(7), draw_clip(8)

    assert np.array_equal(first.audio, again.audio)
    assert first.piece == again.piece
    assert not np.array_equal(first.audio, other.audio)


def test_the_probes_hear_every_attribute_of_clean_clips() -> None:
    clips = [draw_clip(seed) for seed in range(60)]

    for name in ("pitch", "tempo", "timbre", "loudness"):
        heard = [measure(c.audio).words()[name] == c.attributes.as_dict()[name] for c in clips]
        assert np.mean(heard) >= 0.95, name


@pytest.mark.parametrize("pitch", list(Pitch))
def test_the_pitch_probe_separates_classes_it_is_given(pitch: Pitch) -> None:
    attributes = Attributes(
        pitch, Tempo.MEDIUM, Timbre.BRIGHT, Attributes.draw(np.random.default_rng(0)).loudness, Texture.MELODY
    )

    heard = {measure(draw_clip(seed, attributes=attributes).audio).words()["pitch"] for seed in range(5)}

    assert heard == {str(pitch)}


def test_captions_name_only_what_the_clip_is_and_read_back_the_same() -> None:
    for seed in range(200):
        example = clean_example(0, seed)
        named = read_prompt(example.caption.text)

        assert named == dict(example.caption.named)
        assert all(example.attributes.as_dict()[k] == v for k, v in named.items())


def test_a_prompt_that_asks_for_opposites_asks_for_neither() -> None:
    assert read_prompt("a slow, fast, high melody") == {"pitch": "high", "texture": "melody"}
    assert read_prompt("anything at all") == {}


def test_captions_paraphrase_one_clip_in_many_ways() -> None:
    attributes = draw_clip(3).attributes
    texts = {describe(attributes, np.random.default_rng(i)).text for i in range(50)}

    assert len(texts) > 20


def test_the_hidden_mos_is_five_when_clean_and_falls_with_every_defect() -> None:
    assert mean_opinion_score(Damage()) == 5.0
    for kind in Degradation:
        scores = [mean_opinion_score(Damage({kind: level})) for level in (0.1, 0.4, 0.7, 1.0)]
        assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), kind
        assert scores[-1] >= 1.0
    both = mean_opinion_score(Damage({Degradation.HISS: 0.5, Degradation.HUM: 0.5}))
    assert both < min(mean_opinion_score(Damage({k: 0.5})) for k in (Degradation.HISS, Degradation.HUM))


def test_a_degradation_level_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="levels lie in"):
        Damage({Degradation.HISS: 1.5})


@pytest.mark.parametrize("kind", list(Degradation))
def test_each_degradation_changes_the_audio_more_at_a_higher_level(kind: Degradation) -> None:
    clean = draw_clip(11).audio
    mild = degrade(clean, Damage({kind: 0.2}), np.random.default_rng(0))
    severe = degrade(clean, Damage({kind: 1.0}), np.random.default_rng(0))

    assert 0 < np.abs(mild - clean).mean() < np.abs(severe - clean).mean()


def test_degraded_captions_name_audible_defects_with_their_degree_after_the_music() -> None:
    for index in range(40):
        example = degraded_example(0, index, (Degradation.BAND_LIMIT,), clean_p=0.0)
        text, level = example.caption.text, example.damage.levels[Degradation.BAND_LIMIT]

        assert text.startswith(clean_example(0, index).caption.text)
        assert (("muffled" in text) or ("lo-fi" in text)) == (level >= 0.15)
        assert ("slightly " in text) == (0.15 <= level < 0.4)
        assert ("very " in text) == (level >= 0.75)


def test_a_caption_drawn_without_its_audio_is_the_examples_caption() -> None:
    for index in range(12):
        assert clean_caption(1, index) == clean_example(1, index).caption
    assert list(captions(1, 8, split="test")) == [e.caption.text for e in examples(1, 8, split="test")]
    assert [e.index for e in examples(1, 3, start=5)] == [5, 6, 7]


def test_splits_go_by_caption_text_about_eighty_ten_ten() -> None:
    texts = list(captions(1, 1500))
    splits = [split_of(t) for t in texts]

    assert all(split_of(t) == s for t, s in zip(texts, splits, strict=True))
    shares = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert 0.74 < shares["train"] < 0.86 and 0.06 < shares["test"] < 0.14, shares
    by_split = {name: {t for t, s in zip(texts, splits, strict=True) if s == name} for name in ("train", "test")}
    assert not by_split["test"] & by_split["train"]


def test_temperature_figures_rank_noise_above_a_tone() -> None:
    tone = draw_clip(2).audio
    noise = np.random.default_rng(0).standard_normal(len(tone)).astype(np.float32) * 0.1

    assert spectral_entropy(noise, SAMPLE_RATE) > spectral_entropy(tone, SAMPLE_RATE)
    assert spectral_flux(noise, SAMPLE_RATE) > spectral_flux(tone, SAMPLE_RATE)


def test_word_tokenizers_cover_every_caption_word_and_map_others_to_unk() -> None:
    for tokenizer in (t5_word_tokenizer(), roberta_word_tokenizer()):
        caption = degraded_example(0, 3, tuple(Degradation), clean_p=0.0).caption.text
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(caption).input_ids)

        assert "<unk>" not in tokens
        assert "<unk>" in tokenizer.convert_ids_to_tokens(tokenizer("a xylophone").input_ids)
    assert "melody" in vocabulary() and "and" in vocabulary()


def test_the_codec_curriculum_reads_each_frames_note_and_level_off_the_recipe() -> None:
    clip = draw_clip(4)
    features = frame_features(clip.piece, clip.audio, 32)

    assert features.shape == (32, 100) and not features[FEATURES:].any()
    notes = PITCHES[features[: len(PITCHES)].argmax(axis=0)]
    assert set(notes) <= set(clip.piece.notes_hz)
    assert np.all(features[: len(PITCHES)].sum(axis=0) == 1)
    frame_rms = np.sqrt(np.mean(clip.audio.reshape(100, -1).astype(np.float64) ** 2, axis=1))
    assert np.corrcoef(features[len(PITCHES)], frame_rms)[0, 1] > 0.999
    with pytest.raises(ValueError, match="needs at least"):
        frame_features(clip.piece, clip.audio, FEATURES - 1)
