"""Iteration-level batching of the decode loop: requests join and leave the running batch at every step.

The micro-batcher runs a batch to the end of its longest clip, so a request that arrives meanwhile waits for
all of it. LLM servers schedule per step instead (Orca, Yu et al. OSDI 2022; vLLM; TGI). The same is done
here on MusicGen's decoder, with transformers' own modules and cache:

* a joining request has its prompt encoded and its cross-attention keys and values computed (by the decoder's
  own cross-attention modules), and takes its first step *in the batch's next step*, not in a pass of its
  own: MusicGen's decoder has no prompt tokens to prefill, only the start token, so a separate pass would
  read every weight once more for one token per row, which is what a step of the whole batch costs;
* the batch's self-attention cache is one tensor of ``P`` columns per layer. A row that joined at column
  ``s`` is at position ``P - s``: :class:`RowPositions` gives every row its own position where MusicGen would
  use the shared cache length, and the columns before ``s`` are masked out;
* its cross-attention cache is padded to the batch's longest prompt, under the encoder mask;
* a finished row leaves at once, and columns that no remaining row needs are cropped from the left.

A clip therefore depends only on its (prompt, settings, seed), whatever joined or left around it: the same
codes as :meth:`GenerationEngine.sample_codes` gives it alone. Which rows finish is known on the host from
the step counts, so the loop reads nothing back from the device until a clip is done.
"""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from transformers import EncoderDecoderCache

from musicrl.errors import InvalidRequest
from musicrl.models.delay import in_window, undelay
from musicrl.models.engine import DecodeState, GenerationEngine, GenerationRequest
from musicrl.models.kv_cache import GrowingLayer, decode_cache
from musicrl.models.sampling import candidate_count, classifier_free_guidance, sample_tokens


class RowPositions(nn.Module):
    """MusicGen's sinusoidal position embedding with a position per batch row.

    MusicGen's decoder embeds the position ``cache length + i`` for every row alike. With ``rows`` set (int64
    [R], one position per decoder row) this module returns those rows' embeddings instead, read from the same
    table in the same way, so a row's values are identical to the ones it gets decoding alone. With ``rows``
    unset it is the original module.
    """

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original = original
        self.rows: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor, cache_length: int = 0) -> torch.Tensor:
        if self.rows is None:
            return self.original(input_ids, cache_length)
        weights = cast(torch.Tensor, self.original.weights)  # [max positions, D]
        return weights.index_select(0, self.rows).detach()[:, None, :]  # [R, 1, D]: one step per row

    @classmethod
    def install(cls, engine: GenerationEngine) -> "RowPositions":
        """The engine's decoder's position module, replaced by a RowPositions once (idempotent)."""
        decoder = engine.model.decoder.model.decoder
        if not isinstance(decoder.embed_positions, cls):
            decoder.embed_positions = cls(decoder.embed_positions)
        return decoder.embed_positions


@dataclass(slots=True)
class _Row:
    """Host-side bookkeeping of one request in the batch."""

    key: Hashable
    frames: int
    steps: int  # T + K - 1
    done: int  # steps taken; the next input is the grid's position ``done``
    guided: bool
    top_k: int


@dataclass(frozen=True, slots=True)
class FinishedClip:
    """A request that left the batch.

    Attributes:
        key: The caller's key of the request.
        codes: Its audio tokens, int64 [K, T], on the CPU.
    """

    key: Hashable
    codes: torch.Tensor


class ContinuousBatch:
    """The running decode batch of one engine: :meth:`join` new requests, :meth:`step` all of them.

    Not thread-safe: one thread (the server's torch thread) drives it.

    Args:
        engine: The engine whose model, tokenizer and settings are used.
    """

    # per request (A rows, in join order), on the model's device
    _grid: torch.Tensor  # int64 [A, K, L]: delayed token grids
    _uniforms: torch.Tensor  # float64 [A, L - 1, K]: each request's own noise
    _done: torch.Tensor  # int64 [A]: steps taken = the position of the next input
    _frames: torch.Tensor  # int64 [A]
    _temperature: torch.Tensor  # float32 [A]
    _top_k: torch.Tensor  # int64 [A]
    _start: torch.Tensor  # int64 [A]: the first self-attention cache column of the request
    _guided: torch.Tensor  # int64 [G]: the requests with guidance, whose unconditional rows follow the A
    _scale: torch.Tensor  # float32 [G]
    # per decoder row (R = A + G)
    _states: torch.Tensor | None  # [R, S, D]: text states, zero on unconditional rows
    _text_mask: torch.Tensor | None  # int64 [R, S]
    _cache: EncoderDecoderCache | None
    _any_padding: bool  # whether some request joined after column 0 (then a self-attention mask is needed)

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine
        self.positions = RowPositions.install(engine)
        self._rows: list[_Row] = []
        self._clear()

    @property
    def size(self) -> int:
        """Requests in the batch (each with one decoder row, two with guidance)."""
        return len(self._rows)

    @property
    def keys(self) -> list[Hashable]:
        """The keys of the requests in the batch, in row order."""
        return [row.key for row in self._rows]

    @torch.inference_mode()
    def join(self, requests: Sequence[GenerationRequest], keys: Sequence[Hashable]) -> None:
        """Add ``requests`` (with the caller's ``keys``); they take their first step in the next :meth:`step`.

        Raises:
            InvalidRequest: A clip longer than the model's positions allow, or keys that do not match; the
                batch is unchanged.
        """
        if len(keys) != len(requests):
            raise InvalidRequest(f"got {len(requests)} requests but {len(keys)} keys")
        if not requests:
            return
        engine = self.engine
        batch = engine.prepare(requests)  # validates lengths, encodes the prompts, draws the noise
        rows = engine.decoder_rows(batch, torch.arange(len(requests), device=engine.device))
        joined = [
            _Row(
                key,
                int(frames),
                int(frames) + engine.num_codebooks - 1,
                0,
                r.params.guidance_scale > 1,
                r.params.top_k,
            )
            for key, frames, r in zip(keys, batch.frames.tolist(), requests, strict=True)
        ]
        self._merge(batch, rows.states, rows.mask, self._cross_attention(rows.states), joined)

    def _cross_attention(self, states: torch.Tensor) -> EncoderDecoderCache:
        """A cache holding only the cross-attention keys and values of decoder rows with text ``states``.

        Computed by each layer's own cross-attention module, as the decoder does on its first step; the query
        it is given is discarded, so its value does not matter.
        """
        decoder = self.engine.model.decoder.model.decoder
        cache = decode_cache(decoder.config)
        query = states.new_zeros((states.shape[0], 1, states.shape[2]))
        for layer in decoder.layers:
            layer.encoder_attn(query, key_value_states=states, cache=cache)
        return cache

    @torch.inference_mode()
    def step(self) -> list[FinishedClip]:
        """One decode step of every request in the batch; returns those that finished (and left)."""
        if not self._rows:
            return []
        engine = self.engine
        conditional = torch.arange(len(self._rows), device=engine.device)
        decoder_rows = torch.cat([conditional, self._guided])  # [R]
        step = self._done  # [A]: each row's input position
        input_ids = self._grid[conditional, :, step][decoder_rows]  # [R, K]
        columns = self._cache_length() + 1
        start = self._start[decoder_rows]  # [R]
        self.positions.rows = columns - 1 - start
        padded = bool(self._any_padding)
        attention_mask = (
            (torch.arange(columns, device=engine.device)[None] >= start[:, None]).long() if padded else None
        )
        try:
            out = engine.model.decoder(
                input_ids=input_ids.reshape(-1, 1),
                attention_mask=attention_mask,
                encoder_hidden_states=self._states,
                encoder_attention_mask=self._text_mask,
                cache=self._cache,
                use_cache=True,
            )
        finally:
            self.positions.rows = None
        logits = out.logits[:, -1, :].float().reshape(len(decoder_rows), engine.num_codebooks, -1)  # [R, K, V]
        cond = logits[: len(self._rows)]
        if len(self._guided):
            cond[self._guided] = classifier_free_guidance(cond[self._guided], logits[len(self._rows) :], self._scale)
        candidates = candidate_count((row.top_k for row in self._rows), engine.vocab_size)  # on the host: no sync
        noise = self._uniforms[conditional, step]
        tokens = sample_tokens(cond, self._temperature, self._top_k, noise, candidates=candidates)  # [A, K]
        position = step + 1
        real = in_window(position, self._frames, engine.num_codebooks)  # [A, K]
        self._grid[conditional, :, position] = torch.where(
            real, tokens, torch.full_like(tokens, engine.start_token_id)
        )
        self._done = position
        for row in self._rows:
            row.done += 1
        return self._leave()

    def abandon(self, keys: Sequence[Hashable]) -> None:
        """Remove the requests of ``keys`` unfinished (their callers went away), freeing their rows."""
        leaving = set(keys)
        for row in self._rows:
            if row.key in leaving:
                row.steps = row.done
        self._leave()

    def _clear(self) -> None:
        device, k = self.engine.device, self.engine.num_codebooks
        self._cache = None
        self._grid = torch.empty((0, k, 0), dtype=torch.long, device=device)
        self._uniforms = torch.empty((0, 0, k), dtype=torch.float64, device=device)
        self._done, self._frames, self._top_k, self._start, self._guided = (
            torch.empty(0, dtype=torch.long, device=device) for _ in range(5)
        )
        self._temperature = torch.empty(0, dtype=torch.float32, device=device)
        self._scale = torch.empty(0, dtype=torch.float32, device=device)
        self._any_padding = False
        self._states, self._text_mask = None, None

    def _cache_length(self) -> int:
        return 0 if self._cache is None else int(self._cache.self_attention_cache.get_seq_length())

    def _merge(
        self,
        batch: DecodeState,
        states: torch.Tensor,
        text_mask: torch.Tensor,
        cache: EncoderDecoderCache,
        joined: list[_Row],
    ) -> None:
        """Append the joining requests' state and cross-attention rows to the batch's.

        Their self-attention rows are zero (masked out) over the batch's columns: the next step appends their
        first column.
        """
        engine = self.engine
        old, new = len(self._rows), len(joined)
        old_guided = len(self._guided)
        new_guided = torch.tensor(
            [i for i, r in enumerate(joined) if r.guided], dtype=torch.long, device=engine.device
        )
        columns = self._cache_length()
        # conditional rows, then unconditional ones: [old cond, new cond, old uncond, new uncond]
        order = torch.cat(
            [
                torch.arange(old),
                old + old_guided + torch.arange(new),
                old + torch.arange(old_guided),
                old + old_guided + new + torch.arange(len(new_guided)),
            ]
        ).to(engine.device)
        if self._cache is None:
            self._cache = cache
            self._states, self._text_mask = states, text_mask
        else:
            assert self._states is not None and self._text_mask is not None
            # the same order, with zero self-attention rows (masked out) for the new ones
            gathered = [*range(old), *[-1] * new, *range(old, old + old_guided), *[-1] * len(new_guided)]
            for layer in self._cache.self_attention_cache.layers:
                assert isinstance(layer, GrowingLayer), "the batch's cache comes from decode_cache"
                layer.gather_rows(gathered)
            width = max(self._text_mask.shape[1], text_mask.shape[1])
            for mine, theirs in zip(
                self._cache.cross_attention_cache.layers, cache.cross_attention_cache.layers, strict=True
            ):
                mine.keys = torch.cat([_extend_columns(mine.keys, width), _extend_columns(theirs.keys, width)])[order]
                mine.values = torch.cat([_extend_columns(mine.values, width), _extend_columns(theirs.values, width)])[
                    order
                ]
            self._states = torch.cat(
                [_extend_columns(self._states, width, dim=1), _extend_columns(states, width, dim=1)]
            )[order]
            self._text_mask = torch.cat([_pad_mask(self._text_mask, width), _pad_mask(text_mask, width)])[order]
        joined_start = torch.full((new,), columns, dtype=torch.long, device=engine.device)
        self._any_padding = self._any_padding or columns > 0
        self._grid = _cat_padded(self._grid, batch.tokens, engine.start_token_id, dim=2)
        self._uniforms = _cat_padded(self._uniforms, batch.uniforms, 0.0, dim=1)
        self._done = torch.cat([self._done, torch.zeros(new, dtype=torch.long, device=engine.device)])
        self._frames = torch.cat([self._frames, batch.frames])
        self._temperature = torch.cat([self._temperature, batch.temperature])
        self._top_k = torch.cat([self._top_k, batch.top_k])
        self._guided = torch.cat([self._guided, old + new_guided])
        self._scale = torch.cat([self._scale, batch.guidance[new_guided]])
        self._start = torch.cat([self._start, joined_start])
        self._rows += joined

    def _leave(self) -> list[FinishedClip]:
        """Remove the rows that took their last step; returns their codes."""
        finished = [i for i, row in enumerate(self._rows) if row.done >= row.steps]
        if not finished:
            return []
        grid = self._grid[torch.tensor(finished, device=self._grid.device)].cpu()  # the one read-back: done clips
        clips = [
            FinishedClip(self._rows[i].key, undelay(grid[n], self._rows[i].frames)) for n, i in enumerate(finished)
        ]
        leaving = set(finished)
        kept = [i for i in range(len(self._rows)) if i not in leaving]
        if not kept:
            self._rows = []
            self._clear()
            return clips
        device = self._grid.device
        keep = torch.tensor(kept, dtype=torch.long, device=device)
        remap = torch.full((len(self._rows),), -1, dtype=torch.long)
        remap[kept] = torch.arange(len(kept))
        guided_host = [int(g) for g in self._guided.tolist()]
        kept_guided = [n for n, g in enumerate(guided_host) if remap[g] >= 0]
        decoder_rows = torch.cat(
            [keep, len(self._rows) + torch.tensor(kept_guided, dtype=torch.long, device=device)]
        ).to(device)
        assert self._cache is not None and self._states is not None and self._text_mask is not None
        self._cache.batch_select_indices(decoder_rows)
        self._states, self._text_mask = self._states[decoder_rows], self._text_mask[decoder_rows]
        self._guided = remap[torch.tensor([guided_host[n] for n in kept_guided], dtype=torch.long)].to(device)
        self._scale = self._scale[torch.tensor(kept_guided, dtype=torch.long, device=device)]
        for name in ("_grid", "_uniforms", "_done", "_frames", "_temperature", "_top_k", "_start"):
            setattr(self, name, getattr(self, name)[keep])
        self._rows = [self._rows[i] for i in kept]
        self._crop_unused_columns()
        return clips

    def _crop_unused_columns(self) -> None:
        """Drop the leading cache columns that every remaining row masks out."""
        first = int(self._start.min())  # a host read, only when a row has left
        if first == 0:
            return
        assert self._cache is not None
        for layer in self._cache.self_attention_cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        self._start = self._start - first
        self._any_padding = bool((self._start > 0).any())


def _extend_columns(tensor: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """Zero columns after a tensor's own along ``dim``, up to ``width``: cross-attention keys, values and states
    past a prompt, which the encoder mask hides from every row (a conditional row's past its prompt, an
    unconditional row's everywhere)."""
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (0, width - mask.shape[1]))


def _cat_padded(mine: torch.Tensor, theirs: torch.Tensor, value: float, dim: int) -> torch.Tensor:
    """Concatenate on dim 0 after padding ``dim`` of the shorter one at its end with ``value``."""
    length = max(mine.shape[dim], theirs.shape[dim])

    def pad(tensor: torch.Tensor) -> torch.Tensor:
        shape = list(tensor.shape)
        shape[dim] = length - tensor.shape[dim]
        return torch.cat([tensor, tensor.new_full(shape, value)], dim=dim) if shape[dim] else tensor

    return torch.cat([pad(mine), pad(theirs)])
