"""MusicGen's codebook delay pattern (Copet et al. 2023, §2.2), in one place.

Codebook k lags k frames behind codebook 0: frame f of codebook k sits at position f + k + 1 of the
decoder's sequence, position 0 holds the start token, and every position outside a codebook's window
holds the start token too. A clip of T frames is a grid of T + K positions, decoded in T + K - 1 steps.
Sampling (the engine), likelihoods (the RL trainer) and the preference model all use these functions.
"""

import torch


def in_window(position: int | torch.Tensor, frames: torch.Tensor, num_codebooks: int) -> torch.Tensor:
    """Which codebooks hold a real token at ``position``: bool [B, K] for clips of ``frames`` [B] frames.

    ``position`` is one for every clip, or one per clip (int64 [B]) when the clips are at different steps.
    """
    codebook = torch.arange(num_codebooks, device=frames.device)  # [K]
    # a Python int stays one: making it a device tensor would copy to the device, and wait, every step
    at = position[:, None] if isinstance(position, torch.Tensor) else position  # [B, 1] or a scalar
    return (at >= codebook + 1) & (at <= codebook + frames[:, None])  # [B, K]


def window_mask(frames: torch.Tensor, num_codebooks: int, length: int) -> torch.Tensor:
    """Real-token positions of whole grids: bool [B, K, L] for clips of ``frames`` [B] frames."""
    position = torch.arange(length, device=frames.device)  # [L]
    codebook = torch.arange(num_codebooks, device=frames.device)[:, None]  # [K, 1]
    low = codebook + 1  # [K, 1]
    high = codebook + frames[:, None, None]  # [B, K, 1]
    return (position >= low) & (position <= high)  # [B, K, L]


def delay(codes: torch.Tensor, start_token_id: int) -> torch.Tensor:
    """The delayed grid of clips: codes int64 [B, K, T] → int64 [B, K, T + K]."""
    batch, num_codebooks, frames = codes.shape
    grid = torch.full((batch, num_codebooks, frames + num_codebooks), start_token_id, dtype=codes.dtype)
    grid = grid.to(codes.device)  # [B, K, T + K]
    for k in range(num_codebooks):
        grid[:, k, k + 1 : k + 1 + frames] = codes[:, k]
    return grid


def undelay(grid: torch.Tensor, frames: int) -> torch.Tensor:
    """Codes int64 [K, T] from one delayed grid [K, L]."""
    return torch.stack([grid[k, k + 1 : k + 1 + frames] for k in range(grid.shape[0])])
