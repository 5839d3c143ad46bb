"""Audio helpers: WAV with soundfile and resampling with scipy (torchaudio does not import beside the CPU torch)."""

import io
import math

import numpy as np
import soundfile


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """Encode a mono waveform as 16-bit PCM WAV.

    Args:
        audio: float32 [S] in [-1, 1]; values outside are clipped (MusicGen can overshoot slightly).
        sample_rate: Samples per second.

    Returns:
        The WAV file's bytes.
    """
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode WAV (or any format soundfile reads) to float32 [S] (mono) or [S, C], and its sample rate."""
    audio, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return audio, int(sample_rate)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a mono waveform with a polyphase filter (the exact rational ratio, reduced by the gcd).

    Args:
        audio: float [S] at ``from_rate``.
        from_rate: Its samples per second.
        to_rate: The wanted samples per second.

    Returns:
        float32 [ceil(S * to_rate / from_rate)]; the input itself (as float32) when the rates agree.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if from_rate == to_rate:
        return audio
    # Imported here, not at the top: the gateway encodes WAV through this module and its image carries no scipy
    # (about 140 MB installed); only the model-side roles resample.
    from scipy.signal import resample_poly

    common = math.gcd(from_rate, to_rate)
    return resample_poly(audio, to_rate // common, from_rate // common).astype(np.float32)
