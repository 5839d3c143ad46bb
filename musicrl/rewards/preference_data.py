"""Read a snapshot's preference pairs and their clips' codes for training the preference reward.

A snapshot (:mod:`musicrl.data.snapshot`) holds ``preferences_{train,validation,test}.parquet``: one row per answer,
with ``choice`` (a|b|tie|none), ``label`` (1.0 A won, 0.0 B won, 0.5 tie, null none) and the URIs of both
clips' codes (NumPy ``.npy``, int64 [K, T]). Answers of ``none`` order nothing and are always dropped;
ties either stay as soft targets (0.5) or are dropped.
"""

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
from tqdm import tqdm

from musicrl.data.dataset import join_url, read_snapshot_table
from musicrl.errors import InvalidRequest
from musicrl.rewards.base import check_vocabulary
from musicrl.rewards.preference_config import TIES


logger = logging.getLogger(__name__)

PAIR_COLUMNS = (
    "prompt",
    "choice",
    "label",
    "clip_a_codes_uri",
    "clip_b_codes_uri",
    "clip_a_audio_uri",
    "clip_b_audio_uri",
)


@dataclass(frozen=True, slots=True)
class PreferencePairs:
    """Pairs of one split, ready to train on.

    Attributes:
        split: The snapshot split they come from (``train``, ``validation`` or ``test``).
        prompts: The prompt of each pair.
        codes_a: Codes URI of clip A of each pair.
        codes_b: Codes URI of clip B of each pair.
        audio_a: Audio (WAV) URI of clip A of each pair.
        audio_b: Audio (WAV) URI of clip B of each pair.
        labels: P(A ≻ B) targets, float32 [N]: 1, 0, or 0.5 for a tie.
        dropped_none: Rows dropped because the listener chose neither clip.
        dropped_ties: Rows dropped because they were ties (``ties="drop"``).
    """

    split: str
    prompts: list[str]
    codes_a: list[str]
    codes_b: list[str]
    audio_a: list[str]
    audio_b: list[str]
    labels: np.ndarray
    dropped_none: int = 0
    dropped_ties: int = 0

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def decisive(self) -> int:
        """Pairs with a winner (label 0 or 1)."""
        return int(np.sum(self.labels != 0.5))


def read_pairs(snapshot_url: str, split: str, *, ties: str) -> PreferencePairs:
    """Read ``preferences_<split>.parquet`` of a snapshot, dropping ``none`` answers (and ties if asked).

    Args:
        snapshot_url: The snapshot folder (local path or fsspec URL).
        split: ``train``, ``validation`` or ``test``.
        ties: ``soft`` keeps ties as label 0.5; ``drop`` drops them.

    Returns:
        The usable pairs.

    Raises:
        InvalidRequest: The file is missing or lacks a column, or ``ties`` is unknown.
    """
    if ties not in TIES:
        raise InvalidRequest(f"ties must be one of {TIES}, got {ties!r}")
    url = join_url(snapshot_url, f"preferences_{split}.parquet")
    rows = read_snapshot_table(snapshot_url, f"preferences_{split}", PAIR_COLUMNS).to_pylist()
    keep_none = [r for r in rows if r["choice"] != "none" and r["label"] is not None]
    is_tie = [r["label"] == 0.5 for r in keep_none]
    kept = [r for r, tie in zip(keep_none, is_tie, strict=True) if ties == "soft" or not tie]
    pairs = PreferencePairs(
        split=split,
        prompts=[r["prompt"] for r in kept],
        codes_a=[r["clip_a_codes_uri"] for r in kept],
        codes_b=[r["clip_b_codes_uri"] for r in kept],
        audio_a=[r["clip_a_audio_uri"] for r in kept],
        audio_b=[r["clip_b_audio_uri"] for r in kept],
        labels=np.asarray([r["label"] for r in kept], dtype=np.float32),
        dropped_none=len(rows) - len(keep_none),
        dropped_ties=len(keep_none) - len(kept),
    )
    _check_labels(pairs.labels, url)
    logger.info(
        "%s: %d pairs kept (%d none and %d ties dropped)", url, len(pairs), pairs.dropped_none, pairs.dropped_ties
    )
    return pairs


def _check_labels(labels: np.ndarray, url: str) -> None:
    bad = labels[~np.isin(labels, (0.0, 0.5, 1.0))]
    if bad.size:
        raise InvalidRequest(f"{url} holds labels other than 0, 0.5 and 1, e.g. {float(bad[0])}")


def load_codes(uris: Sequence[str], *, num_codebooks: int, vocab_size: int, max_frames: int) -> dict[str, np.ndarray]:
    """Read every distinct codes file once, checked against the policy's vocabulary.

    Args:
        uris: Codes URIs (duplicates are read once).
        num_codebooks: K of the policy.
        vocab_size: V of the policy.
        max_frames: Longer clips are cut to their first ``max_frames`` frames.

    Returns:
        URI → int64 [K, T] (T ≤ ``max_frames``).

    Raises:
        InvalidRequest: A file is missing or unreadable, or holds codes the policy cannot read.
    """
    codes: dict[str, np.ndarray] = {}
    for uri in tqdm(sorted(set(uris)), desc="reading codes", unit="clip"):
        grid = _read_npy(uri)
        if grid.ndim != 2 or grid.shape[1] == 0 or not np.issubdtype(grid.dtype, np.integer):
            raise InvalidRequest(f"{uri} must hold integer codes [K, T] with T > 0, got {grid.dtype} {grid.shape}")
        try:
            check_vocabulary([grid], num_codebooks, vocab_size)
        except InvalidRequest as e:
            raise InvalidRequest(f"{uri} does not fit the policy: {e}") from e
        codes[uri] = grid[:, :max_frames].astype(np.int64)
    return codes


def _read_npy(uri: str) -> np.ndarray:
    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise InvalidRequest(f"the codes file {uri} is missing; was the clip store moved or pruned?") from e
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise InvalidRequest(f"{uri} is not a NumPy .npy file of codes: {e}") from e
