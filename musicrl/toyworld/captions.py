"""Captions for the toy world's clips, with paraphrases, and the reverse: which attributes a prompt asks for.

A caption names the texture (the noun) and a random subset of the other four attributes, each by one
of its synonyms, in one of several sentence templates: "a fast, high, bright melody", "a drone that is
slow and soft". :func:`read_prompt` finds the same words in any text, which is how the probes judge
whether generated audio did what its prompt asked.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from musicrl.toyworld.world import Attributes, Loudness, Pitch, Tempo, Texture, Timbre


SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "pitch": {
        Pitch.LOW: ("low", "deep", "bass"),
        Pitch.MID: ("mid-range", "middle", "medium-pitched"),
        Pitch.HIGH: ("high", "high-pitched", "treble"),
    },
    "tempo": {
        Tempo.SLOW: ("slow", "unhurried", "leisurely"),
        Tempo.MEDIUM: ("moderate", "steady", "walking-pace"),
        Tempo.FAST: ("fast", "quick", "rapid"),
    },
    "timbre": {
        Timbre.DARK: ("dark", "mellow", "warm"),
        Timbre.BRIGHT: ("bright", "brilliant", "buzzy"),
    },
    "loudness": {
        Loudness.SOFT: ("soft", "quiet", "gentle"),
        Loudness.LOUD: ("loud", "strong", "powerful"),
    },
    "texture": {
        Texture.MELODY: ("melody", "tune", "riff"),
        Texture.DRONE: ("drone", "pad", "swell"),
    },
}
ADJECTIVES = ("pitch", "tempo", "timbre", "loudness")  # the texture is the noun and always named
MENTION_P = 0.7  # each adjective appears with this probability, and at least one always does
TEMPLATES = (
    "a {adjs} {noun}",
    "{adjs} {noun}",
    "a {noun}, {adjs}",
    "a {noun} that is {adjs_and}",
    "play a {adjs} {noun}",
    "{noun}: {adjs}",
)
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


@dataclass(frozen=True, slots=True)
class Caption:
    """A caption and the attributes it names (a subset of the clip's)."""

    text: str
    named: Mapping[str, str]


def describe(attributes: Attributes, rng: np.random.Generator) -> Caption:
    """A random caption of ``attributes``: which adjectives, which synonyms, which order, which template."""
    values = attributes.as_dict()
    chosen = [name for name in ADJECTIVES if rng.random() < MENTION_P]
    if not chosen:
        chosen = [str(rng.choice(ADJECTIVES))]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    words = [str(rng.choice(SYNONYMS[name][values[name]])) for name in chosen]
    noun = str(rng.choice(SYNONYMS["texture"][values["texture"]]))
    template = str(rng.choice(TEMPLATES))
    adjs_and = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    text = template.format(adjs=", ".join(words), adjs_and=adjs_and, noun=noun)
    named = {name: values[name] for name in (*chosen, "texture")}
    return Caption(text=text, named=named)


def read_prompt(prompt: str) -> dict[str, str]:
    """The attributes a prompt asks for, found by their synonyms: ``{"tempo": "fast", ...}``.

    A word that names two classes of one attribute ("a slow, fast melody") asks for neither.
    """
    found: dict[str, set[str]] = {}
    for word in _WORD.findall(prompt.lower()):
        for name, value in _LEXICON.get(word, ()):
            found.setdefault(name, set()).add(value)
    return {name: next(iter(values)) for name, values in found.items() if len(values) == 1}


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order: the toy text encoders' word list."""
    words: set[str] = set()
    for template in TEMPLATES:
        words.update(_WORD.findall(template.replace("{adjs}", "").replace("{adjs_and}", "").replace("{noun}", "")))
    words.add("and")
    for classes in SYNONYMS.values():
        for synonyms in classes.values():
            for synonym in synonyms:
                words.update(synonym.split("-"))
    return sorted(words)


def _lexicon() -> dict[str, list[tuple[str, str]]]:
    lexicon: dict[str, list[tuple[str, str]]] = {}
    for name, classes in SYNONYMS.items():
        for value, synonyms in classes.items():
            for synonym in synonyms:
                lexicon.setdefault(synonym, []).append((name, str(value)))
    return lexicon


_LEXICON = _lexicon()
