"""Batched torch resampling against scipy's resample_poly, row by row."""

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from musicrl.errors import InvalidRequest
from musicrl.models.resampling import resample_many, resample_rows


@pytest.mark.parametrize(
    ("from_rate", "to_rate", "samples"),
    [
        (32_000, 48_000, 32_000),  # the codec to CLAP, one second
        (32_000, 48_000, 12_345),  # a length the ratio does not divide
        (24_000, 48_000, 1_000),
        (44_100, 48_000, 4_410),  # up 160, down 147: many phases
        (48_000, 32_000, 4_801),  # downsampling
        (16_000, 48_000, 7),  # shorter than the filter
    ],
)
def test_each_row_equals_resample_poly(from_rate, to_rate, samples):
    rows = np.random.default_rng(samples).standard_normal((3, samples)).astype(np.float32)
    common = np.gcd(from_rate, to_rate)
    expected = np.stack([resample_poly(r, to_rate // common, from_rate // common) for r in rows])
    got = resample_rows(torch.from_numpy(rows), from_rate, to_rate).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_many_lengths_come_back_in_order():
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (3_200, 1_000, 3_200, 57)]
    got = resample_many(clips, 32_000, 48_000)
    for clip, out in zip(clips, got, strict=True):
        np.testing.assert_allclose(out.numpy(), resample_poly(clip, 3, 2), rtol=0, atol=1e-6)


def test_equal_rates_return_the_audio_and_bad_input_is_refused():
    audio = torch.ones(2, 10)
    assert resample_rows(audio, 48_000, 48_000) is audio
    with pytest.raises(InvalidRequest, match="positive"):
        resample_rows(audio, 0, 48_000)
    with pytest.raises(InvalidRequest, match=r"\[N, S\]"):
        resample_rows(torch.ones(10), 32_000, 48_000)
