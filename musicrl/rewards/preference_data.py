"""Read a snapshot's preference pairs and stream their clips' codes for training the preference reward.

A snapshot (:mod:`musicrl.data.snapshot`) holds ``preferences_{train,validation,test}.parquet``: one row per
answer, with ``choice`` (a|b|tie|none), ``label`` (1.0 A won, 0.0 B won, 0.5 tie, null none) and both clips'
ids and codes URIs. Answers of ``none`` order nothing and are always dropped; ties either stay as soft
targets (0.5) or are dropped.

The codes come from the snapshot's packed int16 shards (:mod:`musicrl.data.codes`), read clip by clip: a
:class:`PairDataset` keeps a few numbers per pair (Arrow and NumPy arrays, which forked DataLoader workers
share without copying) and reads a pair's two grids only when a batch asks for them, so memory follows the
batch, not the number of pairs.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, Dataset

from musicrl.data.codes import PackedCodes, distinct_clips, packed_or_packing
from musicrl.data.dataset import join_url, read_snapshot_table
from musicrl.errors import InvalidRequest
from musicrl.rewards.preference_config import TIES


logger = logging.getLogger(__name__)

PAIR_COLUMNS = (
    "prompt",
    "choice",
    "label",
    "clip_a_id",
    "clip_b_id",
    "clip_a_codes_uri",
    "clip_b_codes_uri",
    "clip_a_audio_uri",
    "clip_b_audio_uri",
)
# what the preference trainer reads: the clips' URIs are ~70% of a pair's bytes, and packed codes need none
TRAIN_COLUMNS = ("prompt", "choice", "label", "clip_a_id", "clip_b_id")
CLIP_COLUMNS = tuple(f"clip_{side}_{what}" for side in "ab" for what in ("id", "codes_uri"))


@dataclass(frozen=True, slots=True)
class PreferencePairs:
    """Pairs of one split, ready to train on.

    Attributes:
        split: The snapshot split they come from (``train``, ``validation`` or ``test``).
        table: The kept rows' columns (:data:`PAIR_COLUMNS` unless :func:`read_pairs` was asked for fewer).
        labels: P(A ≻ B) targets, float32 [N]: 1, 0, or 0.5 for a tie.
        dropped_none: Rows dropped because the listener chose neither clip.
        dropped_ties: Rows dropped because they were ties (``ties="drop"``).
    """

    split: str
    table: pa.Table
    labels: np.ndarray
    dropped_none: int = 0
    dropped_ties: int = 0

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def decisive(self) -> int:
        """Pairs with a winner (label 0 or 1)."""
        return int(np.sum(self.labels != 0.5))

    @property
    def prompts(self) -> list[str]:
        """The prompt of each pair."""
        return self.table["prompt"].to_pylist()

    @property
    def audio_a(self) -> list[str]:
        """Audio (WAV) URI of clip A of each pair."""
        return self.table["clip_a_audio_uri"].to_pylist()

    @property
    def audio_b(self) -> list[str]:
        """Audio (WAV) URI of clip B of each pair."""
        return self.table["clip_b_audio_uri"].to_pylist()


def read_pairs(snapshot_url: str, split: str, *, ties: str, columns: Sequence[str] = PAIR_COLUMNS) -> PreferencePairs:
    """Read ``preferences_<split>.parquet`` of a snapshot, dropping ``none`` answers (and ties if asked).

    Args:
        snapshot_url: The snapshot folder (local path or fsspec URL).
        split: ``train``, ``validation`` or ``test``.
        ties: ``soft`` keeps ties as label 0.5; ``drop`` drops them.
        columns: The columns to read; ``choice`` and ``label`` are always read.

    Returns:
        The usable pairs.

    Raises:
        InvalidRequest: The file is missing or lacks a column, or ``ties`` is unknown.
    """
    if ties not in TIES:
        raise InvalidRequest(f"ties must be one of {TIES}, got {ties!r}")
    url = join_url(snapshot_url, f"preferences_{split}.parquet")
    names = tuple(dict.fromkeys([*columns, "choice", "label"]))
    table = read_snapshot_table(snapshot_url, f"preferences_{split}", names)
    ordered = pc.and_(pc.fill_null(pc.not_equal(table["choice"], "none"), True), pc.is_valid(table["label"]))
    answered = _kept(table, ordered)
    kept = answered if ties == "soft" else _kept(answered, pc.invert(pc.equal(answered["label"], 0.5)))
    pairs = PreferencePairs(
        split=split,
        table=kept,
        labels=kept["label"].to_numpy().astype(np.float32),
        dropped_none=table.num_rows - answered.num_rows,
        dropped_ties=answered.num_rows - kept.num_rows,
    )
    _check_labels(pairs.labels, url)
    logger.info(
        "%s: %d pairs kept (%d none and %d ties dropped)", url, len(pairs), pairs.dropped_none, pairs.dropped_ties
    )
    return pairs


def _kept(table: pa.Table, mask: pa.ChunkedArray) -> pa.Table:
    """The rows where ``mask`` holds, as one chunk; no copy when every row does (at scale, most do)."""
    if pc.all(mask).as_py():
        return table.combine_chunks()
    return table.filter(mask).combine_chunks()


def _check_labels(labels: np.ndarray, url: str) -> None:
    bad = labels[~np.isin(labels, (0.0, 0.5, 1.0))]
    if bad.size:
        raise InvalidRequest(f"{url} holds labels other than 0, 0.5 and 1, e.g. {float(bad[0])}")


def open_codes(snapshot_url: str, splits: Sequence[PreferencePairs], *, cache_dir: str) -> PackedCodes:
    """The packed codes of the snapshot, or, for one taken without them, those of ``splits``' clips packed now.

    Args:
        snapshot_url: The snapshot folder.
        splits: The pairs whose clips will be read.
        cache_dir: A local folder, which the caller removes, for codes packed now or copied from a store.

    Returns:
        The codes.

    Raises:
        InvalidRequest: Packing now failed: a clip's codes file is missing or holds no valid codes.
    """

    def clips() -> pa.Table:  # read only when the snapshot has no packed codes
        tables = [read_snapshot_table(snapshot_url, f"preferences_{p.split}", CLIP_COLUMNS) for p in splits]
        return distinct_clips(tables)

    codes = packed_or_packing(snapshot_url, clips, cache_dir=cache_dir)
    logger.info("codes of %(clips)d clips in %(shards)d shards (%(codes)d codes)", codes.summary())
    return codes


def pair_datasets(
    snapshot_url: str, splits: Sequence[PreferencePairs], *, num_codebooks: int, vocab_size: int, cache_dir: str
) -> dict[str, "PairDataset"]:
    """Each split's pairs over the snapshot's codes (:func:`open_codes`), checked for the policy.

    Args:
        snapshot_url: The snapshot folder.
        splits: The pairs, one :class:`PreferencePairs` per split.
        num_codebooks: K of the policy.
        vocab_size: V of the policy.
        cache_dir: See :func:`open_codes`.

    Returns:
        A :class:`PairDataset` by split name.

    Raises:
        InvalidRequest: A clip is not among the packed codes, its file is missing (when packing now), or it
            holds codes the policy cannot read; the message names its codes URI.
    """
    codes = open_codes(snapshot_url, splits, cache_dir=cache_dir)
    datasets = {pairs.split: PairDataset(pairs, codes) for pairs in splits}
    for dataset in datasets.values():
        for rows in (dataset.rows_a, dataset.rows_b):
            codes.check(rows, num_codebooks, vocab_size)  # from the index: no clip is read
    return datasets


@dataclass(frozen=True, slots=True)
class PairBatch:
    """A batch of pairs as the trainer feeds them to the model.

    The clips travel as one tensor, so a DataLoader worker hands the batch over in a few shared-memory
    tensors rather than two per pair (which cost more than reading the codes).

    Attributes:
        prompts: B prompts.
        codes: Every clip's codes end to end in time, clips A of the batch then clips B, int64 [K, ΣT].
        frames: Each clip's T, A clips then B clips, int64 [2B].
        labels: P(A ≻ B) targets, float32 [B].
    """

    prompts: list[str]
    codes: torch.Tensor
    frames: torch.Tensor
    labels: torch.Tensor

    @property
    def codes_a(self) -> list[torch.Tensor]:
        """B grids of clip A, int64 [K, T_b] (views of :attr:`codes`)."""
        return list(self._clips()[: len(self.prompts)])

    @property
    def codes_b(self) -> list[torch.Tensor]:
        """B grids of clip B, int64 [K, T_b] (views of :attr:`codes`)."""
        return list(self._clips()[len(self.prompts) :])

    def _clips(self) -> tuple[torch.Tensor, ...]:
        return torch.split(self.codes, self.frames.tolist(), dim=-1)  # 2B views [K, T_b]


class PairDataset(Dataset[tuple[str, np.ndarray, np.ndarray, float]]):
    """Pair i → (prompt, codes of A int16 [K, T], codes of B int16 [K, T], label), read from the shards.

    Clips come whole, whatever their length: the model scores a long one on its first and last window.

    Args:
        pairs: The split's pairs.
        codes: The snapshot's packed codes.
    """

    def __init__(self, pairs: PreferencePairs, codes: PackedCodes) -> None:
        self.split = pairs.split
        self.prompts = pairs.table["prompt"].combine_chunks()  # Arrow: forked workers share it, no refcounts
        self.rows_a = codes.rows_of(pairs.table["clip_a_id"].combine_chunks())  # int32 [N]
        self.rows_b = codes.rows_of(pairs.table["clip_b_id"].combine_chunks())  # int32 [N]
        self.labels = pairs.labels  # float32 [N]
        self.codes = codes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray, np.ndarray, float]:
        index = int(index)  # the loader passes NumPy integers from the trainer's permutation
        a, b = (self.codes.grid(int(rows[index])) for rows in (self.rows_a, self.rows_b))
        return str(self.prompts[index].as_py()), a, b, float(self.labels[index])


def collate_pairs(items: Sequence[tuple[str, np.ndarray, np.ndarray, float]]) -> PairBatch:
    """Gather :class:`PairDataset` items into a :class:`PairBatch` (clips keep their own lengths)."""
    prompts, grids_a, grids_b, labels = zip(*items, strict=True)
    grids = [*grids_a, *grids_b]
    # int16 → int64 once per batch, in the worker, for the decoder's embedding lookup
    codes = torch.from_numpy(np.concatenate(grids, axis=1).astype(np.int64))  # [K, ΣT]
    frames = torch.tensor([grid.shape[1] for grid in grids], dtype=torch.int64)  # [2B]
    return PairBatch(list(prompts), codes, frames, torch.tensor(labels, dtype=torch.float32))


def pair_loader(
    dataset: PairDataset, batches: Sequence[Sequence[int] | np.ndarray], *, num_workers: int
) -> DataLoader:
    """Stream ``batches`` (lists of pair indices, in order) of ``dataset`` through ``num_workers`` processes.

    Args:
        dataset: The pairs.
        batches: The index batches, in the order the trainer wants them (the loader keeps it).
        num_workers: Worker processes reading codes; 0 reads them in the calling process.

    Returns:
        A loader yielding :class:`PairBatch` es.
    """
    return DataLoader(
        dataset,
        # as given: views of the trainer's permutation, not a Python int per pair (the loader indexes with either)
        batch_sampler=cast(Sequence[list[int]], batches),
        collate_fn=collate_pairs,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,  # a few batches ahead per worker: decoding waits for none
        # its own generator: drawing the workers' base seed from torch's global one would shift every
        # dropout mask of the run by one draw per loader
        generator=torch.Generator().manual_seed(0),
    )


def sequential_batches(size: int, batch_size: int) -> list[np.ndarray]:
    """``[0, batch_size)``, ``[batch_size, 2 * batch_size)``, ... up to ``size``: views of one int32 range."""
    indices = np.arange(size, dtype=np.int32)
    return [indices[start : start + batch_size] for start in range(0, size, batch_size)]
