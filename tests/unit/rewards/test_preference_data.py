"""Tests of the preference trainer's data path: pairs stream from the packed codes, exactly and in flat memory."""

import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from musicrl.rewards.preference_data import (
    TRAIN_COLUMNS,
    PairDataset,
    open_codes,
    pair_datasets,
    pair_loader,
    read_pairs,
    sequential_batches,
)
from tests.utils.synthetic import clip_codes, many_pairs_snapshot, random_codes_snapshot, read_pairs_table


FRAMES = 50  # 1 s at 50 frames/s: long enough that codes dominate what a pair costs, short enough to build fast
BOUND = 2 * 2**20  # bytes: a few batches of 64 pairs (~200 KB of int64 codes each) and the loader's bookkeeping


def _dataset(snapshot: str) -> PairDataset:
    pairs = read_pairs(snapshot, "train", ties="soft", columns=TRAIN_COLUMNS)  # as the trainer reads them
    cache = str(Path(snapshot).parent / "cache")  # unused: the snapshot's codes are packed and local
    return pair_datasets(snapshot, [pairs], num_codebooks=4, vocab_size=2048, cache_dir=cache)["train"]


def test_streamed_batches_hold_exactly_the_codes_of_the_clip_store_files(tmp_path):
    snapshot = many_pairs_snapshot(tmp_path, 300, frames=FRAMES, files=True)
    dataset = _dataset(snapshot)
    rows = read_pairs_table(snapshot, "train")
    order = np.random.default_rng(0).permutation(len(rows))
    batches = [order[i : i + 32] for i in range(0, len(order), 32)]
    seen = 0
    for batch, index in zip(pair_loader(dataset, batches, num_workers=2), batches, strict=True):  # real workers
        for k, i in enumerate(index):
            for side, streamed in (("a", batch.codes_a[k]), ("b", batch.codes_b[k])):
                on_file = np.load(rows[i][f"clip_{side}_codes_uri"].removeprefix("file://"))
                assert streamed.dtype == torch.int64 and streamed.shape == on_file.shape
                assert torch.equal(streamed, torch.from_numpy(on_file))
            assert batch.prompts[k] == rows[i]["prompt"] and float(batch.labels[k]) == rows[i]["label"]
            seen += 1
    assert seen == len(rows) == 300


def _peak_streaming_bytes(snapshot: str) -> tuple[int, int]:
    """Peak traced bytes while reading the pairs and streaming them all once, and the pairs streamed."""
    tracemalloc.start()
    try:
        dataset = _dataset(snapshot)
        streamed = 0
        for batch in pair_loader(dataset, sequential_batches(len(dataset), 64), num_workers=0):
            streamed += len(batch.prompts)
        return tracemalloc.get_traced_memory()[1], streamed
    finally:
        tracemalloc.stop()


def test_streaming_memory_stays_flat_as_pairs_grow(tmp_path):
    small, large = 5_000, 20_000
    peaks = {}
    for pairs in (small, large):
        peaks[pairs], streamed = _peak_streaming_bytes(
            many_pairs_snapshot(tmp_path / str(pairs), pairs, frames=FRAMES)
        )
        assert streamed == pairs
    codes_of_large = large * 2 * 4 * FRAMES * 8  # what the per-file reader held for 20k pairs: 64 MB of int64
    mib = {pairs: round(peak / 2**20, 2) for pairs, peak in peaks.items()}
    print(f"\npeak traced memory in MiB by pairs streamed: {mib}")
    assert peaks[large] < BOUND < codes_of_large / 10  # a few batches, not the codes
    # 4x the pairs add their labels and batch indices (~10 bytes a pair, against 3.2 KB of codes a pair)
    assert peaks[large] - peaks[small] < 2**19


def test_clips_come_whole_however_long(tmp_path):
    snapshot = many_pairs_snapshot(tmp_path, 2, frames=3_000)  # 60 s: past the 30 s window and 2048 positions
    prompt, a, b, label = _dataset(snapshot)[1]
    clip_a = read_pairs_table(snapshot, "train")[1]["clip_a_id"]
    assert a.shape == b.shape == (4, 3_000) and a.dtype == np.int16
    np.testing.assert_array_equal(a, clip_codes(clip_a, frames=3_000))


def test_a_snapshot_taken_without_packed_codes_is_packed_for_the_run(tmp_path, caplog):
    snapshot = random_codes_snapshot(tmp_path, pack=False)
    pairs = read_pairs(snapshot.url, "train", ties="soft")
    with caplog.at_level(logging.WARNING):
        codes = open_codes(snapshot.url, [pairs], cache_dir=str(tmp_path / "cache"))
    assert "was taken without packed codes" in caplog.text
    assert not Path(snapshot.url, "codes").exists()  # the snapshot itself is left as it was
    assert Path(tmp_path, "cache", "codes", "index.parquet").exists()  # packed in the caller's folder
    first = read_pairs_table(snapshot.url, "train")[0]
    (row,) = codes.rows_of([first["clip_a_id"]])
    on_file = np.load(first["clip_a_codes_uri"].removeprefix("file://"))
    np.testing.assert_array_equal(codes.grid(int(row)), on_file)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_loader_keeps_the_trainers_batch_order(tmp_path, num_workers):
    snapshot = many_pairs_snapshot(tmp_path, 40, frames=5)
    dataset = _dataset(snapshot)
    batches = [np.array([7, 3, 39]), np.array([0]), np.arange(10, 20)]
    prompts = [r["prompt"] for r in read_pairs_table(snapshot, "train")]
    streamed = [batch.prompts for batch in pair_loader(dataset, batches, num_workers=num_workers)]
    assert streamed == [[prompts[i] for i in index] for index in batches]
