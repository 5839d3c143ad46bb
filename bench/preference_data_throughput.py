"""Pairs per second and peak memory of the preference trainer's data path, packed shards against per-clip files.

For each size (10k and 100k pairs by default, two fresh clips per pair as the platform serves them, 4 × 250
frames = 5 s each) one clip store of int64 ``.npy`` files is written, then each path runs in a fresh Python
process and delivers every pair once, in shuffled batches of 64, as int64 tensors:

* **per-file** (before this change): read the pairs, read every distinct clip's file once, one after the
  other, into an int64 dict, then assemble the batches from it. "At its best": the page cache is warm
  (every file was read just before) and the faster of two runs counts;
* **packed** (now): the snapshot's one-time packing into int16 shards is timed on its own (from this local
  store it reads in order; from an object store it keeps 16 GETs in flight); the trainer then reads the
  pairs and the index and streams the batches through a DataLoader, with 0 workers (all memory in one
  process, the figure to compare) and with 2.

Peak memory is the process's peak resident set (the kernel's high-water mark, reset after the imports)
less its resident set then, and the peak growth of its anonymous part (what the kernel cannot drop). The
last line divides the growth between the smallest and the largest size by the pairs added: the per-file
path pays a pair's codes, the packed one only its ids, label and index rows.

    python bench/preference_data_throughput.py [--pairs 10000 100000] [--frames 250]
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH = 64


class _Memory:
    """The resident set's growth from now: its peak (the kernel's high-water mark, reset here) and its
    anonymous part's peak, sampled every 2 ms from /proc/self/status."""

    def __init__(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: imports' transient peaks do not count
        status = self._status()
        self.start_kb, self.start_anon_kb = status["VmRSS"], status["RssAnon"]
        self.peak_anon_kb = self.start_anon_kb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def _status() -> dict[str, int]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon"):
                fields[name] = int(value.split()[0])
        return fields

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak_anon_kb = max(self.peak_anon_kb, self._status()["RssAnon"])

    def result(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        status = self._status()
        self.peak_anon_kb = max(self.peak_anon_kb, status["RssAnon"])
        return {
            "rss_delta_mb": (status["VmHWM"] - self.start_kb) / 1024,
            "anon_peak_mb": (self.peak_anon_kb - self.start_anon_kb) / 1024,
        }


def _batches(pairs: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(pairs)
    return [order[i : i + BATCH] for i in range(0, pairs, BATCH)]


def child_per_file(snapshot: str) -> dict[str, float]:
    """The trainer's data path before packing: per-clip reads into an int64 dict, then batches from it."""
    import fsspec
    import pyarrow.parquet as pq
    import torch

    memory = _Memory()  # after the imports: what the data path itself holds
    started = time.perf_counter()
    columns = ["prompt", "choice", "label", "clip_a_codes_uri", "clip_b_codes_uri"]
    rows = pq.read_table(f"{snapshot}/preferences_train.parquet", columns=columns).to_pylist()
    kept = [r for r in rows if r["choice"] != "none" and r["label"] is not None]
    codes = {}
    for uri in sorted({r[f"clip_{s}_codes_uri"] for r in kept for s in "ab"}):  # one GET at a time
        with fsspec.open(uri, "rb") as f:
            codes[uri] = np.load(io.BytesIO(f.read()), allow_pickle=False).astype(np.int64)
    loaded = time.perf_counter()
    streamed = 0
    for index in _batches(len(kept)):
        batch = [kept[i] for i in index]
        clips = [torch.as_tensor(codes[r[f"clip_{s}_codes_uri"]]) for s in "ab" for r in batch]
        streamed += len(clips) // 2
    done = time.perf_counter()
    return {"pairs": streamed, "load_s": loaded - started, "epoch_s": done - loaded, **memory.result()}


def child_packed(snapshot: str, workers: int) -> dict[str, float]:
    """The trainer's data path now: pairs and index in Arrow/NumPy, codes streamed from the shards."""
    from musicrl.rewards.preference_data import TRAIN_COLUMNS, pair_datasets, pair_loader, read_pairs

    memory = _Memory()  # after the imports: what the data path itself holds
    started = time.perf_counter()
    pairs = read_pairs(snapshot, "train", ties="soft", columns=TRAIN_COLUMNS)  # as the trainer reads them
    policy = {"num_codebooks": 4, "vocab_size": 2048, "cache_dir": snapshot}  # packed and local: no cache used
    dataset = pair_datasets(snapshot, [pairs], **policy)["train"]
    loaded = time.perf_counter()
    streamed = 0
    for batch in pair_loader(dataset, _batches(len(dataset)), num_workers=workers):
        streamed += len(batch.prompts)
    done = time.perf_counter()
    return {"pairs": streamed, "load_s": loaded - started, "epoch_s": done - loaded, **memory.result()}


def child_pack(snapshot: str) -> dict[str, float]:
    """The snapshot's one-time packing of the clips' codes from their files."""
    import pyarrow.parquet as pq

    from musicrl.data.codes import distinct_clips, pack_codes

    memory = _Memory()  # after the imports: what packing itself holds
    started = time.perf_counter()
    clips = distinct_clips([pq.read_table(f"{snapshot}/preferences_train.parquet")])
    packed = pack_codes(clips, snapshot)
    return {"clips": packed["clips"], "pack_s": time.perf_counter() - started, **memory.result()}


def _run(*argv: str) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", *argv], check=True, capture_output=True, env=env)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def _warm(snapshot: Path) -> None:
    for path in (snapshot.parent / "clips").rglob("*.npy"):
        path.read_bytes()


def bench(pairs: int, frames: int, root: Path) -> dict[str, float]:
    from tests.utils.synthetic import many_pairs_snapshot

    started = time.perf_counter()
    snapshot = Path(many_pairs_snapshot(root, pairs, frames=frames, files=True, pack=False))
    wrote_s = time.perf_counter() - started
    print(f"\n{pairs} pairs, {2 * pairs} clips of 4 × {frames} frames (written in {wrote_s:.0f} s)")
    _warm(snapshot)
    old = min((_run("per-file", str(snapshot)) for _ in range(2)), key=lambda r: r["load_s"] + r["epoch_s"])
    pack = _run("pack", str(snapshot))
    new = {workers: _run("packed", str(snapshot), str(workers)) for workers in (0, 2)}
    old_rate = old["pairs"] / (old["load_s"] + old["epoch_s"])
    print(
        f"  per-file, best of 2: read {old['load_s']:6.1f} s + epoch {old['epoch_s']:5.1f} s = "
        f"{old_rate:8.0f} pairs/s; "
        f"peak RSS +{old['rss_delta_mb']:7.0f} MB (anonymous +{old['anon_peak_mb']:7.0f} MB)"
    )
    print(
        f"  packing at snapshot time (once): {pack['pack_s']:6.1f} s for {pack['clips']} clips "
        f"({pack['clips'] / pack['pack_s']:.0f} clips/s), peak RSS +{pack['rss_delta_mb']:.0f} MB"
    )
    for workers, result in new.items():
        rate = result["pairs"] / (result["load_s"] + result["epoch_s"])
        print(
            f"  packed, {workers} workers: open {result['load_s']:6.1f} s + epoch {result['epoch_s']:5.1f} s = "
            f"{rate:8.0f} pairs/s ({rate / old_rate:5.2f}x); peak RSS +{result['rss_delta_mb']:5.0f} MB "
            f"({result['rss_delta_mb'] / old['rss_delta_mb']:.3f}x), anonymous +{result['anon_peak_mb']:5.0f} MB"
            + (" (this process; the workers' own memory not counted)" if workers else "")
        )
    steady, from_dict = new[0]["pairs"] / new[0]["epoch_s"], old["pairs"] / old["epoch_s"]
    print(f"  epoch alone: packed {steady:.0f} pairs/s, per-file from its dict {from_dict:.0f} pairs/s")
    return {"per-file": old["rss_delta_mb"], "packed": new[0]["rss_delta_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, snapshot, *rest = args.child
        runners = {"per-file": child_per_file, "pack": child_pack}
        result = child_packed(snapshot, int(rest[0])) if kind == "packed" else runners[kind](snapshot)
        print(json.dumps(result))
        return
    print(f"batches of {BATCH} shuffled pairs; int64 tensors out; every path in a fresh process")
    peaks = {}
    for pairs in args.pairs:
        with tempfile.TemporaryDirectory(prefix="musicrl-bench-") as tmp:
            peaks[pairs] = bench(pairs, args.frames, Path(tmp))
    if len(peaks) > 1:  # what each added pair costs: the codes themselves, or only their ids, label and index
        (low, first), (high, last) = min(peaks.items()), max(peaks.items())
        growth = {path: (last[path] - first[path]) * 2**20 / (high - low) for path in first}
        codes_kb = 2 * 4 * args.frames * 8 / 1024
        print(
            f"\npeak RSS per added pair, {low} to {high} pairs: per-file {growth['per-file'] / 1024:.2f} KB "
            f"(a pair's codes: {codes_kb:.1f} KB of int64), packed {growth['packed'] / 1024:.2f} KB "
            f"({growth['packed'] / growth['per-file']:.3f}x)"
        )


if __name__ == "__main__":
    main()
