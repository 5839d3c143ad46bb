"""Degradations of acoustic quality, each with a level in [0, 1], and the hidden MOS they imply.

Four ways a recording goes wrong: hiss (broadband noise), hum (mains at 50 Hz and its harmonics),
clipping (an overdriven converter) and a band limit (a cheap microphone or a phone line). The quality
model is trained on ratings drawn from :func:`mean_opinion_score`, a function of the levels that the
model never sees; captions of degraded clips name what is wrong ("hissy", "muffled"), as a web caption
of a bad recording would, which is how the CLAP learns to hear it.
"""

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.signal

from musicrl.toyworld.world import SAMPLE_RATE


class Degradation(enum.StrEnum):
    """One way a recording goes wrong."""

    HISS = "hiss"
    HUM = "hum"
    CLIPPING = "clipping"
    BAND_LIMIT = "band_limit"


DEFECT_WORDS: dict[Degradation, tuple[str, ...]] = {
    Degradation.HISS: ("hissy", "noisy"),
    Degradation.HUM: ("humming", "buzzing"),
    Degradation.CLIPPING: ("distorted", "clipped"),
    Degradation.BAND_LIMIT: ("muffled", "lo-fi"),
}
CLEAN_WORDS = ("clean", "pristine")
DEGREE_WORDS = ("slightly", "very")
AUDIBLE_LEVEL = 0.15  # milder defects go unnamed, as a listener would not mention them
SNR_RANGE_DB = (30.0, 0.0)  # hiss and hum: level 0 is 30 dB below the music, level 1 as loud as it
CLIP_DRIVE_DB = 24.0  # clipping at level 1 drives the peak this far past full scale
CUTOFF_RANGE_HZ = (6_000.0, 400.0)  # band limit: log-spaced low-pass corner from level 0 to level 1
# How much of the MOS scale a defect at full level removes, and how sharply it sets in (level ** shape).
MOS_WEIGHT = {Degradation.HISS: 0.8, Degradation.HUM: 0.6, Degradation.CLIPPING: 0.85, Degradation.BAND_LIMIT: 0.7}
MOS_SHAPE = {Degradation.HISS: 0.7, Degradation.HUM: 1.0, Degradation.CLIPPING: 0.8, Degradation.BAND_LIMIT: 1.3}


@dataclass(frozen=True, slots=True)
class Damage:
    """Which degradations a clip suffered and how badly (levels in (0, 1]); empty for a clean clip."""

    levels: Mapping[Degradation, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, level in self.levels.items():
            if not 0.0 < level <= 1.0:
                raise ValueError(f"degradation {kind} has level {level}; levels lie in (0, 1]")


def degrade(audio: np.ndarray, damage: Damage, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Apply each degradation of ``damage`` in a fixed order (band limit, hum, hiss, clipping)."""
    out = audio.astype(np.float64)
    signal_rms = float(np.sqrt(np.mean(out**2))) or 1e-4
    for kind in (Degradation.BAND_LIMIT, Degradation.HUM, Degradation.HISS, Degradation.CLIPPING):
        level = damage.levels.get(kind)
        if level is None:
            continue
        if kind is Degradation.BAND_LIMIT:
            cutoff = CUTOFF_RANGE_HZ[0] * (CUTOFF_RANGE_HZ[1] / CUTOFF_RANGE_HZ[0]) ** level
            out = scipy.signal.sosfilt(scipy.signal.butter(6, cutoff, fs=sample_rate, output="sos"), out)
        elif kind is Degradation.CLIPPING:
            peak = float(np.max(np.abs(out))) or 1.0
            ceiling = peak * 10 ** (-CLIP_DRIVE_DB * level / 20)
            out = np.clip(out, -ceiling, ceiling) * (peak / ceiling) ** 0.5  # partly make up the lost level
        else:
            noise = _noise(kind, len(out), rng, sample_rate)
            snr_db = SNR_RANGE_DB[0] + (SNR_RANGE_DB[1] - SNR_RANGE_DB[0]) * level
            out = out + noise * signal_rms * 10 ** (-snr_db / 20)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _noise(kind: Degradation, length: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    # Unit-RMS noise of the kind.
    if kind is Degradation.HISS:
        return rng.standard_normal(length)
    t = np.arange(length) / sample_rate
    phase = rng.uniform(0, 2 * np.pi)
    hum = sum(k**-1.0 * np.sin(2 * np.pi * 50.0 * k * t + k * phase) for k in range(1, 8))
    return hum / np.sqrt(np.mean(hum**2))


def mean_opinion_score(damage: Damage) -> float:
    """The hidden quality of a clip, 1 to 5: 5 when clean, each defect takes away a share of what is left."""
    kept = 1.0
    for kind, level in damage.levels.items():
        kept *= 1.0 - MOS_WEIGHT[kind] * level ** MOS_SHAPE[kind]
    return 1.0 + 4.0 * kept


def _degree(level: float) -> str:
    if level < 0.4:
        return "slightly "
    return "very " if level >= 0.75 else ""


def draw_damage(rng: np.random.Generator, kinds: tuple[Degradation, ...], clean_p: float) -> Damage:
    """No damage with probability ``clean_p``, else each of ``kinds`` at a level uniform in [0.1, 1]."""
    if rng.random() < clean_p:
        return Damage()
    return Damage({kind: float(rng.uniform(0.1, 1.0)) for kind in kinds})


def damage_words(damage: Damage, rng: np.random.Generator) -> list[str]:
    """Words a caption uses for ``damage``: each audible defect with its degree, or "clean" at times.

    The degree ("slightly hissy", "very hissy") is what makes a contrastive CLAP keep how bad a defect is,
    not only which one: with the defect's name alone, a quality head over its embeddings ranked a mix of
    defects below spectral flatness (Spearman 0.50 against 0.62).
    """
    words = [
        f"{_degree(level)}{rng.choice(DEFECT_WORDS[kind])}"
        for kind, level in sorted(damage.levels.items())
        if level >= AUDIBLE_LEVEL
    ]
    if not damage.levels and rng.random() < 0.3:
        words.append(str(rng.choice(CLEAN_WORDS)))
    return words
