"""Tests of packed codes: a snapshot fetches each clip's codes once into int16 shards that read back exactly."""

import io
import json
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from musicrl.data import codes
from musicrl.data.codes import INDEX_FILE, PackedCodes, pack_codes, read_codes_file
from musicrl.data.snapshot import create_snapshot
from musicrl.data.snapshot_config import SnapshotConfig
from musicrl.errors import InvalidRequest
from musicrl.v1 import events_pb2
from tests.utils import events


A, B = events_pb2.CHOICE_A, events_pb2.CHOICE_B
SHARD_BYTES = 400  # 200 codes: the clips below (4 × 10..40 frames) spread over several shards, one over its own


def _feedback_with_codes(root: Path, pairs: int = 6, seed: int = 0) -> tuple[list, dict[str, np.ndarray]]:
    """Feedback events whose clips' codes exist as local ``.npy`` files (int64 [4, T], T of 10..40 frames).

    Comparison ``c0x`` compares the clips of ``c0`` again, so one clip serves two pairs.
    """
    rng = np.random.default_rng(seed)
    written: dict[str, np.ndarray] = {}
    everything = []
    for i in range(pairs):
        pair = events.listened_pair(f"c{i}", f"prompt {i}", A if i % 2 else B)
        for generation in pair[:2]:
            grid = rng.integers(0, 2048, size=(4, int(rng.integers(10, 41))), dtype=np.int64)
            path = root / "clips" / f"{generation.clip_id}.codes.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, grid)
            generation.codes_uri = str(path)
            written[generation.clip_id] = grid
        everything += pair
    everything += [
        events.comparison("c0x", "prompt 0", "c0-a", "c0-b"),
        events.playback("c0x", "c0-a", 10_000, completed=True),
        events.playback("c0x", "c0-b", 10_000, completed=True),
        events.preference("c0x", A),
    ]
    return everything, written


def _dataset_with_codes(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    feedback, written = _feedback_with_codes(root)
    events.write_dataset(root / "events", feedback)
    return root / "events", written


def _config(**fields) -> SnapshotConfig:
    return SnapshotConfig(codes_shard_bytes=SHARD_BYTES, **fields)


def test_a_snapshot_packs_every_clip_once_into_int16_shards_that_read_back_exactly(tmp_path):
    dataset, written = _dataset_with_codes(tmp_path)
    result = create_snapshot(str(dataset), str(tmp_path / "out"), _config())
    manifest = json.loads(Path(result.uri, "manifest.json").read_text())
    assert manifest["codes"]["clips"] == len(written) == 12  # c0's clips serve two pairs and are packed once
    assert manifest["codes"]["codes"] == sum(g.size for g in written.values())
    assert manifest["codes"]["dtype"] == "int16"
    assert manifest["config"]["consolidate_codes"] is True
    shards = [f for f in manifest["files"] if f.startswith("codes/codes-")]
    assert len(shards) >= 3 and INDEX_FILE in manifest["files"]
    assert all(Path(result.uri, f).exists() for f in manifest["files"])
    biggest = max(g.size for g in written.values())
    for shard in shards:  # each shard holds at most SHARD_BYTES of codes, or one bigger clip alone
        values = np.load(Path(result.uri, shard))
        assert values.dtype == np.int16 and values.size <= max(SHARD_BYTES // 2, biggest)

    packed = PackedCodes.open(result.uri)
    index = pq.read_table(Path(result.uri, INDEX_FILE))
    assert index["clip_id"].to_pylist() == sorted(written)  # packed in clip-id order
    rows = packed.rows_of(sorted(written))
    for clip_id, row in zip(sorted(written), rows, strict=True):
        grid = packed.grid(int(row))
        assert grid.dtype == np.int16 and grid.shape == written[clip_id].shape
        np.testing.assert_array_equal(grid.astype(np.int64), written[clip_id])
        assert packed.codes_uri(int(row)) == str(tmp_path / "clips" / f"{clip_id}.codes.npy")


def test_packed_codes_follow_the_content_and_a_rerun_fetches_nothing(tmp_path, monkeypatch):
    feedback, _ = _feedback_with_codes(tmp_path)
    dataset, relaid = tmp_path / "events", tmp_path / "relaid"
    events.write_dataset(dataset, feedback)
    events.write_dataset(relaid, list(reversed(feedback)), files_per_kind=3)  # the same events, laid out otherwise
    first = create_snapshot(str(dataset), str(tmp_path / "one"), _config())
    second = create_snapshot(str(relaid), str(tmp_path / "two"), _config())
    assert Path(second.uri).name == Path(first.uri).name
    for shard in sorted(Path(first.uri, "codes").iterdir()):
        assert Path(second.uri, "codes", shard.name).read_bytes() == shard.read_bytes()

    def no_fetch(uri: str) -> np.ndarray:
        raise AssertionError(f"fetched {uri} for a snapshot that already exists")

    monkeypatch.setattr(codes, "read_codes_file", no_fetch)
    again = create_snapshot(str(dataset), str(tmp_path / "one"), _config())
    assert (again.uri, again.created) == (first.uri, False)
    other = create_snapshot(str(dataset), str(tmp_path / "one"), _config(consolidate_codes=False))
    assert other.uri != first.uri and not Path(other.uri, "codes").exists()  # the setting is in the hash


def test_a_missing_codes_file_is_refused_naming_it_and_nothing_is_committed(tmp_path):
    dataset, _ = _dataset_with_codes(tmp_path)
    gone = tmp_path / "clips" / "c3-b.codes.npy"
    gone.unlink()
    with pytest.raises(InvalidRequest, match=f"the codes file {gone} is missing"):
        create_snapshot(str(dataset), str(tmp_path / "out"), _config())
    assert not list((tmp_path / "out").rglob("manifest.json"))  # no folder claims to be a complete snapshot


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (np.full((4, 10), 40_000, dtype=np.int64), "holds the code 40000, which does not fit int16"),
        (np.full((4, 10), -40_000, dtype=np.int64), "holds the code -40000, which does not fit int16"),
        (np.zeros((4, 10), dtype=np.float32), "must hold integer codes"),
        (np.zeros((4, 0), dtype=np.int64), "with T > 0"),
        (np.zeros(10, dtype=np.int64), r"must hold integer codes \[K, T\]"),
    ],
)
def test_codes_that_int16_cannot_hold_faithfully_are_refused_with_a_sentence(tmp_path, grid, message):
    path = tmp_path / "clip.codes.npy"
    np.save(path, grid)
    with pytest.raises(InvalidRequest, match=message) as raised:
        read_codes_file(str(path))
    assert str(path) in str(raised.value)


def test_a_clip_without_a_codes_uri_is_refused_with_the_way_out(tmp_path):
    clips = pa.table({"clip_id": ["c1"], "codes_uri": [""]})
    with pytest.raises(InvalidRequest, match="clip c1 has no codes_uri.*--consolidate-codes false"):
        pack_codes(clips, str(tmp_path / "snapshot"))


def test_fetches_from_a_store_run_in_parallel_but_never_more_than_the_threads_allowed(
    tmp_path, monkeypatch, memory_filesystem
):
    uris = []
    for i in range(40):
        uris.append(f"memory://clips/{i:02d}.codes.npy")
        buffer = io.BytesIO()
        np.save(buffer, np.full((4, 5), i, dtype=np.int64))
        memory_filesystem.pipe(uris[-1], buffer.getvalue())
    in_flight, peak, lock = 0, 0, threading.Lock()
    real = codes.read_codes_file

    def slow_read(uri: str) -> np.ndarray:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.01)  # an object store's latency: what parallel GETs hide
        with lock:
            in_flight -= 1
        return real(uri)

    monkeypatch.setattr(codes, "read_codes_file", slow_read)
    clips = pa.table({"clip_id": [f"{i:02d}" for i in range(40)], "codes_uri": uris})
    pack_codes(clips, str(tmp_path / "snapshot"), threads=4)
    assert 2 <= peak <= 4
    packed = PackedCodes.open(str(tmp_path / "snapshot"))
    assert [int(packed.grid(i)[0, 0]) for i in range(40)] == list(range(40))  # in order despite the threads


def test_shards_on_an_object_store_are_copied_locally_and_the_codes_pickle_without_open_files(
    tmp_path, memory_filesystem
):
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.int64).reshape(3, 4))
    np.save(tmp_path / "b.npy", np.arange(6, dtype=np.int64).reshape(3, 2))
    clips = pa.table({"clip_id": ["a", "b"], "codes_uri": [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]})
    pack_codes(clips, "memory://bucket/snapshot", shard_bytes=24)  # 12 codes a shard: one clip each
    packed = PackedCodes.open("memory://bucket/snapshot", cache_dir=str(tmp_path / "cache"))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["codes-00000.npy", "codes-00001.npy"]
    np.testing.assert_array_equal(packed.grid(1), np.arange(6).reshape(3, 2))
    copy = pickle.loads(pickle.dumps(packed))  # as a DataLoader worker started by spawn receives it
    assert copy._files == {} and packed._files  # the descriptor stays behind; the copy opens the shard itself
    np.testing.assert_array_equal(copy.grid(0), np.arange(12).reshape(3, 4))
    with pytest.raises(InvalidRequest, match="clip c is not among the snapshot's packed codes"):
        packed.rows_of(["a", "c"])
