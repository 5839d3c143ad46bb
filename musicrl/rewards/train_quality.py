"""Train the quality reward's MOS head on a snapshot's ratings.

Each rated clip is read once from its ``audio_uri`` and embedded once with the frozen CLAP; the head then
trains for many epochs on the cached embeddings, which takes seconds. Every epoch is judged on the
validation split's clips (other prompts, by the snapshot's split) by RMSE against the ratings and by
Spearman rank correlation against each clip's mean rating: a reward only has to rank clips well, so
Spearman is the number to gate on. The last epoch is kept, and the ``test`` split, whose prompts neither
training nor the validation curves have seen, is scored once on it: those are the figures to report.
``metrics.jsonl`` and a plot of the curves are written next to the checkpoint.
"""

import contextlib
import io
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import spearmanr
from tqdm import tqdm

from musicrl.data.dataset import join_url, read_snapshot_table, write_durably
from musicrl.data.snapshot_config import SPLITS
from musicrl.errors import InvalidRequest
from musicrl.models.audio import decode_wav
from musicrl.models.clap_loading import ClapBundle, load_clap
from musicrl.models.tiny import seeded_init_
from musicrl.rewards.clap_embedding import mean_by_group
from musicrl.rewards.quality import MAX_MOS, MIN_MOS, QualityHead, QualityModel, embed_windows, save_quality
from musicrl.rewards.quality_config import QualityConfig, QualityTrainConfig


logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curves.png"
RATING_COLUMNS = ("clip_id", "score", "audio_uri")
CLIPS_PER_READ = 32  # clips held in memory at once while embedding: 32 × 30 s at 48 kHz is ~180 MB


@dataclass(frozen=True, slots=True)
class QualityTrainResult:
    """What a training run produced.

    Attributes:
        uri: The checkpoint folder (``config.out_url``), loadable with ``load_quality``.
        metrics: The last epoch's metrics (``train/loss``, ``train/rmse``, ``validation/spearman``, ...) and
            the test metrics of the saved model (``test/rmse``, ``test/spearman``).
        history: One metrics record per epoch, as in ``metrics.jsonl`` (train and validation; no test).
        train_ratings: Training ratings used.
        validation_ratings: Validation ratings used.
        test_ratings: Test ratings used.
        train_clips: Distinct training clips.
        validation_clips: Distinct validation clips.
        test_clips: Distinct test clips.
        model: The trained model, in memory (the same as ``load_quality(uri)``).
    """

    uri: str
    metrics: Mapping[str, float]
    history: list[dict[str, Any]] = field(repr=False)  # one record per epoch: too long for a log line
    train_ratings: int
    validation_ratings: int
    test_ratings: int
    train_clips: int
    validation_clips: int
    test_clips: int
    model: QualityModel = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Split:
    """One split's ratings and its clips' cached window embeddings."""

    name: str
    windows: torch.Tensor  # float32 [W, D]
    clip_of_window: torch.Tensor  # int64 [W]
    clip_of_rating: torch.Tensor  # int64 [R]
    scores: torch.Tensor  # float32 [R]
    num_clips: int

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training rows: every window of a rated clip paired with that rating, float32 [N, D] and [N]."""
        windows_of_clip: list[list[int]] = [[] for _ in range(self.num_clips)]
        for window, clip in enumerate(self.clip_of_window.tolist()):
            windows_of_clip[clip].append(window)
        pairs = [(r, w) for r, clip in enumerate(self.clip_of_rating.tolist()) for w in windows_of_clip[clip]]
        rating, window = torch.tensor(pairs, dtype=torch.int64).T  # [N], [N]
        return self.windows[window], self.scores[rating]


def train_quality(config: QualityTrainConfig) -> QualityTrainResult:
    """Fit the MOS head on ``config.snapshot_url``'s ratings and save it under ``config.out_url``.

    Args:
        config: Data, model, optimisation and output settings.

    Returns:
        Where the checkpoint is, and its metrics.

    Raises:
        InvalidRequest: The snapshot has no ratings files, too few ratings, fewer than two validation or test
            clips, or a clip whose audio is missing or unreadable.
        ModelNotFound: No CLAP at ``config.embedder_uri``.
    """
    tables = {split: read_ratings(config.snapshot_url, split) for split in SPLITS}
    _check_counts(tables, config)
    embedder = load_clap(config.embedder_uri, device=config.device)
    splits = {name: _embed_split(name, table, embedder, config.scoring()) for name, table in tables.items()}
    model = QualityModel(embedder, _initial_head(splits["train"], embedder, config), config.scoring())
    with _intra_op_threads(1):
        history = _fit(model, {name: splits[name] for name in ("train", "validation")}, config)
        tested = _evaluate(model, splits["test"])  # once, on the kept (last) model: nothing chose on it
    _write_history(config.out_url, history, tested)
    final = {k: v for k, v in {**history[-1], **tested}.items() if k != "epoch" and v is not None}
    counts = {f"{name}_{what}": n for name in splits for what, n in _counts(splits[name]).items()}
    save_quality(model, config.out_url, metrics=final, training_run=config.training_run or None, extra=counts)
    logger.info(
        "quality model: test RMSE %.3f, test Spearman %.3f", final["test/rmse"], final.get("test/spearman", math.nan)
    )
    return QualityTrainResult(
        uri=config.out_url,
        metrics=final,
        history=history,
        train_ratings=counts["train_ratings"],
        validation_ratings=counts["validation_ratings"],
        test_ratings=counts["test_ratings"],
        train_clips=counts["train_clips"],
        validation_clips=counts["validation_clips"],
        test_clips=counts["test_clips"],
        model=model,
    )


def read_ratings(snapshot_url: str, split: str) -> pa.Table:
    """The ``clip_id``, ``score`` and ``audio_uri`` columns of ``<snapshot>/ratings_<split>.parquet``.

    Raises:
        InvalidRequest: The file is missing or lacks those columns, or a score lies outside 1–5.
    """
    url = join_url(snapshot_url, f"ratings_{split}.parquet")
    table = read_snapshot_table(snapshot_url, f"ratings_{split}", RATING_COLUMNS)
    scores = table["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    if table.num_rows and not ((scores >= MIN_MOS) & (scores <= MAX_MOS)).all():
        raise InvalidRequest(f"{url} holds scores outside {MIN_MOS:g}..{MAX_MOS:g}")
    return table


def _check_counts(tables: Mapping[str, pa.Table], config: QualityTrainConfig) -> None:
    train = tables["train"]
    if train.num_rows < config.min_ratings:
        raise InvalidRequest(
            f"{config.snapshot_url} has {train.num_rows} training ratings; at least min_ratings={config.min_ratings} "
            "are needed: collect more ratings or lower min_ratings"
        )
    for split in ("validation", "test"):
        clips = len(set(tables[split]["clip_id"].to_pylist()))
        if clips < 2:
            raise InvalidRequest(
                f"{config.snapshot_url} has ratings of {clips} {split} clips; at least 2 are needed to measure "
                f"ranking: collect more ratings or raise the snapshot's {split}_fraction"
            )


def read_clip_audio(audio_uri: str | None, clip_id: str) -> tuple[np.ndarray, int]:
    """A rated clip's audio as mono float32 [S] and its sample rate.

    Raises:
        InvalidRequest: The clip has no audio URI, or the file is missing, unreadable or empty.
    """
    if not audio_uri:
        raise InvalidRequest(f"clip {clip_id} has no audio_uri")
    try:
        with fsspec.open(audio_uri, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise InvalidRequest(f"the audio of clip {clip_id} is missing: {audio_uri}") from e
    try:
        audio, sample_rate = decode_wav(data)
    except RuntimeError as e:  # soundfile's LibsndfileError is a RuntimeError
        raise InvalidRequest(f"the audio of clip {clip_id} at {audio_uri} cannot be decoded: {e}") from e
    mono = audio if audio.ndim == 1 else audio.mean(axis=1)  # [S]
    if mono.size == 0 or not np.isfinite(mono).all():
        raise InvalidRequest(f"the audio of clip {clip_id} at {audio_uri} is empty or holds NaN samples")
    return mono.astype(np.float32), sample_rate


def _embed_split(name: str, table: pa.Table, embedder: ClapBundle, scoring: QualityConfig) -> _Split:
    clip_ids = table["clip_id"].to_pylist()
    uri_of_clip = dict(zip(clip_ids, table["audio_uri"].to_pylist(), strict=True))
    clips = sorted(uri_of_clip)
    index = {clip_id: i for i, clip_id in enumerate(clips)}
    windows, owners = [], []
    progress = tqdm(total=len(clips), desc=f"embedding {name} clips", unit="clip")
    for start in range(0, len(clips), CLIPS_PER_READ):
        by_rate: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
        for clip_id in clips[start : start + CLIPS_PER_READ]:
            audio, sample_rate = read_clip_audio(uri_of_clip[clip_id], clip_id)
            by_rate[sample_rate].append((index[clip_id], audio))
        for sample_rate, items in by_rate.items():
            embedded, local = embed_windows(embedder, [audio for _, audio in items], sample_rate, scoring)
            windows.append(embedded.cpu())  # [W_i, D]
            owners.append(torch.tensor([i for i, _ in items])[local])  # [W_i]: local clip → split clip index
            progress.update(len(items))
    progress.close()
    return _Split(
        name=name,
        windows=torch.cat(windows),
        clip_of_window=torch.cat(owners),
        clip_of_rating=torch.tensor([index[c] for c in clip_ids], dtype=torch.int64),
        scores=torch.tensor(table["score"].to_numpy(zero_copy_only=False), dtype=torch.float32),
        num_clips=len(clips),
    )


def _counts(split: _Split) -> dict[str, int]:
    return {"ratings": int(split.scores.shape[0]), "clips": split.num_clips}


def _initial_head(train: _Split, embedder: ClapBundle, config: QualityTrainConfig) -> QualityHead:
    """A head seeded by ``config.seed``, standardising with the training windows' statistics.

    Its output bias starts at the mean training rating, so the first epoch starts from the best constant.
    """
    inputs, targets = train.rows()  # [N, D], [N]
    head = QualityHead(int(embedder.model.config.projection_dim), config.hidden_dim)
    seeded_init_(head, config.seed)
    with torch.no_grad():
        head.feature_mean.copy_(inputs.mean(dim=0))
        head.feature_scale.copy_(inputs.std(dim=0, unbiased=False).clamp_min(1e-6))  # constant components stay put
        head.output.bias.fill_(float(targets.mean()))
    return head.to(embedder.device)


@contextlib.contextmanager
def _intra_op_threads(count: int) -> Iterator[None]:
    """Run torch ops on ``count`` threads inside the block, then restore the previous setting.

    The head's tensors are tiny (batches of 32 × D): splitting them across threads only adds
    synchronisation, and on a busy 2-core machine it made an epoch ~70× slower than one thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit(model: QualityModel, splits: Mapping[str, _Split], config: QualityTrainConfig) -> list[dict[str, Any]]:
    head, device = model.head, model.embedder.device
    inputs, targets = (t.to(device) for t in splits["train"].rows())  # [N, D], [N]
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    progress = tqdm(range(1, config.epochs + 1), desc="training quality head", unit="epoch")
    for epoch in progress:
        buffers: dict[str, list[float]] = defaultdict(list)
        head.train()
        for batch in torch.randperm(inputs.shape[0], generator=generator).split(config.batch_size):
            loss = F.mse_loss(head(inputs[batch.to(device)]), targets[batch.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            buffers["train/loss"].append(loss.item())
        for split in splits.values():
            for key, value in _evaluate(model, split).items():
                buffers[key].append(value)
        record = {"epoch": epoch, **_log(buffers)}
        history.append(record)
        progress.set_postfix(rmse=record["validation/rmse"], spearman=record["validation/spearman"], refresh=False)
    head.eval()
    head.requires_grad_(False)  # trained: frozen like a loaded model
    return history


def _evaluate(model: QualityModel, split: _Split) -> dict[str, float]:
    """RMSE of the predicted clip MOS against each rating; Spearman against each clip's mean rating."""
    mos = model.mos_of_windows(split.windows, split.clip_of_window, split.num_clips)  # [C]
    rmse = float(torch.sqrt(torch.mean((mos[split.clip_of_rating] - split.scores) ** 2)))
    mean_rating = mean_by_group(split.scores, split.clip_of_rating, split.num_clips)  # [C]
    spearman = float(spearmanr(mos.numpy(), mean_rating.numpy()).statistic) if split.num_clips > 1 else math.nan
    return {f"{split.name}/rmse": rmse, f"{split.name}/spearman": spearman}


def _log(buffers: Mapping[str, list[float]]) -> dict[str, float | None]:
    """Average each buffer once, ignoring NaN; a metric with no finite value (constant predictions) is None."""
    record: dict[str, float | None] = {}
    for key in sorted(buffers):
        values = np.asarray(buffers[key], dtype=np.float64)
        finite = values[np.isfinite(values)]
        record[key] = float(finite.mean()) if finite.size else None
    return record


def _write_history(out_url: str, history: list[dict[str, Any]], tested: Mapping[str, float]) -> None:
    lines = "".join(json.dumps(record, sort_keys=True) + "\n" for record in history)
    write_durably(join_url(out_url, METRICS_FILE), lines.encode())
    write_durably(join_url(out_url, PLOT_FILE), _plot(history, tested))


def _plot(history: list[dict[str, Any]], tested: Mapping[str, float]) -> bytes:
    """Two panels, PNG bytes: RMSE and Spearman per epoch (train, validation), and the test point at the end."""
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)  # draws without pyplot, so no global backend is switched
    epochs = [record["epoch"] for record in history]
    for position, (metric, label) in enumerate((("rmse", "RMSE (MOS points)"), ("spearman", "Spearman ρ")), 1):
        axes = figure.add_subplot(1, 2, position)
        for split in ("train", "validation"):
            values = [math.nan if r.get(f"{split}/{metric}") is None else r[f"{split}/{metric}"] for r in history]
            axes.plot(epochs, values, label=split)
        axes.plot(epochs[-1:], [tested[f"test/{metric}"]], marker="*", linestyle="none", color="black", label="test")
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle("quality model: MOS head on frozen CLAP embeddings")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
