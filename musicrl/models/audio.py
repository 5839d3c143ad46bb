"""Audio encoding helpers (soundfile; torchaudio does not import beside the CPU torch wheel)."""

import io

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
