"""Probes: measure pitch, tempo, brightness and loudness of any audio, and read them as the world's words.

The probes are signal processing, not learned, so they judge a generator without sharing its mistakes:
the fundamental by autocorrelation, the tempo by the periodicity of the onset envelope, the timbre by the
spectral centroid as a multiple of the fundamental, the loudness by RMS. Their thresholds sit in the gaps
that :mod:`musicrl.toyworld.world` leaves between classes.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.signal

from musicrl.toyworld.world import SAMPLE_RATE, Loudness, Pitch, Tempo, Timbre


PITCH_EDGES_HZ = (173.0, 346.0)  # low | mid | high: geometric midpoints of the gaps between note ranges
TEMPO_EDGES_HZ = (2.8, 5.7)  # slow | medium | fast
BRIGHTNESS_EDGE = 2.2  # centroid / f0: a dark tone sits near 1.2, a bright one above 4
LOUDNESS_EDGE_DBFS = -20.5  # soft | loud
YIN_THRESHOLD = 0.2  # the dip that counts as periodic (YIN's paper uses 0.1 to 0.15; 0.2 misses fewer short periods)
HOP_S = 0.01  # onset-envelope hop: tempi up to 50 Hz
F0_RANGE_HZ = (60.0, 1_200.0)
MIN_TEMPO_HZ, MAX_TEMPO_HZ = 1.0, 12.0  # periods the tempo probe looks for


@dataclass(frozen=True, slots=True)
class Measurement:
    """What the probes heard in one clip (NaN where they heard nothing: silence)."""

    f0_hz: float
    onset_rate_hz: float
    brightness: float  # spectral centroid / f0
    rms_dbfs: float

    def words(self) -> dict[str, str]:
        """The measurement read as the world's classes: ``{"pitch": "high", ...}``; unknown values are left out."""
        words: dict[str, str] = {}
        if np.isfinite(self.f0_hz):
            words["pitch"] = _bin(self.f0_hz, PITCH_EDGES_HZ, (Pitch.LOW, Pitch.MID, Pitch.HIGH))
        if np.isfinite(self.onset_rate_hz):
            words["tempo"] = _bin(self.onset_rate_hz, TEMPO_EDGES_HZ, (Tempo.SLOW, Tempo.MEDIUM, Tempo.FAST))
        if np.isfinite(self.brightness):
            words["timbre"] = _bin(self.brightness, (BRIGHTNESS_EDGE,), (Timbre.DARK, Timbre.BRIGHT))
        if np.isfinite(self.rms_dbfs):
            words["loudness"] = _bin(self.rms_dbfs, (LOUDNESS_EDGE_DBFS,), (Loudness.SOFT, Loudness.LOUD))
        return words


def _bin(value: float, edges: tuple[float, ...], names: tuple[str, ...]) -> str:
    return str(names[int(np.searchsorted(edges, value))])


def measure(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Measurement:
    """Probe one mono clip."""
    audio = np.asarray(audio, dtype=np.float64)
    rms = float(np.sqrt(np.mean(audio**2)))
    if rms < 1e-5:  # -100 dBFS: silence has no pitch, tempo or timbre
        return Measurement(float("nan"), float("nan"), float("nan"), -100.0)
    f0 = fundamental_hz(audio, sample_rate)
    return Measurement(
        f0_hz=f0,
        onset_rate_hz=onset_rate_hz(audio, sample_rate),
        brightness=spectral_centroid_hz(audio, sample_rate) / f0 if np.isfinite(f0) else float("nan"),
        rms_dbfs=20 * np.log10(rms),
    )


def fundamental_hz(audio: np.ndarray, sample_rate: int) -> float:
    """The median fundamental of the louder frames, by YIN's cumulative mean normalised difference.

    YIN takes the first dip under a threshold rather than the deepest one, which keeps bright tones (strong
    upper harmonics) from reading an octave or a twelfth too high, and dark ones from reading an octave low.
    """
    longest = int(sample_rate / F0_RANGE_HZ[0])
    shortest = int(sample_rate / F0_RANGE_HZ[1])
    frames = _frames(audio, 2 * longest, longest)
    energy = np.sum(frames**2, axis=1)
    frames = frames[energy >= 0.25 * energy.max()]
    spectrum = np.fft.rfft(frames, n=4 * longest, axis=1)
    correlation = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, : longest + 1]
    difference = 2 * (correlation[:, :1] - correlation)  # d(tau) for a stationary frame
    lags = np.arange(1, longest + 1)
    normalised = difference[:, 1:] * lags / (np.cumsum(difference[:, 1:], axis=1) + 1e-12)
    estimates = []
    for row in normalised:
        dips = np.flatnonzero(row[shortest - 1 :] < YIN_THRESHOLD) + shortest - 1
        lag = dips[0] if len(dips) else int(np.argmin(row[shortest - 1 :])) + shortest - 1
        while lag + 1 < len(row) and row[lag + 1] < row[lag]:  # walk down to the bottom of the dip
            lag += 1
        estimates.append(sample_rate / _refine(-row, int(lag)) if lag else np.nan)
    return float(np.nanmedian(estimates)) if estimates else float("nan")


def _refine(row: np.ndarray, index: int) -> float:
    # Parabolic interpolation around a peak: sub-sample resolution. ``row[index]`` is lag ``index + 1``.
    if index <= 0 or index >= len(row) - 1:
        return float(index + 1)
    left, mid, right = row[index - 1], row[index], row[index + 1]
    denominator = left - 2 * mid + right
    return float(index + 1) if denominator == 0 else index + 1 + 0.5 * (left - right) / denominator


def onset_rate_hz(audio: np.ndarray, sample_rate: int) -> float:
    """Onsets per second: the dominant period of the rectified change in log energy."""
    hop = int(HOP_S * sample_rate)
    # 40 ms frames span three periods of the lowest notes, so the energy does not ripple with the waveform.
    frames = _frames(audio, 4 * hop, hop) * np.hanning(4 * hop)
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
    flux = np.maximum(np.diff(energy_db), 0.0)
    flux -= flux.mean()
    correlation = np.correlate(flux, flux, mode="full")[len(flux) - 1 :]
    shortest = int(round(1 / (MAX_TEMPO_HZ * HOP_S)))
    longest = min(int(round(1 / (MIN_TEMPO_HZ * HOP_S))), len(correlation) - 1)
    if longest <= shortest:
        return float("nan")
    window = correlation[shortest : longest + 1]
    peaks, _ = scipy.signal.find_peaks(window)
    if not len(peaks):
        return float("nan")
    strongest = window[peaks].max()
    first = peaks[np.argmax(window[peaks] >= 0.7 * strongest)]  # the shortest period that repeats well
    return 1.0 / ((first + shortest) * HOP_S)


def spectral_centroid_hz(audio: np.ndarray, sample_rate: int) -> float:
    """The centroid of the long-term magnitude spectrum, over the bins within 40 dB of its peak.

    The floor keeps the faint broadband energy of note attacks from reading as brightness.
    """
    freqs, power = scipy.signal.welch(audio, fs=sample_rate, nperseg=1024)
    magnitude = np.sqrt(power)
    keep = (freqs >= 40.0) & (freqs <= 0.45 * sample_rate) & (power >= power.max() * 1e-4)
    return float(np.sum(freqs[keep] * magnitude[keep]) / (np.sum(magnitude[keep]) + 1e-12))


def _frames(audio: np.ndarray, frame: int, hop: int) -> np.ndarray:
    count = max(1, 1 + (len(audio) - frame) // hop)
    index = np.arange(frame)[None, :] + hop * np.arange(count)[:, None]
    return np.pad(audio, (0, max(0, frame - len(audio))))[np.minimum(index, max(len(audio), frame) - 1)]


def agreement(asked: Mapping[str, str], heard: Mapping[str, str]) -> dict[str, bool]:
    """For each attribute a prompt asked for and the probes could judge: did the audio do it?"""
    return {name: heard[name] == value for name, value in asked.items() if name in heard}


def spectral_entropy(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Mean over frames of the entropy (bits) of the normalised power spectrum: high for noise, low for tones."""
    _, _, power = scipy.signal.spectrogram(np.asarray(audio, np.float64), fs=sample_rate, nperseg=512)
    power = power[:, power.sum(axis=0) > 0]
    if not power.shape[1]:
        return float("nan")
    share = power / power.sum(axis=0, keepdims=True)
    return float(np.mean(-np.sum(share * np.log2(share + 1e-20), axis=0)))


def spectral_flux(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Mean change of the normalised magnitude spectrum from one frame to the next: how restless the sound is."""
    _, _, power = scipy.signal.spectrogram(np.asarray(audio, np.float64), fs=sample_rate, nperseg=512)
    magnitude = np.sqrt(power)
    magnitude = magnitude / (np.linalg.norm(magnitude, axis=0, keepdims=True) + 1e-12)
    return float(np.mean(np.linalg.norm(np.diff(magnitude, axis=1), axis=0))) if magnitude.shape[1] > 1 else 0.0
