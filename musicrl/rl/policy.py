"""Teacher-forced likelihoods of sampled clips under the distribution the server samples from.

The policy is MusicGen with classifier-free guidance, so the distribution a token is drawn from is

    softmax((uncond + s · (cond − uncond)) / temperature), restricted to the top-k tokens,

where cond and uncond are the decoder's logits with and without the prompt (MusicGen §2.3). The trainer
recomputes log π(a_t|s_t) with gradient under exactly that distribution: guidance doubles the batch (both
passes share the weights, so both receive gradient), the temperature is the rollouts' temperature, and
top-k (if any) renormalises over the kept tokens. The KL is taken between the guided, tempered
distributions over the full vocabulary, because two different top-k supports would make it infinite.
The text encoder and its projection are frozen: RL moves the decoder only.

MusicGen's heads are linear, so guidance and temperature commute with them: the guided, tempered logits are
the heads applied to (h_u + s · (h_c − h_u)) / temperature. :func:`guided_states` keeps those states [B, P, D]
and lets the loss make logits one chunk of positions at a time; :func:`guided_pass` materialises them all.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import MusicgenForCausalLM, MusicgenForConditionalGeneration

from musicrl.config import SamplingParams
from musicrl.errors import IncompatibleModel
from musicrl.models.conditioning import unconditional


@dataclass(frozen=True, slots=True)
class PolicyOutput:
    """What one teacher-forced pass gives.

    Attributes:
        logits: Guided, tempered logits [B, K, P, V] (KL and entropy are taken on these).
        sampling_logits: The same restricted to the top-k tokens (-inf elsewhere), [B, K, P, V].
        hidden: The conditional pass's last hidden states [B, P, D] (for a shared value head).
    """

    logits: torch.Tensor
    sampling_logits: torch.Tensor
    hidden: torch.Tensor


def decoder_hidden(
    decoder: MusicgenForCausalLM, inputs: torch.Tensor, states: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """One causal pass of MusicGen's decoder over whole grids: hidden states [R, P, D].

    Args:
        decoder: The decoder (``MusicgenForConditionalGeneration.decoder``).
        inputs: Delayed input tokens int64 [R, K, P] (positions 0 .. L-2 of the grid).
        states: Text states [R, S, D]; mask: int64 [R, S].
    """
    rows, num_codebooks, positions = inputs.shape
    out = decoder.model(
        input_ids=inputs.reshape(rows * num_codebooks, positions),  # [R * K, P]: the decoder folds K into B
        encoder_hidden_states=states,
        encoder_attention_mask=mask,
        use_cache=False,
    )
    return out.last_hidden_state  # [R, P, D]


def decoder_pass(
    model: MusicgenForConditionalGeneration, inputs: torch.Tensor, states: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [R, P, D] and logits [R, K, P, V] (predicting positions 1 .. L-1) of whole grids."""
    hidden = decoder_hidden(model.decoder, inputs, states, mask)  # [R, P, D]
    logits = torch.stack([head(hidden) for head in model.decoder.lm_heads], dim=1)  # [R, K, P, V]
    return hidden, logits


def guided_pass(
    model: MusicgenForConditionalGeneration,
    grid: torch.Tensor,
    states: torch.Tensor,
    mask: torch.Tensor,
    params: SamplingParams,
) -> PolicyOutput:
    """Guided, tempered logits of every position of delayed grids ``grid`` [B, K, L] after the first."""
    inputs = grid[:, :, :-1]  # [B, K, P]: each position predicts the next
    batch = inputs.shape[0]
    if params.uses_guidance:
        null_states, null_mask = unconditional(states, mask)
        hidden, logits = decoder_pass(
            model, torch.cat([inputs, inputs]), torch.cat([states, null_states]), torch.cat([mask, null_mask])
        )
        cond, uncond = logits[:batch], logits[batch:]  # [B, K, P, V] each
        logits = uncond + (cond - uncond) * params.guidance_scale
        hidden = hidden[:batch]
    else:
        hidden, logits = decoder_pass(model, inputs, states, mask)
    logits = logits.float() / params.temperature
    return PolicyOutput(logits=logits, sampling_logits=keep_top_k(logits, params.top_k), hidden=hidden)


@dataclass(frozen=True, slots=True)
class GuidedStates:
    """Decoder states from which the guided, tempered logits follow by the heads' linear map.

    Attributes:
        hidden: Guided, tempered states (h_u + s · (h_c − h_u)) / temperature, [B, P, D].
        weight: The K heads' weights stacked, [K, V, D] (with gradient when the heads learn).
        cond_hidden: The conditional pass's states [B, P, D] (what a shared value head reads).
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    cond_hidden: torch.Tensor

    @property
    def positions(self) -> int:
        """P, the number of predicted positions."""
        return self.hidden.shape[1]

    def logits(self, start: int, stop: int) -> torch.Tensor:
        """Guided, tempered logits of positions ``start`` .. ``stop`` − 1, [B, K, p, V], in fp32 or wider."""
        hidden = self.hidden[:, start:stop]  # [B, p, D]
        batch, positions, width = hidden.shape
        heads, vocab, _ = self.weight.shape
        # one GEMM for all K heads, written straight into the [B, p, K·V] result
        flat = hidden.reshape(batch * positions, width) @ self.weight.reshape(heads * vocab, width).T  # [B·p, K·V]
        logits = flat.view(batch, positions, heads, vocab).permute(0, 2, 1, 3)  # [B, K, p, V]
        return logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 under autocast: softmax in fp32


def guided_states(
    model: MusicgenForConditionalGeneration,
    grid: torch.Tensor,
    states: torch.Tensor,
    mask: torch.Tensor,
    params: SamplingParams,
) -> GuidedStates:
    """Guided, tempered states of every position of delayed grids ``grid`` [B, K, L] after the first.

    ``guided_states(...).logits(0, P)`` equals ``guided_pass(...).logits`` up to round-off, without holding
    the conditional and unconditional [B, K, P, V] logits.

    Raises:
        IncompatibleModel: A language-model head has a bias (MusicGen's have none; a bias would not commute
            with guidance the way this function assumes).
    """
    heads = model.decoder.lm_heads
    if any(head.bias is not None for head in heads):
        raise IncompatibleModel("the decoder's language-model heads have biases; MusicGen's heads are bias-free")
    inputs = grid[:, :, :-1]  # [B, K, P]: each position predicts the next
    batch = inputs.shape[0]
    if params.uses_guidance:
        null_states, null_mask = unconditional(states, mask)
        hidden = decoder_hidden(
            model.decoder, torch.cat([inputs, inputs]), torch.cat([states, null_states]), torch.cat([mask, null_mask])
        )  # [2B, P, D]
        cond, uncond = hidden[:batch], hidden[batch:]  # [B, P, D] each
        guided = torch.lerp(uncond, cond, params.guidance_scale)  # uncond + s · (cond − uncond), [B, P, D]
    else:
        cond = guided = decoder_hidden(model.decoder, inputs, states, mask)  # [B, P, D]
    weight = torch.stack([head.weight for head in heads])  # [K, V, D]
    return GuidedStates(hidden=guided / params.temperature, weight=weight, cond_hidden=cond)


class _CheckpointedLayer(nn.Module):
    """Runs ``layer`` under activation checkpointing: only its inputs are kept, the rest is recomputed."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return checkpoint(self.layer, *args, use_reentrant=False, **kwargs)


@contextlib.contextmanager
def checkpointed_layers(decoder: MusicgenForCausalLM) -> Iterator[None]:
    """Within the block, each layer of ``decoder`` recomputes its activations during backward.

    transformers' own gradient checkpointing runs only in train mode, whose dropout would move the
    distribution away from the one the engine samples from (eval mode). So the layers are wrapped for the
    forward pass and put back after it; the parameters stay the same objects throughout, so optimisers, DDP
    and saved checkpoints never see the wrappers (backward replays the layers through the wrappers' closures).

    Args:
        decoder: A MusicGen decoder (the policy's, or a separate value model's trunk).
    """
    layers = decoder.model.decoder.layers  # nn.ModuleList of decoder layers
    originals = list(layers)
    for index, layer in enumerate(originals):
        layers[index] = _CheckpointedLayer(layer)
    try:
        yield
    finally:
        for index, layer in enumerate(originals):
            layers[index] = layer


def keep_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """``logits`` with everything below the k-th largest set to -inf (ties kept); k = 0 keeps all."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [..., 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def token_log_probs(sampling_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(a|s) of ``tokens`` [B, K, P] under ``sampling_logits`` [B, K, P, V] → [B, K, P].

    Positions outside the delay window hold the start token (id V), which has no logit; they are read as
    token V − 1 here and must be masked by the caller.
    """
    log_probs = torch.log_softmax(sampling_logits, dim=-1)
    safe = tokens.clamp(max=sampling_logits.shape[-1] - 1)
    return log_probs.gather(-1, safe[..., None]).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each distribution, [...] from logits [..., V]."""
    log_probs = torch.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)
