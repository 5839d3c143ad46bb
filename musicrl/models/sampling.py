"""Per-row token sampling: classifier-free guidance, temperature, top-k, and seeded draws.

Every row of a batch carries its own settings and its own uniform noise, drawn up front from a
generator seeded by that request alone. Sampling is an inverse-CDF lookup of that noise, so a row's
tokens depend only on its logits and its seed, never on which other requests share the batch.
"""

import torch


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


def sample_tokens(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, uniforms: torch.Tensor
) -> torch.Tensor:
    """Sample one token per (row, codebook).

    Args:
        logits: Guided logits, float32 [N, K, V].
        temperature: Per row, float32 [N]; 0 means greedy (argmax).
        top_k: Per row, int64 [N]; 0 keeps the whole vocabulary.
        uniforms: This step's noise per row, float64 [N, K].

    Returns:
        Token ids, int64 [N, K].
    """
    greedy = temperature == 0
    safe_temperature = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = logits / safe_temperature[:, None, None]  # [N, K, V]
    scaled = _keep_top_k(scaled, top_k)
    probs = torch.softmax(scaled.double(), dim=-1)  # float64 so the CDF is exact enough to invert
    cdf = probs.cumsum(dim=-1)  # [N, K, V]
    total = cdf[..., -1:]  # [N, K, 1]
    # strictly below the total, so the first index with cdf > target always has positive probability
    target = torch.minimum(uniforms.unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total)))
    sampled = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # [N, K]
    return torch.where(greedy[:, None], scaled.argmax(dim=-1), sampled)


def _keep_top_k(scaled: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Set every logit below the row's k-th largest to -inf; ties with the k-th are kept (as transformers)."""
    vocab = scaled.shape[-1]
    if not bool((top_k > 0).any()):
        return scaled
    k = top_k.clamp(min=0, max=vocab)  # [N]
    k_max = int(k.max())
    kth_values = torch.topk(scaled, k_max, dim=-1).values  # [N, K, k_max], sorted descending
    index = (k.clamp(min=1) - 1)[:, None, None].expand(-1, scaled.shape[1], 1)  # [N, K, 1]
    threshold = kth_values.gather(-1, index)  # [N, K, 1]
    threshold = torch.where((k > 0)[:, None, None], threshold, torch.full_like(threshold, float("-inf")))
    return scaled.masked_fill(scaled < threshold, float("-inf"))
