"""The toy world's training corpus: captioned clips, clean for the policy and the codec, degraded for the CLAP.

Example ``i`` of a corpus is fixed by the corpus seed and ``i`` alone, so any slice of it can be rebuilt
anywhere. Splits go by a hash of the caption text: a test caption never appears in training, in any clip.
"""

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from musicrl.toyworld.captions import Caption, describe
from musicrl.toyworld.degrade import Damage, Degradation, damage_words, degrade, draw_damage
from musicrl.toyworld.world import CLIP_S, Attributes, Clip, clip_attributes, draw_clip


SPLITS = ("train", "valid", "test")
HELD_OUT_SHARE = 0.1  # of caption texts, for each of valid and test


@dataclass(frozen=True, slots=True)
class Example:
    """A clip, its caption, and what was done to it."""

    index: int
    clip: Clip
    caption: Caption
    damage: Damage = field(default_factory=Damage)
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # the clip after ``damage``

    @property
    def attributes(self) -> Attributes:
        """What the clip is."""
        return self.clip.attributes

    @property
    def split(self) -> str:
        """``train``, ``valid`` or ``test``, by the caption."""
        return split_of(self.caption.text)


def split_of(text: str) -> str:
    """The split of a caption: by a hash of its text, so equal texts always fall together."""
    bucket = zlib.crc32(text.encode()) % 1000 / 1000
    if bucket < HELD_OUT_SHARE:
        return "test"
    if bucket < 2 * HELD_OUT_SHARE:
        return "valid"
    return "train"


def clean_example(seed: int, index: int, duration_s: float = CLIP_S) -> Example:
    """Example ``index`` of the clean corpus of ``seed``: what the policy learns to play."""
    clip = draw_clip(_clip_seed(seed, index), duration_s)
    return Example(index=index, clip=clip, caption=_describe(clip.attributes, seed, index), audio=clip.audio)


def clean_caption(seed: int, index: int) -> Caption:
    """The caption of :func:`clean_example` ``index``, without rendering its audio."""
    return _describe(clip_attributes(_clip_seed(seed, index)), seed, index)


def _describe(attributes: Attributes, seed: int, index: int) -> Caption:
    return describe(attributes, np.random.default_rng([seed, index, 0xCA9]))


def degraded_example(
    seed: int, index: int, kinds: tuple[Degradation, ...], clean_p: float, duration_s: float = CLIP_S
) -> Example:
    """Example ``index`` of a degraded corpus: ``kinds`` applied at random levels (or none, ``clean_p``).

    The caption names the defects that are clearly audible, after the musical description.
    """
    clean = clean_example(seed, index, duration_s)
    rng = np.random.default_rng([seed, index, 0xDE9])
    damage = draw_damage(rng, kinds, clean_p)
    words = damage_words(damage, rng)
    text = clean.caption.text + (", " + ", ".join(words) if words else "")
    caption = Caption(text=text, named=clean.caption.named)
    return Example(
        index=index, clip=clean.clip, caption=caption, damage=damage, audio=degrade(clean.audio, damage, rng)
    )


def examples(seed: int, count: int, split: str | None = None, start: int = 0) -> Iterator[Example]:
    """Clean examples ``start, start + 1, …`` of ``seed``, ``count`` of them, from ``split`` only if given."""
    return (clean_example(seed, index) for index in _indices(seed, count, split, start))


def captions(seed: int, count: int, split: str | None = None) -> Iterator[str]:
    """The caption texts of :func:`examples` (the same order and splits), without rendering any audio."""
    return (clean_caption(seed, index).text for index in _indices(seed, count, split, 0))


def _indices(seed: int, count: int, split: str | None, start: int) -> Iterator[int]:
    """Indices from ``start`` of the first ``count`` examples in ``split`` (any split when None)."""
    index, found = start, 0
    while found < count:
        if split is None or split_of(clean_caption(seed, index).text) == split:
            found += 1
            yield index
        index += 1


def _clip_seed(seed: int, index: int) -> int:
    return int(np.random.default_rng([seed, index]).integers(2**62))
