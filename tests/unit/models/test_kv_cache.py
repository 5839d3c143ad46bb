"""The growing cache layer holds what transformers' DynamicLayer holds, without copying itself every step."""

import torch
from transformers import DynamicLayer

from musicrl.models.kv_cache import MIN_CAPACITY, GrowingLayer, _runs


def step(rows: int, columns: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (rows, 2, columns, 4)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def test_appended_steps_read_back_as_dynamic_layers_do():
    growing, dynamic = GrowingLayer(), DynamicLayer()
    for n in range(3 * MIN_CAPACITY):  # through several regrowths
        keys, values = step(3, columns=2 if n == 0 else 1, seed=n)
        got, expected = growing.update(keys, values), dynamic.update(keys, values)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert growing.get_seq_length() == dynamic.get_seq_length() == 3 * MIN_CAPACITY + 1


def test_an_append_within_capacity_writes_in_place():
    layer = GrowingLayer()
    layer.update(*step(2))
    first = layer.keys.data_ptr()
    for n in range(MIN_CAPACITY - 2):
        layer.update(*step(2, seed=n + 1))
        assert layer.keys.data_ptr() == first  # no reallocation, no copy of what was there
    assert layer.get_seq_length() == MIN_CAPACITY - 1


def test_capacity_never_exceeds_the_decoders_positions():
    layer = GrowingLayer(max_length=10)
    for n in range(10):
        layer.update(*step(1, seed=n))
    assert layer._key_buffer is not None and layer._key_buffer.shape[2] == 10


def test_tensors_replaced_from_outside_are_appended_to_not_overwritten():
    layer, dynamic = GrowingLayer(), DynamicLayer()
    for n in range(5):
        layer.update(*step(2, seed=n))
        dynamic.update(*step(2, seed=n))
    for cache in (layer, dynamic):  # a crop from the left, as the continuous batch does: a view at an offset
        cache.keys, cache.values = cache.keys[:, :, 2:], cache.values[:, :, 2:]
    got, expected = layer.update(*step(2, seed=9)), dynamic.update(*step(2, seed=9))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_gathered_rows_keep_their_columns_and_new_rows_are_zero():
    layer = GrowingLayer()
    for n in range(4):
        layer.update(*step(3, seed=n))
    before_keys = layer.keys.clone()
    layer.gather_rows([2, -1, 0, 1, -1])
    assert layer.keys.shape == (5, 2, 4, 4)
    assert torch.equal(layer.keys[0], before_keys[2])
    assert torch.equal(layer.keys[2:4], before_keys[0:2])
    assert not layer.keys[1].any() and not layer.keys[4].any()
    keys, _ = layer.update(*step(5, seed=7))  # and the next step appends after them, in spare capacity
    assert torch.equal(keys[:, :, 4], step(5, seed=7)[0][:, :, 0])


def test_selecting_batch_rows_matches_dynamic_layers():
    layer, dynamic = GrowingLayer(), DynamicLayer()
    for n in range(3):
        layer.update(*step(4, seed=n))
        dynamic.update(*step(4, seed=n))
    keep = torch.tensor([3, 0])
    layer.batch_select_indices(keep)
    dynamic.batch_select_indices(keep)
    got, expected = layer.update(*step(2, seed=5)), dynamic.update(*step(2, seed=5))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_runs_group_consecutive_sources_and_new_rows():
    assert _runs([0, 1, 2, -1, -1, 3, 5, 6]) == [(0, 0, 3), (3, -1, 2), (5, 3, 1), (6, 5, 2)]
    assert _runs([]) == []
