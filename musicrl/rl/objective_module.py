"""The trainable part of a run as one ``nn.Module``: what ``DistributedDataParallel`` wraps.

Its forward takes a rollout (delayed grids, masks, text states), the reference's logits and the rewards,
and returns the loss; DDP all-reduces the gradients of every trainable parameter behind it (the policy's
decoder and the value model), so all processes step identically.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import MusicgenForConditionalGeneration

from musicrl.config import SamplingParams
from musicrl.rl.objective import LossTerms, exact_kl, reinforce_loss
from musicrl.rl.policy import entropy, guided_pass, token_log_probs
from musicrl.rl.value import SeparateValueModel, ValueHead


@dataclass(frozen=True, slots=True)
class StepInputs:
    """One batch, ready for the loss.

    Attributes:
        grid: Delayed grids int64 [B, K, L].
        token_mask: Real tokens among the predicted positions, bool [B, K, P].
        states: Policy text states [B, S, D]; mask: int64 [B, S].
        reference_logits: The reference's guided, tempered logits [B, K, P, V] (no gradient).
        rewards: R per clip [B].
    """

    grid: torch.Tensor
    token_mask: torch.Tensor
    states: torch.Tensor
    mask: torch.Tensor
    reference_logits: torch.Tensor
    rewards: torch.Tensor


@dataclass(frozen=True, slots=True)
class StepOutput:
    total: torch.Tensor  # what backward() runs on: −J + value_coef · value loss
    terms: LossTerms
    entropy: torch.Tensor  # mean entropy per real token, nats


class RLObjective(nn.Module):
    """Policy (and value) with the MusicRL loss.

    Args:
        policy: The policy (its text encoder and codec are frozen; the decoder learns).
        value: A separate value model, or a head on the policy's trunk.
        params: The rollouts' sampling settings (the distribution whose likelihoods are trained).
        alpha: KL weight.
        value_coef: Weight of the value loss in the total.
    """

    def __init__(
        self,
        policy: MusicgenForConditionalGeneration,
        value: SeparateValueModel | ValueHead,
        params: SamplingParams,
        alpha: float,
        value_coef: float,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.value = value
        self.params = params
        self.alpha = alpha
        self.value_coef = value_coef

    def forward(self, inputs: StepInputs) -> StepOutput:
        out = guided_pass(self.policy, inputs.grid, inputs.states, inputs.mask, self.params)
        tokens = inputs.grid[:, :, 1:]  # [B, K, P]: what each position emitted
        log_probs = token_log_probs(out.sampling_logits, tokens)  # [B, K, P]
        kl = exact_kl(out.logits, inputs.reference_logits)  # [B, K, P]
        if isinstance(self.value, ValueHead):
            values = self.value(out.hidden)  # [B, P]
        else:
            values = self.value(inputs.grid, inputs.states.detach(), inputs.mask)  # [B, P]
        terms = reinforce_loss(log_probs, kl, values, inputs.rewards, inputs.token_mask, self.alpha)
        token_entropy = entropy(out.logits)[inputs.token_mask].mean().detach()
        return StepOutput(terms.loss + self.value_coef * terms.value_loss, terms, token_entropy)
