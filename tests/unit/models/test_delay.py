import torch

from musicrl.models.delay import delay, in_window, undelay, window_mask


def test_delay_places_frame_f_of_codebook_k_at_position_f_plus_k_plus_1():
    codes = torch.arange(2 * 4 * 3).reshape(2, 4, 3)  # [B=2, K=4, T=3]
    grid = delay(codes, start_token_id=99)
    assert grid.shape == (2, 4, 7)
    assert grid[0, 0].tolist() == [99, 0, 1, 2, 99, 99, 99]
    assert grid[0, 3].tolist() == [99, 99, 99, 99, 9, 10, 11]
    for b in range(2):
        assert torch.equal(undelay(grid[b], 3), codes[b])


def test_the_window_mask_marks_exactly_the_real_tokens():
    codes = torch.randint(0, 50, (2, 4, 5))
    grid = delay(codes, start_token_id=99)
    mask = window_mask(torch.tensor([5, 5]), num_codebooks=4, length=grid.shape[-1])
    assert mask.sum().item() == 2 * 4 * 5
    assert (grid[~mask] == 99).all()
    for position in range(grid.shape[-1]):
        assert torch.equal(in_window(position, torch.tensor([5, 5]), 4), mask[:, :, position])


def test_shorter_clips_have_shorter_windows():
    mask = window_mask(torch.tensor([2, 4]), num_codebooks=2, length=6)
    assert mask[0].sum() == 4 and mask[1].sum() == 8
    assert mask[0, 1].tolist() == [False, False, True, True, False, False]
