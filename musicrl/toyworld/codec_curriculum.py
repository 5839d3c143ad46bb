"""What each codec frame of a toy clip holds, read off the clip's own recipe: the codec's first teacher.

A waveform autoencoder trained from scratch first sits on a plateau where its decoder emits silence: its
encoder is still random, so the decoder has nothing to render from. On two cores the toy codec had not
left it after the steps the whole budget allows (1,500 steps, at 32 kHz and at 16 kHz). The toy world
knows what every frame contains, so the codec is taught in three stages, as curriculum learning does:

1. the decoder learns to render frames from these features (a conditional synthesiser: it leaves the
   plateau within a few hundred steps, because its input already says which note to play);
2. the encoder learns to recover the features from the audio (analysis, the easy direction);
3. the whole codec, quantiser included, is trained end to end on reconstruction alone.

After stage 3 the codec is an ordinary EnCodec: nothing of the recipe is left in it or needed to run it.
"""

import numpy as np

from musicrl.toyworld.world import PITCH_GRID_HZ, PITCH_HZ, SAMPLE_RATE, Piece, Pitch, Texture


FRAME_RATE = 50  # codec frames per second, as MusicGen's
PITCHES = np.arange(PITCH_HZ[Pitch.LOW][0], PITCH_HZ[Pitch.HIGH][1] + PITCH_GRID_HZ / 2, PITCH_GRID_HZ)
FEATURES = len(PITCHES) + 3  # one-hot fundamental, amplitude, harmonic slope, position within the note
AMPLITUDE_SCALE = 5.0  # the loudest clips' frame RMS is ~0.3: bring the feature near 1


def frame_features(piece: Piece, audio: np.ndarray, width: int) -> np.ndarray:
    """The recipe of each frame of ``audio`` (the piece rendered), float32 [width, frames]; zero past FEATURES."""
    if width < FEATURES:
        raise ValueError(f"the codec latent has {width} channels; the curriculum needs at least {FEATURES}")
    hop = len(audio) // int(round(len(audio) * FRAME_RATE / SAMPLE_RATE))
    frames = len(audio) // hop
    t = (np.arange(frames) + 0.5) / FRAME_RATE  # frame centres
    slot, since_onset = piece.note_at(t)
    f0 = np.asarray(piece.notes_hz)[slot]
    features = np.zeros((width, frames), np.float32)
    features[np.searchsorted(PITCHES, f0 - PITCH_GRID_HZ / 2), np.arange(frames)] = 1.0
    rms = np.sqrt(np.mean(audio[: frames * hop].reshape(frames, hop).astype(np.float64) ** 2, axis=1))
    features[len(PITCHES)] = rms * AMPLITUDE_SCALE  # measured, so it is exact after the clip's gain
    features[len(PITCHES) + 1] = piece.harmonic_slope
    features[len(PITCHES) + 2] = since_onset * piece.note_rate_hz
    if piece.attributes.texture is Texture.DRONE:
        features[len(PITCHES) + 2] = 0.0  # a drone has no attack to place
    return features
