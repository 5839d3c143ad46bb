import numpy as np
import pytest

from musicrl.errors import InvalidRequest
from musicrl.rewards.base import ClipBatch, ClipInput, check_vocabulary


def test_a_batch_needs_audio_or_codes():
    with pytest.raises(InvalidRequest, match="give the clips' audio"):
        ClipBatch(prompts=["x"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(audio=[np.zeros(10, np.float32)]), "sample_rate must be between"),
        (dict(audio=[np.zeros(10, np.float32)], sample_rate=500_000), "sample_rate must be between"),
        (dict(audio=[np.array([0.0, np.nan], np.float32)], sample_rate=16_000), "NaN or infinite"),
        (dict(audio=[np.array([0.0, np.inf], np.float32)], sample_rate=16_000), "NaN or infinite"),
        (dict(audio=[np.zeros((2, 10), np.float32)], sample_rate=16_000), "mono waveform"),
        (dict(audio=[np.zeros(0, np.float32)], sample_rate=16_000), "non-empty"),
        (dict(audio=[np.zeros(10, np.float32)] * 2, sample_rate=16_000), "1 prompts but 2 clips"),
        (dict(codes=[np.zeros((4, 0), np.int64)]), "T > 0"),
        (dict(codes=[np.zeros(4, np.int64)]), "must be \\[K, T\\]"),
        (dict(codes=[np.zeros((4, 3), np.float32)]), "must be integers"),
    ],
)
def test_malformed_clips_are_refused_with_a_sentence(kwargs, message):
    with pytest.raises(InvalidRequest, match=message):
        ClipBatch(prompts=["x"], **kwargs)


def test_require_names_what_is_missing():
    batch = ClipBatch(prompts=["x"], codes=[np.zeros((4, 3), np.int64)])
    batch.require(ClipInput.CODES, "preference")
    with pytest.raises(InvalidRequest, match="text-adherence reward scores audio"):
        batch.require(ClipInput.AUDIO, "text-adherence")


def test_codes_outside_the_vocabulary_are_refused():
    check_vocabulary([np.array([[0, 127]] * 4)], num_codebooks=4, vocab_size=128)
    with pytest.raises(InvalidRequest, match="outside \\[0, 128\\): 0..128"):
        check_vocabulary([np.array([[0, 128]] * 4)], num_codebooks=4, vocab_size=128)
    with pytest.raises(InvalidRequest, match="ids outside"):
        check_vocabulary([np.array([[-1, 5]] * 4)], num_codebooks=4, vocab_size=128)
    with pytest.raises(InvalidRequest, match="has 3 codebooks; this model uses 4"):
        check_vocabulary([np.zeros((3, 5), np.int64)], num_codebooks=4, vocab_size=128)
