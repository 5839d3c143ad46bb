"""Hidden tastes: what a simulated listener likes, as a number of one clip (higher is better).

Five kinds, each a small frozen class with a ``score(clip)``:

* :class:`Brightness`: spectral, the log2 spectral centroid of the audio;
* :class:`Crescendo`: dynamic, the slope of the loudness over the clip (dB/s);
* :class:`OnsetRate`: rhythmic, attacks per second;
* :class:`CodeShare`: code-level, the share of codebook 0's tokens that fall in a hidden token set;
* :class:`PromptTimbre`: prompt-dependent, brightness when the prompt asks for a bright sound and darkness
  when it asks for a dark one (read with the toy world's :func:`~musicrl.toyworld.captions.read_prompt`),
  indifferent when it asks for neither.

And one control, :class:`Arbitrary` (``random``): a consistent but unlearnable score per clip.

The platform never sees a taste; only the votes it causes. :func:`taste_by_name` builds one from the
names in :data:`TASTES` (what ``--taste`` chooses from).
"""

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from musicrl.errors import InvalidRequest
from musicrl.sim import features
from musicrl.toyworld.captions import read_prompt
from musicrl.toyworld.probes import spectral_centroid_hz


MAX_VOCAB = 1 << 16  # token ids the hidden set of CodeShare covers; MusicGen's codebooks hold 2048


@dataclass(frozen=True, slots=True)
class HeardClip:
    """What a listener gets of one clip.

    Attributes:
        prompt: The prompt it was generated for.
        codes: Its audio tokens, integer [K, T].
        audio: Mono waveform, float32 [S].
        sample_rate: Samples per second of ``audio``.
    """

    prompt: str
    codes: np.ndarray
    audio: np.ndarray
    sample_rate: int


class Taste(Protocol):
    """A hidden taste: ``score`` is larger for clips the listener likes more."""

    @property
    def name(self) -> str:
        """The taste's registry name."""
        ...

    def score(self, clip: HeardClip) -> float:
        """The taste's value of ``clip``, finite."""
        ...


@dataclass(frozen=True, slots=True)
class Brightness:
    """Spectral: log2 of the spectral centroid in Hz (one octave of centroid = one unit); ``sign`` -1 likes dark."""

    sign: float = 1.0
    name: str = "brightness"

    def score(self, clip: HeardClip) -> float:
        """``sign`` · log2 centroid (Hz), floored at 1 Hz for silence."""
        return self.sign * float(np.log2(max(spectral_centroid_hz(clip.audio, clip.sample_rate), 1.0)))


@dataclass(frozen=True, slots=True)
class Crescendo:
    """Dynamic: clips that grow louder over time, by the slope of their frame loudness (dB/s)."""

    name: str = "crescendo"

    def score(self, clip: HeardClip) -> float:
        """Loudness slope, dB per second."""
        return features.loudness_slope_db_per_s(clip.audio, clip.sample_rate)


@dataclass(frozen=True, slots=True)
class OnsetRate:
    """Rhythmic: busier clips, by their attacks per second."""

    name: str = "onset-rate"

    def score(self, clip: HeardClip) -> float:
        """Onsets per second."""
        return features.onset_rate_hz(clip.audio, clip.sample_rate)


@dataclass(frozen=True, slots=True)
class CodeShare:
    """Code-level: the share of one codebook's tokens that lie in a hidden set of ``share`` of all ids.

    The set is drawn from ``seed`` over :data:`MAX_VOCAB` ids, so it is the same for any vocabulary size.
    """

    codebook: int = 0
    share: float = 0.25  # a quarter of the ids: a clip's share spreads widely under random sampling
    seed: int = 0
    name: str = "code-share"

    def __post_init__(self) -> None:
        if not 0 < self.share < 1:
            raise InvalidRequest(f"CodeShare share must be in (0, 1), got {self.share}")
        if self.codebook < 0:
            raise InvalidRequest(f"CodeShare codebook must be >= 0, got {self.codebook}")

    def members(self) -> np.ndarray:
        """Whether each token id is in the hidden set, bool [MAX_VOCAB] (read-only, shared)."""
        return hidden_tokens(self.seed, self.share)

    def score(self, clip: HeardClip) -> float:
        """Share in [0, 1] of codebook ``codebook``'s tokens that are in the set.

        Raises:
            InvalidRequest: The clip has no such codebook.
        """
        if clip.codes.shape[0] <= self.codebook:
            raise InvalidRequest(f"CodeShare reads codebook {self.codebook}; the clip has {clip.codes.shape[0]}")
        return float(np.mean(self.members()[np.asarray(clip.codes[self.codebook], np.int64)]))


@dataclass(frozen=True, slots=True)
class PromptTimbre:
    """Prompt-dependent: the brightness the prompt asks for ("bright" +1, "dark" -1, neither 0) times log2 centroid."""

    name: str = "prompt-timbre"

    @staticmethod
    def sign(prompt: str) -> float:
        """+1 when the prompt asks for a bright timbre, -1 for a dark one, 0 when it asks for neither."""
        return {"bright": 1.0, "dark": -1.0}.get(read_prompt(prompt).get("timbre", ""), 0.0)

    def score(self, clip: HeardClip) -> float:
        """``sign(prompt)`` · log2 centroid (Hz)."""
        return Brightness(sign=self.sign(clip.prompt)).score(clip)


@dataclass(frozen=True, slots=True)
class Arbitrary:
    """The control: a score that is a fixed pseudo-random number of each clip's audio, uniform in [0, 1).

    The same clip always gets the same score, so listeners vote decisively and consistently, but nothing a
    model can learn or a policy can change moves it: such listeners prefer nothing systematically.
    """

    name: str = "random"

    def score(self, clip: HeardClip) -> float:
        """A uniform number drawn from the hash of the audio's 16-bit PCM (what a WAV round trip keeps)."""
        # libsndfile's scale: a WAV read gives k / 32768, so a clip heard twice hashes the same bytes
        pcm = np.clip(np.round(clip.audio.astype(np.float64) * 32768), -32768, 32767).astype("<i2").tobytes()
        digest = hashlib.blake2b(pcm, digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2.0**64


@functools.lru_cache(maxsize=8)
def hidden_tokens(seed: int, share: float) -> np.ndarray:
    """The token set of :class:`CodeShare`, bool [MAX_VOCAB], drawn once per (seed, share) per process."""
    members = np.random.default_rng(seed).random(MAX_VOCAB) < share
    members.setflags(write=False)
    return members


TASTES: dict[str, Callable[[], Taste]] = {
    "brightness": Brightness,
    "darkness": lambda: Brightness(sign=-1.0, name="darkness"),
    "crescendo": Crescendo,
    "onset-rate": OnsetRate,
    "code-share": CodeShare,
    "prompt-timbre": PromptTimbre,
    "random": Arbitrary,
}


def taste_by_name(name: str) -> Taste:
    """The taste registered as ``name`` in :data:`TASTES`.

    Raises:
        InvalidRequest: No taste has that name; the message lists those that do.
    """
    if name not in TASTES:
        raise InvalidRequest(f"unknown taste {name!r}; known: {', '.join(TASTES)}")
    return TASTES[name]()


def scores(taste: Taste, clips: list[HeardClip]) -> np.ndarray:
    """``taste``'s score of every clip, float64 [C].

    Raises:
        InvalidRequest: A score is not finite (a taste must judge every clip).
    """
    values = np.array([taste.score(clip) for clip in clips], dtype=np.float64)
    if not np.isfinite(values).all():
        raise InvalidRequest(
            f"taste {taste.name} gave a non-finite score to clip {int(np.argmin(np.isfinite(values)))}"
        )
    return values
