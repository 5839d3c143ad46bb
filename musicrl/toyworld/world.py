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


# Half MusicGen's 32 kHz, at the same 50 frames/s: the toy codec's decoder then renders 320 samples a frame
# instead of 640, which is what lets it learn to play pitched notes on two cores (at 32 kHz it was still
# emitting silence after the steps the whole budget allows).
SAMPLE_RATE = 16_000
CLIP_S = 2.0  # long enough for three notes at the slowest tempo, short enough to train on on a CPU
MAX_PARTIAL_HZ = 7_000.0  # the brightest timbres stop here, under the 8 kHz Nyquist limit


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
# Every note is a multiple of 25 Hz, so its waveform repeats every two 20 ms codec frames whatever came
# before: notes of a harmonic series, like a natural horn's. A codec's decoder then renders each frame from
# its own code without tracking phase across frames, which is what lets one learn pitched notes in minutes.
PITCH_GRID_HZ = 25.0
PITCH_HZ = {Pitch.LOW: (75.0, 150.0), Pitch.MID: (200.0, 300.0), Pitch.HIGH: (400.0, 700.0)}  # inclusive
MELODY_SPAN = 3  # grid steps a melody wanders from its centre (within its class's range)
TEMPO_HZ = {Tempo.SLOW: (1.5, 2.2), Tempo.MEDIUM: (3.6, 4.6), Tempo.FAST: (7.0, 9.0)}  # notes per second
HARMONIC_SLOPE = {Timbre.DARK: (2.6, 3.4), Timbre.BRIGHT: (0.5, 0.9)}  # partial n has amplitude n ** -slope
DARK_PARTIALS = 3  # a dark tone stops after its third harmonic
LOUDNESS_DBFS = {Loudness.SOFT: (-30.0, -25.0), Loudness.LOUD: (-16.0, -11.0)}  # RMS over the clip


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

        def pick(kind: type[enum.StrEnum]) -> str:
            return str(rng.choice([v.value for v in kind]))

        return cls(
            pitch=Pitch(pick(Pitch)),
            tempo=Tempo(pick(Tempo)),
            timbre=Timbre(pick(Timbre)),
            loudness=Loudness(pick(Loudness)),
            texture=Texture(pick(Texture)),
        )

    def as_dict(self) -> dict[str, str]:
        """``{"pitch": "low", ...}``, the form stored in tables and manifests."""
        return {name: str(getattr(self, name)) for name in ATTRIBUTE_TYPES}


@dataclass(frozen=True, slots=True)
class Piece:
    """The exact sound of one clip: attributes plus the values drawn within their ranges.

    Attributes:
        attributes: The words that describe it.
        notes_hz: The fundamental of each onset (a drone repeats one note).
        note_rate_hz: Onsets (notes or swells) per second.
        harmonic_slope: Partial ``n`` has amplitude ``n ** -harmonic_slope``.
        rms_dbfs: Level of the whole clip.
        offset_s: Time of the first onset, so that onsets do not always fall on the clip's start.
    """

    attributes: Attributes
    notes_hz: tuple[float, ...]
    note_rate_hz: float
    harmonic_slope: float
    rms_dbfs: float
    offset_s: float

    def note_at(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For times ``t`` (s): the index of the sounding note, and seconds since it began."""
        period = 1.0 / self.note_rate_hz
        slot = np.clip(np.floor((t - self.offset_s) / period).astype(np.int64) + 1, 0, len(self.notes_hz) - 1)
        return slot, (t - self.offset_s) - (slot - 1) * period


def compose(attributes: Attributes, rng: np.random.Generator, duration_s: float = CLIP_S) -> Piece:
    """Draw the values of a piece within its attributes' ranges."""
    low, high = PITCH_HZ[attributes.pitch]
    grid = np.arange(low, high + PITCH_GRID_HZ / 2, PITCH_GRID_HZ)
    centre = int(rng.integers(len(grid)))
    rate = float(rng.uniform(*TEMPO_HZ[attributes.tempo]))
    onsets = int(np.ceil(duration_s * rate)) + 1
    if attributes.texture is Texture.DRONE:
        notes = (float(grid[centre]),) * onsets
    else:
        nearby = grid[max(0, centre - MELODY_SPAN) : centre + MELODY_SPAN + 1]
        notes = tuple(float(n) for n in rng.choice(nearby, size=onsets))
    return Piece(
        attributes=attributes,
        notes_hz=notes,
        note_rate_hz=rate,
        harmonic_slope=float(rng.uniform(*HARMONIC_SLOPE[attributes.timbre])),
        rms_dbfs=float(rng.uniform(*LOUDNESS_DBFS[attributes.loudness])),
        offset_s=float(rng.uniform(0.0, 0.5 / rate)),
    )


def render(piece: Piece, duration_s: float = CLIP_S, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The piece as float32 mono samples in [-1, 1]."""
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    slot, since_onset = piece.note_at(t)
    f0 = np.asarray(piece.notes_hz)[slot]
    # Phase from absolute time, not integrated: a note's waveform is then the same in every frame it fills.
    # A melody's note changes fall where its envelope restarts from silence, so they do not click.
    phase = 2 * np.pi * f0 * t
    wave = _harmonics(phase, f0, piece.harmonic_slope, piece.attributes.timbre)
    audio = envelope(piece, since_onset) * wave
    rms = float(np.sqrt(np.mean(audio**2))) or 1.0
    audio *= 10 ** (piece.rms_dbfs / 20) / rms
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def envelope(piece: Piece, since_onset: np.ndarray) -> np.ndarray:
    """The amplitude envelope (before the clip's gain) ``since_onset`` seconds into the current note."""
    period = 1.0 / piece.note_rate_hz
    if piece.attributes.texture is Texture.DRONE:
        return 0.25 + 0.75 * np.sin(np.pi * np.clip(since_onset / period, 0, 1)) ** 2  # swells, never silent
    attack = np.clip(since_onset / 0.004, 0, 1)
    return attack * np.exp(-since_onset / (0.45 * period))  # slot 0 is a note begun before the clip


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
    rng = _clip_stream(seed)
    attributes = attributes or Attributes.draw(rng)
    piece = compose(attributes, rng, duration_s)
    return Clip(seed=seed, piece=piece, audio=render(piece, duration_s))


def clip_attributes(seed: int) -> Attributes:
    """The attributes :func:`draw_clip` draws for ``seed``, without composing or rendering the clip."""
    return Attributes.draw(_clip_stream(seed))


def _clip_stream(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0x70E])  # a stream of its own, apart from captions and degradations
