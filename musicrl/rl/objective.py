"""The MusicRL objective: KL-regularised REINFORCE with a learned value baseline (MusicRL §3.2, eq. 1).

    J = (1 − α) · Σ_t log π(a_t | s_t) · (R − V(s_t))  −  α · Σ_t KL(π(·|s_t) ‖ π_ref(·|s_t))

t runs over the valid steps of the codebook delay pattern; a step emits one token per codebook whose
window is open, so log π(a_t | s_t) sums those codebooks' log-probabilities and the KL sums their KLs.
The KL is exact (a sum over the whole vocabulary), not the single-sample estimate log π(a)/π_ref(a).
Both sums are divided by the clip's number of valid steps, so α weighs the two terms alike whatever the
clip length, and the learning rate does not depend on the duration.

:func:`fused_token_terms` gives log π(a_t|s_t), the KL and the entropy from one log-softmax per chunk of
positions, so only one chunk's [B, K, p, V] logits exist at a time, in the forward pass and again in backward
(each chunk is recomputed there rather than kept; issue 9).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint


LogitsFn = Callable[[int, int], torch.Tensor]  # (start, stop) → fp32 (or wider) logits [B, K, stop − start, V]


@dataclass(frozen=True, slots=True)
class LossTerms:
    """The pieces of one batch's loss (all scalars, with gradient where it applies)."""

    loss: torch.Tensor  # −J, minimised by the policy optimiser
    policy_gradient: torch.Tensor  # Σ_t log π(a_t|s_t)·A_t per step, batch mean
    kl: torch.Tensor  # Σ_t KL_t per step, batch mean
    value_loss: torch.Tensor  # mean squared error of V(s_t) against R
    advantage: torch.Tensor  # R − V(s_t) over valid steps, detached, flattened


def exact_kl(policy_logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """KL(π ‖ π_ref) of categorical distributions, exact over the last dimension.

    Args:
        policy_logits: Unnormalised log-probabilities [..., V].
        reference_logits: Same shape.

    Returns:
        KL per distribution [...], in nats.
    """
    policy_log = torch.log_softmax(policy_logits, dim=-1)
    reference_log = torch.log_softmax(reference_logits, dim=-1)
    # exp(log p) · (log p − log q); tokens with p = 0 (logit −inf) contribute 0, not NaN
    contribution = torch.exp(policy_log) * (policy_log - reference_log)
    return torch.where(torch.isfinite(policy_log), contribution, torch.zeros_like(contribution)).sum(dim=-1)


@dataclass(frozen=True, slots=True)
class TokenTerms:
    """Per-token terms of the loss, all [B, K, P] fp32.

    Attributes:
        log_probs: log π(a|s) of the emitted tokens under the sampling distribution (top-k renormalised),
            with gradient; 0 outside the token mask.
        kl: Exact KL(π ‖ π_ref) over the full vocabulary, in nats, with gradient.
        entropy: Entropy of π in nats (detached: a metric).
    """

    log_probs: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor


def fused_token_terms(
    policy_logits: LogitsFn,
    reference_logits: LogitsFn,
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    top_k: int,
    chunk_positions: int,
) -> TokenTerms:
    """log π(a|s), KL(π ‖ π_ref) and entropy, one chunk of positions at a time.

    Args:
        policy_logits: The policy's guided, tempered logits of a range of positions (with gradient).
        reference_logits: The reference's, same shape (read without gradient).
        tokens: Emitted tokens int64 [B, K, P]; positions outside the delay window hold the start token.
        token_mask: Which of them are real tokens, bool [B, K, P].
        top_k: The sampler's top-k (0: the whole vocabulary).
        chunk_positions: Positions per chunk; the last chunk may be shorter.

    Returns:
        The three terms over all P positions.
    """
    positions = tokens.shape[-1]
    parts = []
    for start in range(0, positions, chunk_positions):
        stop = min(start + chunk_positions, positions)
        args = (policy_logits, reference_logits, tokens[..., start:stop], token_mask[..., start:stop], top_k, start)
        # checkpoint: backward recomputes the chunk's logits instead of keeping its [B, K, p, V] intermediates
        part = checkpoint(_chunk_terms, *args, use_reentrant=False) if torch.is_grad_enabled() else _chunk_terms(*args)
        parts.append(part)
    log_probs, kl, entropy = (torch.cat(term, dim=-1) for term in zip(*parts, strict=True))  # [B, K, P] each
    return TokenTerms(log_probs=log_probs, kl=kl, entropy=entropy)


def _chunk_terms(
    policy_logits: LogitsFn,
    reference_logits: LogitsFn,
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    top_k: int,
    start: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three terms of positions ``start`` .. ``start + p`` − 1: each [B, K, p]."""
    stop = start + tokens.shape[-1]
    logits = policy_logits(start, stop)  # [B, K, p, V]
    log_p = torch.log_softmax(logits, dim=-1)  # [B, K, p, V]: the chunk's one normalisation
    with torch.no_grad():
        reference_log = torch.log_softmax(reference_logits(start, stop), dim=-1)  # [B, K, p, V]
    prob = log_p.exp()  # [B, K, p, V]
    # Σ p·(log p − log q), not −H − Σ p·log q: near the reference the KL is tiny and the split form would
    # leave only the round-off of two entropies (~1e-6 nats in fp32). The full-vocabulary logits are finite,
    # so no p = 0 term needs the guard exact_kl has for top-k logits.
    kl = (prob * (log_p - reference_log)).sum(dim=-1)  # [B, K, p]
    with torch.no_grad():
        entropy = -(prob * log_p).sum(dim=-1)  # [B, K, p]
    vocab = logits.shape[-1]
    safe = tokens.clamp(max=vocab - 1)[..., None]  # [B, K, p, 1]: the start token (id V) has no logit
    taken = log_p.gather(-1, safe).squeeze(-1)  # [B, K, p]
    if 0 < top_k < vocab:
        # the sampler renormalises over the top-k tokens (ties kept): log π_k(a) = log π(a) − log Σ_top-k π
        kept = logits >= torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [B, K, p, V]
        kept_mass = torch.logsumexp(log_p.masked_fill(~kept, float("-inf")), dim=-1)  # [B, K, p]
        taken = (taken - kept_mass).masked_fill(~kept.gather(-1, safe).squeeze(-1), float("-inf"))
    # outside the delay window there is no action: 0, not the −inf a masked-out start token can get under top-k
    # (−inf · 0 would be NaN in the loss)
    taken = torch.where(token_mask, taken, torch.zeros_like(taken))
    return taken, kl, entropy


def reinforce_loss(
    log_probs: torch.Tensor,
    kl: torch.Tensor,
    values: torch.Tensor,
    rewards: torch.Tensor,
    token_mask: torch.Tensor,
    alpha: float,
) -> LossTerms:
    """The KL-regularised REINFORCE loss of a batch.

    Args:
        log_probs: log π(a|s) of the sampled tokens, [B, K, P] (P predicted positions).
        kl: Exact KL per codebook and position, [B, K, P].
        values: V(s_t) per position, [B, P] (its gradient trains the value model only).
        rewards: Sequence-level rewards R, [B].
        token_mask: Which (codebook, position) hold a real token, bool [B, K, P].
        alpha: KL weight α in [0, 1].

    Returns:
        The loss and its parts.
    """
    mask = token_mask.to(log_probs.dtype)
    step_mask = token_mask.any(dim=1).to(log_probs.dtype)  # [B, P]: steps that emit at least one token
    steps = step_mask.sum(dim=1).clamp(min=1.0)  # [B]
    step_log_prob = (log_probs * mask).sum(dim=1)  # [B, P]
    step_kl = (kl * mask).sum(dim=1)  # [B, P]
    advantage = (rewards[:, None] - values).detach()  # [B, P]: the baseline does not receive policy gradient
    policy_gradient = ((step_log_prob * advantage * step_mask).sum(dim=1) / steps).mean()
    kl_term = ((step_kl * step_mask).sum(dim=1) / steps).mean()
    value_loss = (((values - rewards[:, None]) ** 2 * step_mask).sum(dim=1) / steps).mean()
    loss = -((1.0 - alpha) * policy_gradient - alpha * kl_term)
    return LossTerms(loss, policy_gradient, kl_term, value_loss, advantage[step_mask.bool()])
