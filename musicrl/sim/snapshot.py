"""Write simulated votes on a clip pool as a preference snapshot the platform's trainers read unchanged.

The snapshot has the layout :func:`musicrl.data.snapshot.create_snapshot` writes: one
``preferences_<split>.parquet`` per split with :data:`~musicrl.data.snapshot.PREFERENCES_SCHEMA`, and the
clips' codes packed into int16 shards (``codes/``). Prompts are split with the snapshot's own prompt hash
(:func:`~musicrl.data.snapshot.split_of`), so models are chosen on validation prompts and judged on test
prompts that no training pair has. The clips themselves (codes and WAV) go once per pool to a clip store.
"""

import datetime
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from musicrl.data.clips import ClipStore
from musicrl.data.codes import distinct_clips, write_packed
from musicrl.data.snapshot import PREFERENCES_SCHEMA, split_of
from musicrl.data.snapshot_config import SPLITS, SnapshotConfig
from musicrl.models.audio import encode_wav
from musicrl.sim.listener import Votes
from musicrl.sim.pool import ClipPool


LABELS = {"a": 1.0, "b": 0.0, "tie": 0.5}
EPOCH = datetime.datetime(2024, 2, 1, tzinfo=datetime.UTC)  # votes are stamped one second apart from here


def clip_ids(pool: ClipPool, pool_key: str) -> list[str]:
    """A clip-store id for every clip of the pool: its key and its index, 32 hex digits."""
    return [f"{int(pool_key, 16) % 2**64:016x}{index:016x}" for index in range(len(pool))]


def write_clip_store(pool: ClipPool, ids: list[str], url: str) -> ClipStore:
    """Put every clip's codes and WAV into the store at ``url`` (clips already there are kept)."""
    store = ClipStore(url)
    for index, clip_id in enumerate(ids):
        if not store.exists(clip_id):
            store.put_codes(clip_id, pool.codes[index])
            store.put_wav(clip_id, encode_wav(pool.audio[index], pool.sample_rate))
    return store


def prompt_splits(pool: ClipPool, config: SnapshotConfig) -> dict[str, np.ndarray]:
    """The prompt indices of each split, by the snapshot's prompt hash: int64 arrays by split name."""
    names = np.array([split_of(prompt, config) for prompt in pool.prompts])
    return {split: np.flatnonzero(names == split) for split in SPLITS}


def within_prompt_pairs(pool: ClipPool, prompts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every pair of clips of each of ``prompts``, in random order and random display order: int64 [M, 2].

    A prefix of the result is a random sample of the pairs, so nested prefixes give nested data sets.
    """
    pairs = []
    for prompt in prompts:
        clips = np.flatnonzero(pool.prompt_of == prompt)
        rows, cols = np.triu_indices(len(clips), k=1)
        pairs.append(np.stack([clips[rows], clips[cols]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    every = np.concatenate(pairs)[rng.permutation(sum(len(p) for p in pairs))]  # [M, 2]
    flip = rng.random(len(every)) < 0.5  # which clip is shown in slot A
    return np.where(flip[:, None], every[:, ::-1], every).astype(np.int64)


def write_snapshot(
    dest: str | Path,
    pool: ClipPool,
    store: ClipStore,
    ids: list[str],
    pairs: Mapping[str, np.ndarray],
    votes: Mapping[str, Votes],
    *,
    policy_uri: str,
) -> str:
    """Write the answers ``votes[split]`` to ``pairs[split]`` ([N, 2] clip indices) as a snapshot at ``dest``.

    Args:
        dest: The snapshot folder (local).
        pool: The clips.
        store: The clip store holding them (:func:`write_clip_store`).
        ids: Their clip ids.
        pairs: Clip indices (A, B) of each split's pairs, int64 [N, 2].
        votes: The answers to them, one per pair.
        policy_uri: The policy that made the clips, recorded as both clips' policy.

    Returns:
        ``dest``, readable by :func:`musicrl.rewards.preference_data.read_pairs`.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    duration_ms = round(1000 * pool.audio.shape[-1] / pool.sample_rate)
    tables, counter = [], 0
    for split in SPLITS:
        index = pairs.get(split, np.zeros((0, 2), np.int64))
        answers = votes[split] if split in votes else Votes(np.array([], str), np.array([], np.int64), np.array([]))
        table = _split_table(pool, store, ids, index, answers, split, counter, policy_uri, duration_ms)
        pq.write_table(table, dest / f"preferences_{split}.parquet")
        tables.append(table)
        counter += len(index)
    clips = distinct_clips(tables)
    row_of = {clip_id: i for i, clip_id in enumerate(ids)}
    write_packed(clips, (pool.codes[row_of[c]] for c in clips["clip_id"].to_pylist()), str(dest))
    return str(dest)


def _split_table(
    pool: ClipPool,
    store: ClipStore,
    ids: list[str],
    index: np.ndarray,
    votes: Votes,
    split: str,
    start: int,
    policy_uri: str,
    duration_ms: int,
) -> pa.Table:
    n = len(index)
    numbers = range(start, start + n)
    a_ids, b_ids = [ids[i] for i in index[:, 0]], [ids[i] for i in index[:, 1]]
    choices = [str(c) for c in votes.choices]
    columns = {
        "preference_event_id": [uuid.UUID(int=2 * k + 1, version=4).hex for k in numbers],
        "comparison_id": [uuid.UUID(int=2 * k + 2, version=4).hex for k in numbers],
        "user_id": [f"listener-{int(u)}" for u in votes.users],
        "prompt": [pool.prompts[int(pool.prompt_of[i])] for i in index[:, 0]],
        "choice": choices,
        "label": [LABELS[c] for c in choices],
        "clip_a_id": a_ids,
        "clip_b_id": b_ids,
        "clip_a_audio_uri": [store.wav_uri(c) for c in a_ids],
        "clip_b_audio_uri": [store.wav_uri(c) for c in b_ids],
        "clip_a_codes_uri": [store.codes_uri(c) for c in a_ids],
        "clip_b_codes_uri": [store.codes_uri(c) for c in b_ids],
        "clip_a_policy_model_uri": [policy_uri] * n,
        "clip_a_policy_version": ["0"] * n,
        "clip_b_policy_model_uri": [policy_uri] * n,
        "clip_b_policy_version": ["0"] * n,
        "a_listened_ms": [duration_ms] * n,
        "b_listened_ms": [duration_ms] * n,
        "occurred_at": [EPOCH + datetime.timedelta(seconds=k) for k in numbers],
        "split": [split] * n,
    }
    return pa.table(columns, schema=PREFERENCES_SCHEMA)
