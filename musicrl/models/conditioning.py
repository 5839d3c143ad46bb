"""Text conditioning of MusicGen: prompts → T5 states projected to the decoder width, zeroed at padding.

The engine (sampling), the RL trainer (likelihoods) and the preference reward model must condition the
decoder identically, or the trainer would optimise a distribution the server does not sample from.
"""

from collections.abc import Sequence

import torch
from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerBase


def encode_prompts(
    model: MusicgenForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts as the decoder's cross-attention input.

    Args:
        model: The composite MusicGen.
        tokenizer: Its text tokenizer.
        prompts: B prompts.
        max_tokens: Longer prompts are truncated to this many tokens.

    Returns:
        States [B, S, D] (projected, zero at padding) and the attention mask int64 [B, S].
    """
    device = next(model.parameters()).device
    encoded = tokenizer(list(prompts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    input_ids = encoded["input_ids"].to(device)
    mask = encoded["attention_mask"].to(device)
    states = model.text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [B, S, D_t]
    if getattr(model, "enc_to_dec_proj", None) is not None:
        states = model.enc_to_dec_proj(states)  # [B, S, D]
    return states * mask[..., None], mask


def unconditional(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The null prompt of classifier-free guidance: zero states under a zero mask, as MusicGen."""
    return torch.zeros_like(states), torch.zeros_like(mask)
