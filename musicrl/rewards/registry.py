"""Rewards by name: how each kind is loaded from a model URI, and what it reads of a clip.

The reward service, the RL trainer and the CLI all resolve rewards here, so a name means the same model
everywhere. Heavy imports happen inside the loaders: a process that serves one reward does not import the
others.
"""

import urllib.parse
from collections.abc import Callable

from musicrl.errors import InvalidRequest
from musicrl.rewards.analytic import HighCodesShare, Loudness, LowCodesShare
from musicrl.rewards.base import ClipInput, RewardModel


def _text_adherence(uri: str, device: str) -> RewardModel:
    from musicrl.models.clap_loading import load_clap
    from musicrl.rewards.text_adherence import TextAdherence, TextAdherenceConfig

    return TextAdherence(load_clap(uri, device=device), TextAdherenceConfig())


def _quality(uri: str, device: str) -> RewardModel:
    from musicrl.rewards.quality import load_quality

    return load_quality(uri, device=device)


def _preference(uri: str, device: str) -> RewardModel:
    from musicrl.rewards.preference import PreferenceReward, load_preference

    return PreferenceReward(load_preference(uri, device=device))


def _clap_preference(uri: str, device: str) -> RewardModel:
    from musicrl.rewards.clap_preference import load_clap_preference

    return load_clap_preference(uri, device=device)


def _vocab_size(uri: str) -> int:
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(uri).query))
    try:
        return int(query.get("vocab_size", 2048))  # MusicGen's codebook size
    except ValueError as e:
        raise InvalidRequest(f"analytic reward URI {uri!r}: vocab_size must be an integer") from e


def _low_codes(uri: str, device: str) -> RewardModel:
    return LowCodesShare(_vocab_size(uri))


def _high_codes(uri: str, device: str) -> RewardModel:
    return HighCodesShare(_vocab_size(uri))


def _loudness(uri: str, device: str) -> RewardModel:
    return Loudness()


REWARD_KINDS: dict[str, tuple[Callable[[str, str], RewardModel], ClipInput]] = {
    "text-adherence": (_text_adherence, ClipInput.AUDIO),
    "quality": (_quality, ClipInput.AUDIO),
    "preference": (_preference, ClipInput.CODES),
    "clap-preference": (_clap_preference, ClipInput.AUDIO),  # the cheap baseline: a BT head over frozen CLAP
    "low-codes": (_low_codes, ClipInput.CODES),  # analytic://low-codes?vocab_size=128
    "high-codes": (_high_codes, ClipInput.CODES),  # analytic://high-codes?vocab_size=128
    "loudness": (_loudness, ClipInput.AUDIO),  # analytic://loudness
}


def load_reward(name: str, uri: str, *, device: str = "cpu") -> RewardModel:
    """Load the reward ``name`` from ``uri``.

    Raises:
        InvalidRequest: An unknown reward name.
        ModelNotFound / IncompatibleModel: From the loader.
    """
    if name not in REWARD_KINDS:
        raise InvalidRequest(f"unknown reward {name!r}; known: {sorted(REWARD_KINDS)}")
    loader, _ = REWARD_KINDS[name]
    return loader(uri, device)


def reads(name: str) -> ClipInput:
    """What the reward ``name`` scores (audio or codes)."""
    if name not in REWARD_KINDS:
        raise InvalidRequest(f"unknown reward {name!r}; known: {sorted(REWARD_KINDS)}")
    return REWARD_KINDS[name][1]
