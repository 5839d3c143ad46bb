"""How the preference model's decoder reads clips: windows of long clips, the delayed grid, length buckets."""

from collections.abc import Sequence

import torch

from musicrl.models.delay import delay


MAX_PADDING_SHARE = 0.2  # a fifth of a pass may be padding: few passes, little waste


def clip_windows(codes: Sequence[torch.Tensor], window_frames: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each clip as itself if it has at most ``window_frames`` frames, else its first and last window.

    Args:
        codes: B grids, int64 [K, T_b].
        window_frames: The longest window, in frames.

    Returns:
        The W windows (int64 [K, ≤ window_frames]) in clip order, and the clip of each window, int64 [W].
    """
    windows, owner = [], []
    for index, clip in enumerate(codes):
        cut = [clip] if clip.shape[-1] <= window_frames else [clip[:, :window_frames], clip[:, -window_frames:]]
        windows.extend(cut)
        owner.extend([index] * len(cut))
    return windows, torch.tensor(owner, dtype=torch.long)


def length_buckets(lengths: Sequence[int], max_padding: float = MAX_PADDING_SHARE) -> list[list[int]]:
    """Group items by length so that padding each group to its longest wastes at most ``max_padding`` of it.

    A batch of clips of 1 to 10 s padded to 10 s computes almost half padding, and the decoder's attention
    is quadratic in length; sorted into groups, each forward pass is nearly all real positions.

    Args:
        lengths: Frames of each item.
        max_padding: Largest share of padded positions in a group, in [0, 1).

    Returns:
        Groups of indices into ``lengths``, longest first; every index once.
    """
    groups: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        group = groups[-1] if groups else None
        if group is not None:
            real = sum(lengths[i] for i in group) + lengths[index]
            if 1.0 - real / (lengths[group[0]] * (len(group) + 1)) <= max_padding:
                group.append(index)
                continue
        groups.append([index])
    return groups


def delayed_grid(codes: Sequence[torch.Tensor], start_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay clips of any lengths out as the decoder reads them, padded to the longest.

    Each clip of T_b frames becomes the delayed grid the engine decodes (start token at position 0, codebook
    k shifted by k, start token outside each codebook's window), T_b + K positions long. Shorter clips are
    padded with the start token *before* the shift, which gives exactly their own grid followed by
    start tokens; the mask marks each clip's T_b + K positions.

    Args:
        codes: B grids, int64 [K, T_b], all with the same K.
        start_token_id: The decoder's start token.

    Returns:
        ``(grid, mask)``: int64 [B, K, T_max + K] and bool [B, T_max + K].
    """
    frames = torch.tensor([c.shape[-1] for c in codes])  # [B]
    num_codebooks = int(codes[0].shape[0])
    padded = torch.full((len(codes), num_codebooks, int(frames.max())), start_token_id, dtype=torch.long)  # [B, K, T]
    for b, clip in enumerate(codes):
        padded[b, :, : clip.shape[-1]] = clip
    grid = delay(padded, start_token_id)  # [B, K, T + K]
    mask = torch.arange(grid.shape[-1])[None, :] < (frames + num_codebooks)[:, None]  # [B, T + K]
    return grid, mask
