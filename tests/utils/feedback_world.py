"""A seeded, recorded feedback history: clips in a clip store, and the events the recorder would have written.

Every comparison pits two clips of one prompt; both were played to the end; the listener prefers the
louder one (a hidden taste of the audio) and rates each clip by its loudness. The clips are short noise
with random tiny-MusicGen codes, so the pipeline's reward training and RL run their production paths on
data that took no generation to make.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicrl.data.clips import ClipStore
from musicrl.models.audio import encode_wav
from musicrl.v1 import events_pb2
from tests.utils import events
from tests.utils.rated_clips import SAMPLE_RATE, synthetic_clip


CODEBOOKS, CODEBOOK_SIZE, FRAME_RATE = 4, 128, 50  # tiny://musicgen


@dataclass(frozen=True)
class FeedbackWorld:
    """Where the history was written and how much of it there is."""

    dataset_url: str
    clip_store_url: str
    comparisons: int
    ratings: int


def write_feedback_world(root: Path, *, comparisons: int, duration_s: float = 0.5, seed: int = 0) -> FeedbackWorld:
    """Write clips under ``root/clips`` and their events under ``root/dataset``; returns the URLs.

    Args:
        root: A fresh folder.
        comparisons: Comparisons (one per prompt, two clips each, one listened preference each).
        duration_s: Length of every clip.
        seed: Makes the whole history reproducible.
    """
    rng = np.random.default_rng(seed)
    store = ClipStore(str(root / "clips"))
    history: list = []
    for index in range(comparisons):
        prompt = f"prompt {index}: {['calm', 'loud', 'bright', 'dark'][index % 4]} music"
        clip_ids, loudness = (f"{index:04d}a{'0' * 27}", f"{index:04d}b{'0' * 27}"), rng.uniform(0, 1, 2)
        for clip_id, level in zip(clip_ids, loudness, strict=True):
            history.append(_clip(store, clip_id, prompt, float(level), duration_s, rng))
            history.append(events.rating(clip_id, 1 + round(4 * float(level)), rater=f"rater-{index % 5}"))
        comparison_id = f"cmp-{index:04d}"
        user = f"listener-{index % 7}"
        history.append(events.comparison(comparison_id, prompt, *clip_ids, user=user))
        for clip_id in clip_ids:
            history.append(events.playback(comparison_id, clip_id, int(duration_s * 1000), user=user, completed=True))
        choice = events_pb2.CHOICE_A if loudness[0] > loudness[1] else events_pb2.CHOICE_B
        history.append(events.preference(comparison_id, choice, user=user))
    events.write_dataset(root / "dataset", history)
    return FeedbackWorld(str(root / "dataset"), str(root / "clips"), comparisons, 2 * comparisons)


def _clip(store: ClipStore, clip_id: str, prompt: str, level: float, duration_s: float, rng: np.random.Generator):
    audio = synthetic_clip(0.5, level, duration_s, rng)
    codes = rng.integers(0, CODEBOOK_SIZE, size=(CODEBOOKS, int(duration_s * FRAME_RATE)), dtype=np.int64)
    return events.generation(
        clip_id,
        prompt,
        audio_uri=store.put_wav(clip_id, encode_wav(audio, SAMPLE_RATE)),
        codes_uri=store.put_codes(clip_id, codes),
        duration_s=duration_s,
        sample_rate=SAMPLE_RATE,
    )
