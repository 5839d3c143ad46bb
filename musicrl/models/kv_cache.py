"""A decode cache whose self-attention layers append a step in place instead of copying themselves.

transformers' :class:`~transformers.DynamicLayer` appends each decode step with ``torch.cat``, which copies the
whole layer: a clip of ``T`` steps copies ``O(T^2)`` cache entries. For MusicGen's long clips that copy is the
step's largest cost. Profiled on the mid-size config on 2 cores, 16 guided rows at 355 columns: ``aten::cat``
took 62% of a step's CPU time, the decoder's matrix products 19%.

:class:`GrowingLayer` keeps spare capacity after its columns and writes a step into it, reallocating (with
doubling, so amortised O(1) per step) only when the capacity is used up or its tensors were replaced by
someone else: ``batch_select_indices`` when a row leaves, a crop from the left, or
:class:`~musicrl.models.continuous.ContinuousBatch` merging rows. Its ``keys`` and ``values`` are views of
that buffer with the same values a DynamicLayer would hold, so attention reads the same numbers.
"""

from collections.abc import Sequence

import torch
from transformers import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache, PretrainedConfig


MIN_CAPACITY = 64  # columns: below this, regrowing is cheap anyway


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends into spare capacity.

    Args:
        max_length: Never allocate more columns than this (the decoder's positions), if given.
    """

    keys: torch.Tensor | None  # declared by DynamicLayer, which mypy does not follow
    values: torch.Tensor | None

    def __init__(self, max_length: int | None = None) -> None:
        super().__init__()
        self.max_length = max_length
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.keys is not None and self.values is not None
        self._key_buffer, self.keys = self._append(self._key_buffer, self.keys, key_states)
        self._value_buffer, self.values = self._append(self._value_buffer, self.values, value_states)
        return self.keys, self.values

    def gather_rows(self, rows: Sequence[int]) -> None:
        """Rebuild the layer from its rows ``rows``, in that order; a ``-1`` makes a new row of zero columns
        (which its attention mask must hide). One copy, into a buffer with spare capacity."""
        if not self.get_seq_length():
            return  # nothing stored yet: a layer before its first step has no rows to select
        assert self.keys is not None and self.values is not None
        self._key_buffer, self.keys = self._gathered(self.keys, rows)
        self._value_buffer, self.values = self._gathered(self.values, rows)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.gather_rows([int(i) for i in indices.tolist()])  # a host read, only when rows leave

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()

    def _gathered(self, current: torch.Tensor, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        length = current.shape[-2]
        buffer = current.new_empty((len(rows), current.shape[1], self._capacity(length + 1), current.shape[3]))
        view = buffer[:, :, :length]
        for start, source, count in _runs(rows):  # whole runs of rows: plain copies, no gathered temporary
            if source < 0:
                view[start : start + count].zero_()
            else:
                view[start : start + count].copy_(current[source : source + count])
        return buffer, view

    def _capacity(self, needed: int) -> int:
        capacity = max(2 * needed, MIN_CAPACITY)
        if self.max_length is not None:
            capacity = max(min(capacity, self.max_length), needed)
        return capacity

    def _append(
        self, buffer: torch.Tensor | None, current: torch.Tensor, new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``current`` with ``new``'s columns after it: (the buffer holding both, the view of them)."""
        length = current.shape[-2] if current.numel() else 0  # a layer just initialised holds an empty 1-d tensor
        needed = length + new.shape[-2]
        if buffer is None or buffer.shape[-2] < needed or not (length == 0 or _views_start_of(current, buffer)):
            buffer = new.new_empty((*new.shape[:2], self._capacity(needed), new.shape[3]))
            if length:
                buffer[:, :, :length] = current
        buffer[:, :, length:needed] = new
        return buffer, buffer[:, :, :needed]


def _runs(rows: Sequence[int]) -> list[tuple[int, int, int]]:
    """``rows`` as runs (first destination row, first source row or -1, count) of consecutive sources."""
    runs: list[tuple[int, int, int]] = []
    for position, source in enumerate(max(row, -1) for row in rows):
        if runs:
            start, first, count = runs[-1]
            if (source < 0 and first < 0) or (source >= 0 and first >= 0 and first + count == source):
                runs[-1] = (start, first, count + 1)
                continue
        runs.append((position, source, 1))
    return runs


def _views_start_of(tensor: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Whether ``tensor`` is ``buffer[:, :, :n]`` for some n: then appending after it in place is safe."""
    return (
        tensor.dim() == 4
        and tensor.data_ptr() == buffer.data_ptr()
        and tensor.dtype == buffer.dtype
        and tensor.device == buffer.device
        and tensor.shape[:2] == buffer.shape[:2]
        and tensor.shape[3] == buffer.shape[3]
        and tensor.stride() == buffer.stride()
    )


class GrowingCache(DynamicCache):
    """A DynamicCache of :class:`GrowingLayer` (a DynamicCache: transformers selects batch rows only of those)."""

    def __init__(self, num_layers: int, max_length: int | None = None) -> None:
        # DynamicCache's own __init__ only builds its own layer types: the base class takes a list of layers
        Cache.__init__(self, layers=[GrowingLayer(max_length) for _ in range(num_layers)])


def decode_cache(decoder_config: PretrainedConfig) -> EncoderDecoderCache:
    """An empty cache for a MusicGen decoder: growing self-attention layers, transformers' own cross-attention
    ones (written once per row, so never appended to)."""
    self_attention = GrowingCache(int(decoder_config.num_hidden_layers), int(decoder_config.max_position_embeddings))
    return EncoderDecoderCache(self_attention, DynamicCache(config=decoder_config))
