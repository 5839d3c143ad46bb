"""A synthetic preference snapshot whose answers follow a hidden, learnable score of the audio.

Clips come from the real generation path (``tiny://musicgen?seed=0`` through :class:`GenerationEngine`),
several per prompt with different seeds and temperatures. A hidden score of each clip's *audio* plays the
listener: for two clips of the same prompt, A wins with the Bradley–Terry probability
σ((s_A − s_B) / τ). The clips' codes and WAVs go to a :class:`ClipStore` and the answers to
``preferences_{train,validation,test}.parquet`` with the snapshot schema, split by prompt with the
snapshot's own hash, so a reward model trained on it is chosen and judged on prompts it has not seen.

The hidden score is **tonality**: minus the log spectral flatness (log of arithmetic over geometric mean
of the power spectrum), z-scored over the clips, so listeners prefer tonal clips to noise-like ones. With
the tiny model's random EnCodec, a clip that repeats codes decodes to a periodic, peaky spectrum and one
that keeps changing codes to noise, so tonality is a property of the code sequence a decoder can read.
Loudness (RMS) was tried first and is not: it varies by ~2% across clips and a ridge model on code counts
predicts it with r ≈ 0.2, against r ≈ 0.8 for flatness (r ≈ 0.77 from the codes' repeat rate alone).

What made the task learnable to >= 0.75 held-out accuracy: sampling temperatures from near-greedy (0.1)
to near-uniform (4.0), so clips of the same prompt differ in tonality (with 0.3–2.5 the model plateaued
at ~0.72), and τ = 0.15 (at τ = 0.3 even the true score only reaches ~0.84 on the noisy answers).
"""

import datetime
import functools
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from musicrl.config import SamplingParams
from musicrl.data.clips import ClipStore
from musicrl.data.codes import distinct_clips, pack_codes, write_packed
from musicrl.data.snapshot import PREFERENCES_SCHEMA, split_of
from musicrl.data.snapshot_config import SPLITS, SnapshotConfig
from musicrl.models.audio import encode_wav
from musicrl.models.engine import GenerationEngine, GenerationRequest
from tests.utils.tiny_models import TINY_MUSICGEN_URI


TEMPERATURES = (0.1, 0.4, 1.0, 2.0, 4.0)  # near-greedy (repetitive, tonal) to near-uniform (noisy): spreads the score
STYLES = ("ambient", "techno", "jazz trio", "orchestral", "lofi", "folk", "metal", "reggae")
MOODS = ("calm", "dark", "uplifting", "melancholic", "energetic")


@dataclass(frozen=True)
class SyntheticClip:
    """One generated clip and its hidden score (z-scored over the set)."""

    clip_id: str
    prompt: str
    codes: np.ndarray  # int64 [K, T]
    audio: np.ndarray  # float32 [S]
    sample_rate: int
    score: float


@dataclass(frozen=True)
class SyntheticSnapshot:
    """A snapshot folder written by :func:`write_preference_snapshot`.

    Attributes:
        url: The snapshot folder (``preferences_{train,validation,test}.parquet``).
        clip_store_url: The clip store holding the codes and WAVs.
        scores: Hidden score of every clip, by clip id.
        train_pairs: Rows in ``preferences_train.parquet`` (ties and none answers included).
        validation_pairs: Rows in ``preferences_validation.parquet``.
        test_pairs: Rows in ``preferences_test.parquet``.
    """

    url: str
    clip_store_url: str
    scores: dict[str, float]
    train_pairs: int
    validation_pairs: int
    test_pairs: int


def tonality(audio: np.ndarray) -> float:
    """Minus the log spectral flatness of ``audio`` [S], in nats: 0 for white noise, large for a pure tone."""
    power = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2 + 1e-12
    return float(np.log(np.mean(power)) - np.mean(np.log(power)))


def prompt_text(index: int) -> str:
    """The ``index``-th synthetic prompt; distinct for every index."""
    return f"{MOODS[index % len(MOODS)]} {STYLES[index // len(MOODS) % len(STYLES)]} piece number {index}"


@functools.lru_cache(maxsize=4)
def synthetic_clips(
    num_prompts: int,
    clips_per_prompt: int,
    duration_s: float,
    seed: int,
    temperatures: tuple[float, ...] = TEMPERATURES,
) -> tuple[SyntheticClip, ...]:
    """Generate ``clips_per_prompt`` clips for each of ``num_prompts`` prompts (cached per process).

    Clip j of a prompt uses temperature ``temperatures[j % len(temperatures)]`` and its own seed; guidance
    is off (scale 1) to halve the cost, which the hidden score does not need.
    """
    engine = GenerationEngine.from_uri(TINY_MUSICGEN_URI)
    requests = [
        GenerationRequest(
            prompt_text(p),
            SamplingParams(
                duration_s=duration_s, temperature=temperatures[j % len(temperatures)], top_k=0, guidance_scale=1.0
            ),
            seed=seed * 1_000_003 + p * clips_per_prompt + j,
        )
        for p in range(num_prompts)
        for j in range(clips_per_prompt)
    ]
    generated = engine.generate_batch(requests)
    raw = np.array([tonality(c.audio.numpy()) for c in generated])
    z = (raw - raw.mean()) / raw.std()
    rng = np.random.default_rng(seed)
    return tuple(
        SyntheticClip(
            clip_id=uuid.UUID(bytes=rng.bytes(16), version=4).hex,
            prompt=request.prompt,
            codes=clip.codes.numpy().astype(np.int64),
            audio=clip.audio.numpy(),
            sample_rate=clip.sample_rate,
            score=float(score),
        )
        for request, clip, score in zip(requests, generated, z, strict=True)
    )


def write_preference_snapshot(
    root: Path,
    *,
    num_prompts: int = 100,
    clips_per_prompt: int = 6,
    duration_s: float = 0.5,
    temperature_tau: float = 0.15,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    tie_fraction: float = 0.03,
    none_fraction: float = 0.03,
    temperatures: tuple[float, ...] = TEMPERATURES,
    seed: int = 0,
) -> SyntheticSnapshot:
    """Write clips and a preference snapshot under ``root`` (``root/clips``, ``root/snapshot``).

    Every pair of clips of a prompt is compared once (``clips_per_prompt`` choose 2 pairs per prompt), in a
    random display order. A wins with probability σ((s_A − s_B) / τ) on the z-scored hidden score; a small
    share of answers are turned into ties and 'none' answers, which the trainer must handle.

    Args:
        root: Folder to write under.
        num_prompts: Distinct prompts.
        clips_per_prompt: Clips generated per prompt.
        duration_s: Length of each clip.
        temperature_tau: τ of the Bradley–Terry noise, in standard deviations of the hidden score.
        validation_fraction: Share of prompts held out to choose the epoch (by the snapshot's prompt hash).
        test_fraction: Share of prompts held out to report on.
        tie_fraction: Share of answers replaced by ties.
        none_fraction: Share of answers replaced by 'none'.
        temperatures: Sampling temperatures, cycled over each prompt's clips.
        seed: Seeds generation and the answers.

    Returns:
        Where the snapshot is, the hidden scores and the row counts.
    """
    clips = synthetic_clips(num_prompts, clips_per_prompt, duration_s, seed, tuple(temperatures))
    store = ClipStore(f"file://{root / 'clips'}")
    for clip in clips:
        store.put_codes(clip.clip_id, clip.codes)
        store.put_wav(clip.clip_id, encode_wav(clip.audio, clip.sample_rate))
    rng = np.random.default_rng(seed + 1)
    config = SnapshotConfig(validation_fraction=validation_fraction, test_fraction=test_fraction)
    rows = []
    for p in range(num_prompts):
        group = clips[p * clips_per_prompt : (p + 1) * clips_per_prompt]
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                a, b = (group[i], group[j]) if rng.random() < 0.5 else (group[j], group[i])
                choice = _answer(a.score - b.score, temperature_tau, tie_fraction, none_fraction, rng)
                rows.append(_row(a, b, choice, store, split_of(a.prompt, config), len(rows)))
    snapshot = root / "snapshot"
    counts = write_pairs(snapshot, rows)
    return SyntheticSnapshot(
        url=str(snapshot),
        clip_store_url=store.url,
        scores={c.clip_id: c.score for c in clips},
        train_pairs=counts["train"],
        validation_pairs=counts["validation"],
        test_pairs=counts["test"],
    )


def _answer(delta: float, tau: float, tie_fraction: float, none_fraction: float, rng: np.random.Generator) -> str:
    draw = rng.random()
    if draw < none_fraction:
        return "none"
    if draw < none_fraction + tie_fraction:
        return "tie"
    return "a" if rng.random() < 1.0 / (1.0 + np.exp(-delta / tau)) else "b"


LABELS = {"a": 1.0, "b": 0.0, "tie": 0.5, "none": None}


def _row(a: SyntheticClip, b: SyntheticClip, choice: str, store: ClipStore, split: str, n: int) -> dict:
    duration_ms = round(1000 * a.audio.shape[-1] / a.sample_rate)
    occurred = datetime.datetime(2024, 2, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=n)
    return {
        "preference_event_id": uuid.UUID(int=2 * n + 1, version=4).hex,
        "comparison_id": uuid.UUID(int=2 * n + 2, version=4).hex,
        "user_id": f"user-{n % 17}",
        "prompt": a.prompt,
        "choice": choice,
        "label": LABELS[choice],
        "clip_a_id": a.clip_id,
        "clip_b_id": b.clip_id,
        "clip_a_audio_uri": store.wav_uri(a.clip_id),
        "clip_b_audio_uri": store.wav_uri(b.clip_id),
        "clip_a_codes_uri": store.codes_uri(a.clip_id),
        "clip_b_codes_uri": store.codes_uri(b.clip_id),
        "clip_a_policy_model_uri": TINY_MUSICGEN_URI,
        "clip_a_policy_version": "0",
        "clip_b_policy_model_uri": TINY_MUSICGEN_URI,
        "clip_b_policy_version": "0",
        "a_listened_ms": duration_ms,
        "b_listened_ms": duration_ms,
        "occurred_at": occurred,
        "split": split,
    }


def write_pairs(snapshot: Path, rows: list[dict], *, pack: bool = True) -> dict[str, int]:
    """Write rows (dicts with every :data:`PREFERENCES_SCHEMA` column) as the snapshot's split files.

    With ``pack`` the clips' codes are packed into the snapshot as :func:`create_snapshot` packs them;
    without, the trainer packs them itself (a snapshot taken with ``consolidate_codes`` false).

    Returns:
        Rows written per split.
    """
    snapshot.mkdir(parents=True, exist_ok=True)
    counts, tables = {}, []
    for split in SPLITS:
        part = [r for r in rows if r["split"] == split]
        tables.append(pa.Table.from_pylist(part, schema=PREFERENCES_SCHEMA))
        pq.write_table(tables[-1], snapshot / f"preferences_{split}.parquet")
        counts[split] = len(part)
    if pack:
        pack_codes(distinct_clips(tables), str(snapshot))
    return counts


def read_pairs_table(snapshot: str | Path, split: str) -> list[dict]:
    """The rows of one split of a snapshot, as dicts."""
    return pq.read_table(Path(snapshot) / f"preferences_{split}.parquet").to_pylist()


def with_shuffled_labels(
    snapshot: SyntheticSnapshot, dest: Path, *, seed: int = 0, splits: tuple[str, ...] = SPLITS
) -> str:
    """A copy of ``snapshot`` under ``dest`` whose answers are permuted across the pairs of each of ``splits``.

    Returns:
        The new snapshot folder.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for split in SPLITS:
        table = read_pairs_table(snapshot.url, split)
        permutation = rng.permutation(len(table)) if split in splits else np.arange(len(table))
        rows += [
            dict(row, choice=table[k]["choice"], label=table[k]["label"])
            for row, k in zip(table, permutation, strict=True)
        ]
    write_pairs(dest, rows)
    return str(dest)


def random_codes_snapshot(
    root: Path,
    *,
    train_pairs: int = 24,
    validation_pairs: int = 8,
    test_pairs: int = 8,
    frames: int = 10,
    num_codebooks: int = 4,
    vocab_size: int = 128,
    choices: tuple[str, ...] = ("a", "b"),
    seed: int = 0,
    pack: bool = True,
    separable: bool = False,
) -> SyntheticSnapshot:
    """A small snapshot of random clips (uniform codes, noise audio) and answers cycling through ``choices``.

    No model runs: for fast tests of the training plumbing (errors, files, save and load), not of learning.
    Each pair has its own prompt; the first ``train_pairs`` are ``train``, then ``validation``, then ``test``.
    ``pack`` packs the codes into the snapshot (see :func:`write_pairs`). ``separable`` draws clip A's codes
    from the lower half of the vocabulary and B's from the upper half, so "A wins" is learnable at once.
    """
    rng = np.random.default_rng(seed)
    store = ClipStore(f"file://{root / 'clips'}")
    sample_rate = 32_000
    rows = []
    for n in range(train_pairs + validation_pairs + test_pairs):
        prompt = prompt_text(n)
        pair = []
        for side in "ab":
            codes = rng.integers(0, vocab_size, size=(num_codebooks, frames), dtype=np.int64)
            if separable:
                codes = codes // 2 + (0 if side == "a" else vocab_size // 2)
            clip = SyntheticClip(
                clip_id=uuid.UUID(bytes=rng.bytes(16), version=4).hex,
                prompt=prompt,
                codes=codes,
                audio=(rng.standard_normal(frames * 640) * rng.uniform(0.05, 0.5)).astype(np.float32),
                sample_rate=sample_rate,
                score=0.0,
            )
            store.put_codes(clip.clip_id, clip.codes)
            store.put_wav(clip.clip_id, encode_wav(clip.audio, sample_rate))
            pair.append(clip)
        split = "train" if n < train_pairs else "validation" if n < train_pairs + validation_pairs else "test"
        rows.append(_row(pair[0], pair[1], choices[n % len(choices)], store, split, n))
    counts = write_pairs(root / "snapshot", rows, pack=pack)
    return SyntheticSnapshot(
        str(root / "snapshot"), store.url, {}, counts["train"], counts["validation"], counts["test"]
    )


def clip_codes(clip_id: str, *, frames: int, num_codebooks: int = 4, vocab_size: int = 2048) -> np.ndarray:
    """The codes of a :func:`many_pairs_snapshot` clip, int64 [K, frames], a function of its id alone."""
    return np.random.default_rng(int(clip_id[:15], 16)).integers(0, vocab_size, (num_codebooks, frames))


def many_pairs_snapshot(
    root: Path,
    pairs: int,
    *,
    frames: int = 50,
    num_codebooks: int = 4,
    files: bool = False,
    pack: bool = True,
    seed: int = 0,
) -> str:
    """A training split of ``pairs`` pairs of fresh clips (two per pair, as the platform serves them), packed.

    Built column by column and packed straight from :func:`clip_codes`, so 100k pairs take seconds; no model
    runs and no audio exists. With ``files`` each clip's codes are also written to the clip store as the
    gateway writes them (int64 ``.npy``), for the per-file reader to be compared with; without ``pack`` the
    snapshot has no packed codes (pack them from those files, as a snapshot does).

    Returns:
        The snapshot folder (``preferences_train.parquet`` with every pair, empty validation and test).
    """
    rng = np.random.default_rng(seed)
    store = ClipStore(f"file://{root / 'clips'}")
    ids = [uuid.UUID(bytes=rng.bytes(16), version=4).hex for _ in range(2 * pairs)]
    clip_a, clip_b = ids[0::2], ids[1::2]
    if files:
        for clip_id in ids:
            store.put_codes(clip_id, clip_codes(clip_id, frames=frames, num_codebooks=num_codebooks))
    choices = np.where(rng.random(pairs) < 0.5, "a", "b")
    columns = {
        "preference_event_id": [uuid.UUID(int=n + 1, version=4).hex for n in range(pairs)],
        "comparison_id": [uuid.UUID(int=pairs + n + 1, version=4).hex for n in range(pairs)],
        "user_id": [f"user-{n % 17}" for n in range(pairs)],
        "prompt": [prompt_text(n // 10) for n in range(pairs)],  # ten pairs per prompt
        "choice": choices.tolist(),
        "label": np.where(choices == "a", 1.0, 0.0),
        "clip_a_id": clip_a,
        "clip_b_id": clip_b,
        "clip_a_audio_uri": [store.wav_uri(c) for c in clip_a],
        "clip_b_audio_uri": [store.wav_uri(c) for c in clip_b],
        "clip_a_codes_uri": [store.codes_uri(c) for c in clip_a],
        "clip_b_codes_uri": [store.codes_uri(c) for c in clip_b],
        "split": ["train"] * pairs,
    }
    table = pa.table(
        {
            name: columns.get(name, pa.nulls(pairs, PREFERENCES_SCHEMA.field(name).type))
            for name in PREFERENCES_SCHEMA.names
        },
        schema=PREFERENCES_SCHEMA,
    )
    snapshot = root / "snapshot"
    snapshot.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        pq.write_table(table if split == "train" else table.slice(0, 0), snapshot / f"preferences_{split}.parquet")
    if not pack:
        return str(snapshot)
    clips = distinct_clips([table])
    grids = (clip_codes(c, frames=frames, num_codebooks=num_codebooks) for c in clips["clip_id"].to_pylist())
    write_packed(clips, grids, str(snapshot))
    return str(snapshot)
