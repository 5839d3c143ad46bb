"""Judge a CLAP on the toy world's held-out captions, through the platform's own reward code.

Two measures, both from issue 13: text-to-audio retrieval (does a caption pick its clip out of ten?) and
the text-adherence reward's ordering (does the reward score a clip higher with its own caption than with
a caption of another clip that names different attributes?). Audio and text are embedded by
:mod:`musicrl.rewards.clap_embedding` and scored by :class:`musicrl.rewards.text_adherence.TextAdherence`,
so the numbers are what the rewards server would give.
"""

from collections.abc import Sequence

import numpy as np
import torch

from musicrl.models.clap_loading import ClapBundle
from musicrl.rewards.base import ClipBatch
from musicrl.rewards.clap_embedding import embed_segments, embed_texts
from musicrl.rewards.text_adherence import TextAdherence, TextAdherenceConfig
from musicrl.toyworld.corpus import Example
from musicrl.toyworld.world import SAMPLE_RATE


CANDIDATES = 10  # issue 13: retrieval among 10 clips, so chance is 0.1
EMBED_BATCH = 32  # segments per forward pass of the audio tower


def recall_at_1(text: torch.Tensor, audio: torch.Tensor, *, candidates: int = CANDIDATES, seed: int = 0) -> float:
    """Share of captions whose own clip scores strictly above ``candidates - 1`` other clips drawn at random.

    Strictly: a model that embeds every clip alike ties everywhere and scores 0, not 1.

    Args:
        text: float32 [N, D] unit caption embeddings; row i is the caption of clip i.
        audio: float32 [N, D] unit clip embeddings.
        candidates: Clips per retrieval, the true one included.
        seed: Fixes the distractors.

    Returns:
        R@1 in [0, 1].

    Raises:
        ValueError: Fewer than ``candidates`` clips.
    """
    count = text.shape[0]
    if count < candidates:
        raise ValueError(f"retrieval among {candidates} needs at least that many clips, got {count}")
    rng = np.random.default_rng([seed, 0x4E7])
    similarity = (text @ audio.T).numpy()  # [N, N]: caption i against clip j
    hits = 0
    for i in range(count):
        others = rng.choice(np.delete(np.arange(count), i), candidates - 1, replace=False)
        hits += int(similarity[i, i] > similarity[i, others].max())
    return hits / count


def mismatched_partners(examples: Sequence[Example], seed: int = 0) -> list[int]:
    """For each example, another whose caption names an attribute value its clip does not have.

    Raises:
        ValueError: Some example has no such partner (a set too small or too uniform).
    """
    rng = np.random.default_rng([seed, 0x3A7])
    partners = []
    for i, example in enumerate(examples):
        values = example.attributes.as_dict()
        fits = [
            j
            for j, other in enumerate(examples)
            if j != i and any(values[name] != value for name, value in other.caption.named.items())
        ]
        if not fits:
            raise ValueError(f"example {example.index} has no caption among the others that contradicts it")
        partners.append(int(rng.choice(fits)))
    return partners


def matched_above_mismatched(adherence: TextAdherence, examples: Sequence[Example], seed: int = 0) -> float:
    """Share of clips that the text-adherence reward scores higher with their caption than with a contradicting one."""
    partners = mismatched_partners(examples, seed)
    prompts = [e.caption.text for e in examples] + [examples[j].caption.text for j in partners]
    audio = [e.audio for e in examples] * 2
    scores = adherence.score(ClipBatch(prompts=prompts, audio=audio, sample_rate=SAMPLE_RATE))  # [2N]
    return float(np.mean(scores[: len(examples)] > scores[len(examples) :]))


def evaluate_clap(bundle: ClapBundle, examples: Sequence[Example], *, seed: int = 0) -> dict[str, float]:
    """Both measures on ``examples`` (held-out captions), through the platform's reward code.

    Args:
        bundle: The CLAP, as ``load_clap`` returns it.
        examples: At least ``CANDIDATES`` clips with their captions.
        seed: Fixes the distractors and the mismatched partners.

    Returns:
        ``r_at_1`` (chance 0.1) and ``matched_above_mismatched`` (chance 0.5).
    """
    text = embed_texts(bundle, [e.caption.text for e in examples]).cpu()  # [N, D]
    audio = embed_segments(bundle, [e.audio for e in examples], SAMPLE_RATE, EMBED_BATCH).cpu()  # [N, D]
    adherence = TextAdherence(bundle, TextAdherenceConfig(batch_size=EMBED_BATCH))
    return {
        "r_at_1": recall_at_1(text, audio, seed=seed),
        "matched_above_mismatched": matched_above_mismatched(adherence, examples, seed),
    }
