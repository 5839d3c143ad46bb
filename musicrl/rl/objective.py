"""The MusicRL objective: KL-regularised REINFORCE with a learned value baseline (MusicRL §3.2, eq. 1).

    J = (1 − α) · Σ_t log π(a_t | s_t) · (R − V(s_t))  −  α · Σ_t KL(π(·|s_t) ‖ π_ref(·|s_t))

t runs over the valid steps of the codebook delay pattern; a step emits one token per codebook whose
window is open, so log π(a_t | s_t) sums those codebooks' log-probabilities and the KL sums their KLs.
The KL is exact (a sum over the whole vocabulary), not the single-sample estimate log π(a)/π_ref(a).
Both sums are divided by the clip's number of valid steps, so α weighs the two terms alike whatever the
clip length, and the learning rate does not depend on the duration.
"""

from dataclasses import dataclass

import torch


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
