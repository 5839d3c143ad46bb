"""Synthetic rated clips for the quality model: audio whose hidden MOS is a function of the audio itself.

Each clip is low-passed noise: its *brightness* sets the cutoff (200 Hz to 12.8 kHz, so the spectral
centroid moves over six octaves) and its *loudness* the level (-35 to -10 dBFS). The hidden MOS grows with
both (brightness dominating), raters see it plus Gaussian noise, rounded to the 1–5 scale. The clips are
written as WAV files and the ratings as a real snapshot folder (``ratings_{train,validation,test}.parquet``
with the snapshot's schema), so ``train_quality`` runs its production path: Parquet, fsspec, soundfile, CLAP.
"""

import datetime
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile
from scipy.signal import butter, lfilter

from musicrl.data.snapshot import RATINGS_SCHEMA


SAMPLE_RATE = 32_000  # MusicGen's rate: the quality model resamples it to CLAP's 48 kHz
T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class RatedClip:
    """A synthetic clip, its hidden MOS and where its WAV is."""

    clip_id: str
    audio: np.ndarray  # float32 [S] at SAMPLE_RATE
    hidden_mos: float
    audio_uri: str


def synthetic_clip(brightness: float, loudness: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Low-passed white noise, float32 [S] at ``SAMPLE_RATE``.

    Args:
        brightness: 0..1 → a 2-pole low-pass at 200 Hz · 2^(6 · brightness).
        loudness: 0..1 → RMS level from -35 to -10 dBFS.
        duration_s: Length in seconds.
        rng: Source of the noise.
    """
    noise = rng.standard_normal(int(duration_s * SAMPLE_RATE))
    cutoff_hz = 200.0 * 2 ** (6 * brightness)
    b, a = butter(2, min(cutoff_hz, 0.95 * SAMPLE_RATE / 2) / (SAMPLE_RATE / 2))
    filtered = lfilter(b, a, noise)
    level = 10 ** ((-35 + 25 * loudness) / 20)
    return (filtered / np.sqrt(np.mean(filtered**2)) * level).astype(np.float32)


def hidden_mos(brightness: float, loudness: float) -> float:
    """The ground truth, 1..5: brighter and louder clips sound better here."""
    return 1.0 + 4.0 * (0.7 * brightness + 0.3 * loudness)


def make_rated_clips(folder: Path, count: int, *, duration_s: float, seed: int) -> list[RatedClip]:
    """``count`` clips with brightness and loudness drawn uniformly, their WAVs written under ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for brightness, loudness in rng.uniform(size=(count, 2)):
        clip_id = uuid.UUID(int=int(rng.integers(2**63))).hex
        audio = synthetic_clip(brightness, loudness, duration_s, rng)
        path = folder / f"{clip_id}.wav"
        soundfile.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
        clips.append(RatedClip(clip_id, audio, hidden_mos(brightness, loudness), str(path)))
    return clips


def ratings_table(clips: list[RatedClip], split: str, *, raters: int, noise: float, seed: int) -> pa.Table:
    """``raters`` ratings per clip: hidden MOS + N(0, noise²), rounded and clipped to 1..5."""
    rng = np.random.default_rng(seed)
    rows = []
    for clip in clips:
        for rater in range(raters):
            score = int(np.clip(np.rint(clip.hidden_mos + rng.normal(0.0, noise)), 1, 5))
            rows.append(
                {
                    "rating_event_id": str(uuid.UUID(int=int(rng.integers(2**63)))),
                    "clip_id": clip.clip_id,
                    "rater_id": f"rater-{rater}",
                    "score": score,
                    "prompt": f"prompt of {clip.clip_id}",  # one prompt per clip: the split is by prompt
                    "audio_uri": clip.audio_uri,
                    "codes_uri": None,
                    "policy_model_uri": "tiny://musicgen?seed=0",
                    "policy_version": "v1",
                    "occurred_at": T0,
                    "split": split,
                }
            )
    return pa.Table.from_pylist(rows, schema=RATINGS_SCHEMA)


def write_rated_snapshot(
    folder: Path,
    train: list[RatedClip],
    validation: list[RatedClip],
    test: list[RatedClip],
    *,
    raters: int = 2,
    noise: float = 0.3,
) -> str:
    """Write ``ratings_{train,validation,test}.parquet`` under ``folder``; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, clips) in enumerate((("train", train), ("validation", validation), ("test", test)), 1):
        table = ratings_table(clips, split, raters=raters, noise=noise, seed=seed)
        pq.write_table(table, folder / f"ratings_{split}.parquet")
    return str(folder)
