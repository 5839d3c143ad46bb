"""The trainable part of a run as one ``nn.Module``: what ``DistributedDataParallel`` wraps.

Its forward takes a rollout (delayed grids, masks, text states), the reference's guided states (or logits) and
the rewards, and returns the loss; DDP all-reduces the gradients of every trainable parameter behind it (the
policy's decoder and the value model), so all processes step identically. How the passes run (bf16 autocast,
decoder checkpointing, the fused, chunked loss) is a :class:`~musicrl.rl.compute.ComputeConfig`.
"""

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers import MusicgenForConditionalGeneration

from musicrl.config import SamplingParams
from musicrl.rl.compute import ComputeConfig
from musicrl.rl.objective import LogitsFn, LossTerms, TokenTerms, exact_kl, fused_token_terms, reinforce_loss
from musicrl.rl.policy import (
    GuidedStates,
    checkpointed_layers,
    entropy,
    guided_pass,
    guided_states,
    token_log_probs,
)
from musicrl.rl.value import SeparateValueModel, ValueHead


@dataclass(frozen=True, slots=True)
class StepInputs:
    """One batch, ready for the loss.

    Attributes:
        grid: Delayed grids int64 [B, K, L].
        token_mask: Real tokens among the predicted positions, bool [B, K, P].
        states: Policy text states [B, S, D]; mask: int64 [B, S].
        reference: The reference's guided states (from :meth:`RLObjective.reference_states`), or its guided,
            tempered logits [B, K, P, V]; no gradient either way.
        rewards: R per clip [B].
    """

    grid: torch.Tensor
    token_mask: torch.Tensor
    states: torch.Tensor
    mask: torch.Tensor
    reference: GuidedStates | torch.Tensor
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
        compute: Precision, checkpointing and chunking of the passes (default: :class:`ComputeConfig`'s).
    """

    def __init__(
        self,
        policy: MusicgenForConditionalGeneration,
        value: SeparateValueModel | ValueHead,
        params: SamplingParams,
        alpha: float,
        value_coef: float,
        compute: ComputeConfig | None = None,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.value = value
        self.params = params
        self.alpha = alpha
        self.value_coef = value_coef
        self.compute = compute if compute is not None else ComputeConfig()

    def forward(self, inputs: StepInputs) -> StepOutput:
        with self._passes(inputs.grid.device.type):
            if self.compute.fused:
                token_terms, hidden = self._fused_terms(inputs)
            else:
                token_terms, hidden = self._materialised_terms(inputs)
            if isinstance(self.value, SeparateValueModel):
                values = self.value(inputs.grid, inputs.states.detach(), inputs.mask)  # [B, P]
        if isinstance(self.value, ValueHead):
            values = self.value(hidden)  # [B, P]: outside autocast, so V keeps fp32 precision
        terms = reinforce_loss(
            token_terms.log_probs, token_terms.kl, values.float(), inputs.rewards, inputs.token_mask, self.alpha
        )
        token_entropy = token_terms.entropy[inputs.token_mask].mean().detach()
        return StepOutput(terms.loss + self.value_coef * terms.value_loss, terms, token_entropy)

    def reference_states(
        self, reference: MusicgenForConditionalGeneration, grid: torch.Tensor, states: torch.Tensor, mask: torch.Tensor
    ) -> GuidedStates:
        """The reference's guided states of ``grid`` [B, K, L] for :attr:`StepInputs.reference` (no gradient).

        Args:
            reference: The frozen KL reference.
            grid: Delayed grids int64 [B, K, L].
            states: The reference's text states [B, S, D]; mask: int64 [B, S].
        """
        with torch.no_grad(), self.compute.autocast_context(grid.device.type):
            return guided_states(reference, grid, states, mask, self.params)

    def _passes(self, device_type: str) -> contextlib.ExitStack:
        """Autocast and decoder checkpointing, as configured, for the forward passes of one step."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.compute.autocast_context(device_type))
        if self.compute.checkpoint_decoder and torch.is_grad_enabled():
            stack.enter_context(checkpointed_layers(self.policy.decoder))
            if isinstance(self.value, SeparateValueModel):
                stack.enter_context(checkpointed_layers(self.value.decoder))
        return stack

    def _fused_terms(self, inputs: StepInputs) -> tuple[TokenTerms, torch.Tensor]:
        policy = guided_states(self.policy, inputs.grid, inputs.states, inputs.mask, self.params)
        reference = inputs.reference
        reference_logits = reference.logits if isinstance(reference, GuidedStates) else _slicer(reference)
        tokens = inputs.grid[:, :, 1:]  # [B, K, P]: what each position emitted
        terms = fused_token_terms(
            policy.logits, reference_logits, tokens, inputs.token_mask, self.params.top_k, self.compute.chunk_positions
        )
        return terms, policy.cond_hidden

    def _materialised_terms(self, inputs: StepInputs) -> tuple[TokenTerms, torch.Tensor]:
        """The unfused path: every [B, K, P, V] intermediate at once (the benchmark's baseline)."""
        out = guided_pass(self.policy, inputs.grid, inputs.states, inputs.mask, self.params)
        reference = inputs.reference
        if isinstance(reference, GuidedStates):
            reference = reference.logits(0, reference.positions)  # [B, K, P, V]
        log_probs = token_log_probs(out.sampling_logits, inputs.grid[:, :, 1:])  # [B, K, P]
        kl = exact_kl(out.logits, reference)  # [B, K, P]
        return TokenTerms(log_probs, kl, entropy(out.logits).detach()), out.hidden


def _slicer(logits: torch.Tensor) -> LogitsFn:
    """Chunks of precomputed logits [B, K, P, V] as a :data:`~musicrl.rl.objective.LogitsFn`."""
    wide = torch.promote_types(logits.dtype, torch.float32)
    return lambda start, stop: logits[:, :, start:stop].to(wide)  # [B, K, p, V]
