"""The value baseline V(s_t) (MusicRL §3.2): a scalar per decoding step, regressed on the return.

Two layouts, chosen by config:

* ``separate`` (default, as the paper): a copy of the start checkpoint's decoder with a scalar head, trained
  by its own optimiser; it shares nothing with the policy, so value errors cannot disturb the policy;
* ``shared``: a scalar head on the policy's own conditional hidden states (cheaper; the value loss then
  also shapes the policy's trunk).
"""

import copy

import torch
from torch import nn
from transformers import MusicgenForConditionalGeneration

from musicrl.rl.policy import decoder_hidden


class ValueHead(nn.Module):
    """Hidden states [B, P, D] → values [B, P]; starts at zero so early advantages equal the rewards."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.float()).squeeze(-1)  # [B, P]


class SeparateValueModel(nn.Module):
    """A copy of the start checkpoint's decoder trunk plus a value head.

    It reads the same delayed grid and (frozen) text states as the policy. The language-model heads are not
    copied: every trainable parameter must take part in the loss (DDP requires it), and V needs only the
    hidden states.

    Args:
        model: The start checkpoint.
    """

    def __init__(self, model: MusicgenForConditionalGeneration) -> None:
        super().__init__()
        heads, model.decoder.lm_heads = model.decoder.lm_heads, nn.ModuleList()
        try:
            self.decoder = copy.deepcopy(model.decoder)  # [trunk only]
        finally:
            model.decoder.lm_heads = heads
        self.decoder.requires_grad_(True)
        self.head = ValueHead(model.config.decoder.hidden_size)

    def forward(self, grid: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Values [B, P] of every step of delayed grids [B, K, L] (conditional pass only)."""
        return self.head(decoder_hidden(self.decoder, grid[:, :, :-1], states, mask))
