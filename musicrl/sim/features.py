"""Signal measurements the hidden tastes read: loudness over time and onsets, of mono float audio.

Each returns a finite number for any clip, silence included, so a listener always has an opinion. The
spectral centroid comes from the toy world's probes (:func:`musicrl.toyworld.probes.spectral_centroid_hz`).
"""

import numpy as np


FRAME_S = 0.05  # loudness frames: 50 ms, long against the lowest notes, short against a 2 s clip
HOP_S = 0.01  # onset-envelope hop, as the toy world's tempo probe
FLOOR_DB = -80.0  # silence reads as -80 dBFS, not -inf
ONSET_RISE_DB = 3.0  # a 10 ms hop whose energy rises this much is an attack: twice the power
MIN_ONSET_GAP_S = 0.05  # attacks closer than this are one onset (at most 20 per second)


def frame_rms_db(audio: np.ndarray, sample_rate: int, frame_s: float = FRAME_S) -> np.ndarray:
    """RMS of consecutive non-overlapping frames in dBFS, float64 [F] (at least one frame)."""
    frame = max(1, int(round(frame_s * sample_rate)))
    count = max(1, len(audio) // frame)
    frames = np.resize(np.asarray(audio, np.float64), count * frame).reshape(count, frame)  # [F, frame]
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return np.maximum(20 * np.log10(rms + 1e-12), FLOOR_DB)


def loudness_slope_db_per_s(audio: np.ndarray, sample_rate: int) -> float:
    """The least-squares slope of frame loudness over time, dB per second: > 0 for a crescendo."""
    level = frame_rms_db(audio, sample_rate)
    if len(level) < 2:
        return 0.0
    time_s = np.arange(len(level)) * FRAME_S
    return float(np.polyfit(time_s, level, 1)[0])


def onset_rate_hz(audio: np.ndarray, sample_rate: int) -> float:
    """Attacks per second: rises of at least :data:`ONSET_RISE_DB` in 10 ms-hop log energy, merged within 50 ms."""
    level = frame_rms_db(audio, sample_rate, HOP_S)
    rises = np.flatnonzero(np.diff(level) >= ONSET_RISE_DB) + 1
    onsets, last = 0, -np.inf
    gap = MIN_ONSET_GAP_S / HOP_S
    for frame in rises:
        if frame - last >= gap:
            onsets, last = onsets + 1, float(frame)
    return onsets / max(len(audio) / sample_rate, 1e-9)
