"""Per-row token sampling: classifier-free guidance, temperature, top-k, and seeded draws.

Every row of a batch carries its own settings and its own uniform noise, drawn up front from a
generator seeded by that request alone. Sampling is an inverse-CDF lookup of that noise, so a row's
tokens depend only on its logits and its seed, never on which other requests share the batch.

The step reads nothing back from the device: how many candidates a batch needs (its largest top-k) is
known on the host from the requests' settings, and the top-k is taken on that fixed count. Only those
candidates are summed in float64, never the whole vocabulary.
"""

from collections.abc import Iterable

import torch


TIE_MARGIN = 8  # extra candidates re-ranked so that ties at the k-th go to the lower id


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Guided logits ``uncond + (cond - uncond) * scale`` (Ho & Salimans 2022; MusicGen §2.3).

    Written in the same order of operations as transformers' ``ClassifierFreeGuidanceLogitsProcessor``
    so that greedy decoding matches it bit for bit.

    Args:
        cond: Conditional logits, float32 [N, K, V].
        uncond: Unconditional logits, float32 [N, K, V].
        scale: Guidance scale per row, float32 [N].

    Returns:
        Guided logits, float32 [N, K, V].
    """
    return uncond + (cond - uncond) * scale[:, None, None]


def draw_uniforms(seed: int, steps: int, num_codebooks: int) -> torch.Tensor:
    """The uniform noise one request consumes: float64 [steps, K] in [0, 1), fixed by ``seed``.

    Drawn on the CPU with torch's Mersenne Twister, which gives the same stream on every machine.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand((steps, num_codebooks), generator=generator, dtype=torch.float64)


def candidate_count(top_ks: Iterable[int], vocab: int) -> int:
    """Candidates a batch with these top-k settings needs: its largest k, the vocabulary where k is 0 (or above)."""
    return max((vocab if k <= 0 or k >= vocab else k for k in top_ks), default=vocab)


def sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    candidates: int | None = None,
) -> torch.Tensor:
    """Sample one token per (row, codebook).

    A row with top-k ``k`` samples among exactly its ``k`` largest logits; a tie at the k-th goes to the lower
    token id (transformers keeps every tied token: with float32 logits the two differ almost never, and the
    trainer's support, which keeps ties, always contains the sampler's). The candidates of a row are the same
    whatever ``candidates`` is, so a row's token does not depend on the other rows' settings either.

    Args:
        logits: Guided logits, float32 [N, K, V].
        temperature: Per row, float32 [N]; 0 means greedy (argmax).
        top_k: Per row, int64 [N]; 0 keeps the whole vocabulary.
        uniforms: This step's noise per row, float64 [N, K].
        candidates: At least the largest k of the rows, from :func:`candidate_count` on the host. None reads
            it from ``top_k``, which waits for the device.

    Returns:
        Token ids, int64 [N, K].
    """
    vocab = logits.shape[-1]
    if candidates is None:
        candidates = candidate_count(top_k.tolist(), vocab)
    greedy = temperature == 0
    safe_temperature = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = logits / safe_temperature[:, None, None]  # [N, K, V]
    # in token-id order, as the CDF over the whole vocabulary ran: the same noise draws the same token
    values, token_ids, rank = _candidates(scaled, min(candidates, vocab))  # [N, K, C]
    k = torch.where((top_k <= 0) | (top_k > vocab), vocab, top_k)  # [N]
    top = values.amax(dim=-1, keepdim=True)
    values = values.masked_fill(rank >= k[:, None, None], float("-inf"))
    weights = torch.exp(values.double() - top.double())  # float64 on the candidates only
    cdf = weights.cumsum(dim=-1)  # [N, K, C], unnormalised, which changes no draw
    total = cdf[..., -1:]  # [N, K, 1]
    # strictly below the total, so the first index with cdf > target always has positive probability
    target = torch.minimum(uniforms.unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total)))
    picked = torch.searchsorted(cdf, target, right=True)  # [N, K, 1]
    sampled = token_ids.gather(-1, picked).squeeze(-1)  # [N, K]
    return torch.where(greedy[:, None], scaled.argmax(dim=-1), sampled)


def _candidates(scaled: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """At least the ``count`` largest logits of each row, in token-id order, with their ids and their ranks.

    Rank 0 is the largest, and equal logits rank the lower id first. ``torch.topk`` orders equal values as it
    likes, so a few more than ``count`` are taken and ranked with a stable sort: the ranks below any k are then
    the same for every count, unless more than ``TIE_MARGIN`` tokens tie at the boundary, which float32 logits
    do not.

    Returns:
        ``(values, token_ids, rank)``, each [N, K, C] with C = ``count`` + the margin (at most the vocabulary).
    """
    vocab = scaled.shape[-1]
    values, token_ids = torch.topk(scaled, min(vocab, count + TIE_MARGIN), dim=-1)
    token_ids, by_id = token_ids.sort(dim=-1)
    values = values.gather(-1, by_id)
    by_value = values.sort(dim=-1, descending=True, stable=True).indices
    places = torch.arange(by_value.shape[-1], device=by_value.device).expand_as(by_value)
    rank = torch.empty_like(by_value).scatter_(-1, by_value, places)
    return values, token_ids, rank
