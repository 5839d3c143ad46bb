"""A procedural music world: short clips whose sound is fixed by a few named attributes and a seed.

Every clip is a melody (plucked notes) or a drone (a held tone that swells) drawn from five attributes:
pitch range, tempo, timbre (harmonic content), loudness and texture. The ranges of neighbouring classes
leave gaps between them, so the probes in :mod:`musicrl.toyworld.probes` can tell the classes apart on
clean audio and the only open question is whether a model reproduces them. It plays the part that
character-level Shakespeare plays for nanoGPT: small enough to train on two cores, rich enough that a
prompt, a temperature or a reward changes something one can measure.

Everything is drawn with NumPy's PCG64 generator from a seed, so a clip is the same on every machine.
"""

import enum
from dataclasses import dataclass

import numpy as np


SAMPLE_RATE = 32_000  # MusicGen's EnCodec rate: the codec and the policy see the world at its own rate
CLIP_S = 2.0  # long enough for three notes at the slowest tempo, short enough to train on on a CPU
MAX_PARTIAL_HZ = 12_000.0  # the brightest timbres stop here, well under the 16 kHz Nyquist limit


class Pitch(enum.StrEnum):
    """Where the notes lie."""

    LOW = "low"
    MID = "mid"
    HIGH = "high"


class Tempo(enum.StrEnum):
    """How many notes (or swells) per second."""

    SLOW = "slow"
    MEDIUM = "medium"
    FAST = "fast"


class Timbre(enum.StrEnum):
    """How much energy the harmonics above the fundamental carry."""

    DARK = "dark"
    BRIGHT = "bright"


class Loudness(enum.StrEnum):
    """The clip's RMS level."""

    SOFT = "soft"
    LOUD = "loud"


class Texture(enum.StrEnum):
    """A melody of plucked notes, or a drone: one held tone swelling at the tempo."""

    MELODY = "melody"
    DRONE = "drone"


ATTRIBUTE_TYPES: dict[str, type[enum.StrEnum]] = {
    "pitch": Pitch,
    "tempo": Tempo,
    "timbre": Timbre,
    "loudness": Loudness,
    "texture": Texture,
}

# Class ranges, with gaps between neighbours so that a probe's threshold sits in empty space.
PITCH_MIDI = {Pitch.LOW: (40, 46), Pitch.MID: (54, 60), Pitch.HIGH: (68, 75)}  # centre note, inclusive
MELODY_SPAN = 2  # a melody wanders at most this many semitones from its centre
TEMPO_HZ = {Tempo.SLOW: (1.5, 2.2), Tempo.MEDIUM: (3.6, 4.6), Tempo.FAST: (7.0, 9.0)}  # notes per second
HARMONIC_SLOPE = {Timbre.DARK: (2.6, 3.4), Timbre.BRIGHT: (0.5, 0.9)}  # partial n has amplitude n ** -slope
DARK_PARTIALS = 3  # a dark tone stops after its third harmonic
LOUDNESS_DBFS = {Loudness.SOFT: (-30.0, -25.0), Loudness.LOUD: (-16.0, -11.0)}  # RMS over the clip
PENTATONIC = (0, 2, 4, 7, 9)  # melodies step through a major pentatonic scale: no clashing semitones


@dataclass(frozen=True, slots=True)
class Attributes:
    """The five words that describe a clip."""

    pitch: Pitch
    tempo: Tempo
    timbre: Timbre
    loudness: Loudness
    texture: Texture

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Attributes":
        """Each attribute uniformly from its classes."""
        values = {name: kind(rng.choice([v.value for v in kind])) for name, kind in ATTRIBUTE_TYPES.items()}
        return cls(**values)

    def as_dict(self) -> dict[str, str]:
        """``{"pitch": "low", ...}``, the form stored in tables and manifests."""
        return {name: str(getattr(self, name)) for name in ATTRIBUTE_TYPES}


@dataclass(frozen=True, slots=True)
class Piece:
    """The exact sound of one clip: attributes plus the values drawn within their ranges.

    Attributes:
        attributes: The words that describe it.
        notes_midi: The note of each onset (a drone repeats one note).
        note_rate_hz: Onsets (notes or swells) per second.
        harmonic_slope: Partial ``n`` has amplitude ``n ** -harmonic_slope``.
        rms_dbfs: Level of the whole clip.
        offset_s: Time of the first onset, so that onsets do not always fall on the clip's start.
    """

    attributes: Attributes
    notes_midi: tuple[int, ...]
    note_rate_hz: float
    harmonic_slope: float
    rms_dbfs: float
    offset_s: float


def compose(attributes: Attributes, rng: np.random.Generator, duration_s: float = CLIP_S) -> Piece:
    """Draw the values of a piece within its attributes' ranges."""
    low, high = PITCH_MIDI[attributes.pitch]
    centre = int(rng.integers(low, high + 1))
    rate = float(rng.uniform(*TEMPO_HZ[attributes.tempo]))
    onsets = int(np.ceil(duration_s * rate)) + 1
    if attributes.texture is Texture.DRONE:
        notes = (centre,) * onsets
    else:
        scale = [centre + step for step in _scale_steps(centre) if abs(step) <= MELODY_SPAN]
        notes = tuple(int(n) for n in rng.choice(scale, size=onsets))
    return Piece(
        attributes=attributes,
        notes_midi=notes,
        note_rate_hz=rate,
        harmonic_slope=float(rng.uniform(*HARMONIC_SLOPE[attributes.timbre])),
        rms_dbfs=float(rng.uniform(*LOUDNESS_DBFS[attributes.loudness])),
        offset_s=float(rng.uniform(0.0, 0.5 / rate)),
    )


def _scale_steps(centre: int) -> list[int]:
    # Semitone steps from the centre that stay on the pentatonic scale rooted a fifth below it.
    root = centre - 7
    return [n - centre for n in range(centre - MELODY_SPAN, centre + MELODY_SPAN + 1) if (n - root) % 12 in PENTATONIC]


def render(piece: Piece, duration_s: float = CLIP_S, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The piece as float32 mono samples in [-1, 1]."""
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    period = 1.0 / piece.note_rate_hz
    slot = np.clip(np.floor((t - piece.offset_s) / period).astype(np.int64) + 1, 0, len(piece.notes_midi) - 1)
    since_onset = (t - piece.offset_s) - (slot - 1) * period  # seconds since the current note began
    f0 = 440.0 * 2.0 ** ((np.asarray(piece.notes_midi)[slot] - 69) / 12)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate  # integrated, so note changes do not click
    if piece.attributes.texture is Texture.DRONE:
        envelope = 0.25 + 0.75 * np.sin(np.pi * np.clip(since_onset / period, 0, 1)) ** 2  # swells, never silent
    else:
        attack = np.clip(since_onset / 0.004, 0, 1)
        envelope = attack * np.exp(-since_onset / (0.45 * period))  # slot 0 is a note begun before the clip
    wave = _harmonics(phase, f0, piece.harmonic_slope, piece.attributes.timbre)
    audio = envelope * wave
    rms = float(np.sqrt(np.mean(audio**2))) or 1.0
    audio *= 10 ** (piece.rms_dbfs / 20) / rms
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _harmonics(phase: np.ndarray, f0: np.ndarray, slope: float, timbre: Timbre) -> np.ndarray:
    highest = int(MAX_PARTIAL_HZ // float(f0.max()))
    count = min(highest, DARK_PARTIALS) if timbre is Timbre.DARK else highest
    wave = np.zeros_like(phase)
    for n in range(1, count + 1):
        wave += n**-slope * np.sin(n * phase)
    return wave


@dataclass(frozen=True, slots=True)
class Clip:
    """One clip of the world: its samples, what it is, and the seed that made it."""

    seed: int
    piece: Piece
    audio: np.ndarray  # float32 [samples] at SAMPLE_RATE

    @property
    def attributes(self) -> Attributes:
        """The words that describe it."""
        return self.piece.attributes


def draw_clip(seed: int, duration_s: float = CLIP_S, attributes: Attributes | None = None) -> Clip:
    """The clip of ``seed``: attributes (unless given), then the piece, then the samples."""
    rng = np.random.default_rng([seed, 0x70E])  # a stream of its own, apart from captions and degradations
    attributes = attributes or Attributes.draw(rng)
    piece = compose(attributes, rng, duration_s)
    return Clip(seed=seed, piece=piece, audio=render(piece, duration_s))
