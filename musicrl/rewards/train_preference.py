"""Train the preference reward on a snapshot's pairs: a Bradley–Terry loss on r_A − r_B.

MusicRL (Cideron et al. 2024, §3.2) trains its user-preference reward on pairs so that
P(A ≻ B) = σ(r_A − r_B) and initialises it from the generator, which is what lifts it above chance. The loss
is the binary cross-entropy of that probability against the label, which also takes ties as soft targets
(0.5): a tie pulls r_A and r_B together. The epoch kept is the one with the best accuracy on the snapshot's
``validation`` split; the accuracy reported (the paper's figure of merit: 60% on 300k pairs) is measured
once, on the kept model, on the ``test`` split, which nothing chose on. The snapshot splits by prompt, so
both are prompts the model never trained on.

Outputs under ``out_url``: the checkpoint (:func:`musicrl.rewards.preference.load_preference` reads it),
``metrics.jsonl`` (one line per epoch) and ``training_curve.png``.
"""

import copy
import datetime
import io
import json
import logging
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from musicrl.data.dataset import join_url, write_durably
from musicrl.errors import InvalidRequest
from musicrl.rewards.preference import PreferenceRewardModel
from musicrl.rewards.preference_config import PreferenceTrainConfig
from musicrl.rewards.preference_data import (
    TRAIN_COLUMNS,
    PairBatch,
    PairDataset,
    PreferencePairs,
    pair_datasets,
    pair_loader,
    read_pairs,
    sequential_batches,
)


logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curve.png"
__all__ = ["PreferenceTrainConfig", "PreferenceTrainResult", "evaluate", "plot_training_curve", "train_preference"]


@dataclass(frozen=True, slots=True)
class PreferenceTrainResult:
    """What a training run produced.

    Attributes:
        uri: The saved checkpoint (``out_url``).
        best_epoch: The epoch saved (best validation accuracy; 0 if no epoch beat the untrained model).
        metrics: Metrics of that epoch and the test metrics of the saved model, as recorded in the checkpoint.
        history: One metrics dict per epoch, as in ``metrics.jsonl``.
        metrics_url: Where ``metrics.jsonl`` is.
        plot_url: Where the training-curve PNG is.
    """

    uri: str
    best_epoch: int
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    metrics_url: str = ""
    plot_url: str = ""


class MetricsLog:
    """Buffers per-step values under slash-namespaced keys and averages them once per epoch."""

    def __init__(self) -> None:
        self._buffers: defaultdict[str, list[float]] = defaultdict(list)
        self.history: list[dict[str, float]] = []

    def add(self, values: Mapping[str, float]) -> None:
        """Buffer one value per name (``train/loss``, ``validation/accuracy``, ...)."""
        for name, value in values.items():
            self._buffers[name].append(float(value))

    def log(self, fixed: Mapping[str, float]) -> dict[str, float]:
        """Average every buffer (ignoring NaN), add ``fixed`` values, append to the history and reset."""
        row = {k: float(np.nanmean(v)) for k, v in self._buffers.items()}
        row.update({k: float(v) for k, v in fixed.items()})
        self._buffers.clear()
        self.history.append(row)
        return row


def bt_loss(margin: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss: BCE of σ(r_A − r_B) against P(A ≻ B) targets (1, 0, or 0.5 for ties).

    Args:
        margin: r_A − r_B, float32 [N].
        labels: Targets, float32 [N].

    Returns:
        The mean loss, a scalar.
    """
    return F.binary_cross_entropy_with_logits(margin, labels)


def pair_accuracy(margin: np.ndarray, labels: np.ndarray) -> float:
    """Share of decisive pairs (label 0 or 1) whose winner has the higher r; an exact tie in r counts half.

    Returns:
        The accuracy in [0, 1], or NaN when no pair is decisive.
    """
    decisive = labels != 0.5
    if not decisive.any():
        return float("nan")
    sign = np.sign(margin[decisive]) * np.where(labels[decisive] == 1.0, 1.0, -1.0)  # +1 right, -1 wrong, 0 tie
    return float(np.mean((sign + 1) / 2))


def _margins(model: PreferenceRewardModel, batch: PairBatch) -> torch.Tensor:
    """r_A − r_B of the batch's pairs: float32 [N], both clips of every pair in one forward pass."""
    rewards = model.score_codes(batch.prompts + batch.prompts, batch.codes_a + batch.codes_b)  # [2N]: A then B
    return rewards[: len(batch.prompts)] - rewards[len(batch.prompts) :]


@torch.no_grad()
def evaluate(
    model: PreferenceRewardModel, pairs: PairDataset, batch_size: int, *, num_workers: int = 0
) -> dict[str, float]:
    """BT loss and pair accuracy on held-out pairs, named after their split.

    Args:
        model: The reward model.
        pairs: The held-out pairs.
        batch_size: Pairs per forward pass.
        num_workers: DataLoader worker processes reading the codes.

    Returns:
        ``{"<split>/loss", "<split>/accuracy"}``, e.g. ``validation/accuracy``.
    """
    model.eval()
    margins, labels = [], []
    for batch in pair_loader(pairs, sequential_batches(len(pairs), batch_size), num_workers=num_workers):
        margins.append(_margins(model, batch).cpu())
        labels.append(batch.labels)
    margin, label = torch.cat(margins), torch.cat(labels)  # [N], [N]
    return {
        f"{pairs.split}/loss": float(bt_loss(margin, label)),
        f"{pairs.split}/accuracy": pair_accuracy(margin.numpy(), label.numpy()),
    }


def _train_epoch(
    model: PreferenceRewardModel,
    optimizer: torch.optim.Optimizer,
    pairs: PairDataset,
    config: PreferenceTrainConfig,
    rng: np.random.Generator,
    log: MetricsLog,
    epoch: int,
) -> None:
    model.train()
    order = rng.permutation(len(pairs))
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    params = [p for p in model.parameters() if p.requires_grad]
    loader = pair_loader(pairs, batches, num_workers=config.num_workers)
    progress = tqdm(loader, total=len(batches), desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False)
    for batch in progress:
        labels = batch.labels.to(model.device)  # [N]
        margin = _margins(model, batch)  # [N]
        loss = bt_loss(margin, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else math.inf)
        optimizer.step()
        accuracy = pair_accuracy(margin.detach().cpu().numpy(), batch.labels.numpy())
        log.add({"train/loss": float(loss.detach()), "train/accuracy": accuracy, "train/grad_norm": float(grad_norm)})
        progress.set_postfix(loss=f"{float(loss.detach()):.3f}")


def _read_splits(config: PreferenceTrainConfig) -> tuple[PreferencePairs, PreferencePairs, PreferencePairs]:
    train = read_pairs(config.snapshot_url, "train", ties=config.ties, columns=TRAIN_COLUMNS)
    if len(train) < config.min_pairs:
        raise InvalidRequest(
            f"the snapshot {config.snapshot_url} has {len(train)} usable training pairs "
            f"({train.dropped_none} 'none' answers and {train.dropped_ties} ties dropped); "
            f"at least min_pairs={config.min_pairs} are needed: collect more feedback or lower min_pairs"
        )
    held_out = []
    for split in ("validation", "test"):
        pairs = read_pairs(config.snapshot_url, split, ties=config.ties, columns=TRAIN_COLUMNS)
        if pairs.decisive == 0:
            raise InvalidRequest(
                f"the snapshot {config.snapshot_url} has no decisive {split} pairs; "
                f"raise the snapshot's {split}_fraction so some prompts are held out"
            )
        held_out.append(pairs)
    return train, held_out[0], held_out[1]


def _datasets(config: PreferenceTrainConfig, model: PreferenceRewardModel, cache_dir: str) -> dict[str, PairDataset]:
    """The three splits' pairs over the snapshot's packed codes, checked against the model's K and V."""
    splits = _read_splits(config)
    policy = {"num_codebooks": model.num_codebooks, "vocab_size": model.vocab_size}
    return pair_datasets(config.snapshot_url, splits, **policy, cache_dir=cache_dir)


def _trainable_state(model: PreferenceRewardModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_preference(config: PreferenceTrainConfig) -> PreferenceTrainResult:
    """Train a preference reward from ``config.init_uri`` on the snapshot and save the best epoch.

    Args:
        config: Data, initialisation, output and optimiser settings.

    Returns:
        The checkpoint URI, the best epoch and every epoch's metrics.

    Raises:
        InvalidRequest: Missing snapshot files, too few pairs, no decisive validation or test pairs, missing
            codes or codes out of the policy's vocabulary.
    """
    torch.manual_seed(config.seed)
    model = PreferenceRewardModel.from_policy(
        config.init_uri, device=config.device, window_frames=config.window_frames
    )
    # codes packed for this run (a snapshot taken without them) or copied from an object store live here
    with tempfile.TemporaryDirectory(prefix="musicrl-codes-") as cache_dir:
        data = _datasets(config, model, cache_dir)
        train, validation, test = data["train"], data["validation"], data["test"]
        initial, log, best_epoch = _fit(model, train, validation, config)
        # the test split is scored once, on the model already chosen: nothing above has seen it
        tested = evaluate(model, test, config.eval_batch_size, num_workers=config.num_workers)
        train.codes.close()
    logger.info("kept epoch %d: test accuracy %.3f on %d pairs", best_epoch, tested["test/accuracy"], len(test))
    metrics = _final_metrics(log.history, best_epoch, initial, tested, (len(train), len(validation), len(test)))
    plot_url = plot_training_curve(
        log.history, initial, join_url(config.out_url, PLOT_FILE), best_epoch=best_epoch, test=tested
    )
    uri = model.save(config.out_url, metrics, training_run=config.training_run or _run_id())  # musicrl.json last
    return PreferenceTrainResult(
        uri=uri,
        best_epoch=best_epoch,
        metrics=metrics,
        history=copy.deepcopy(log.history),
        metrics_url=join_url(config.out_url, METRICS_FILE),
        plot_url=plot_url,
    )


def _fit(
    model: PreferenceRewardModel, train: PairDataset, validation: PairDataset, config: PreferenceTrainConfig
) -> tuple[dict[str, float], MetricsLog, int]:
    """Train for ``config.epochs`` and leave the model at its best validation epoch (0: untrained).

    Returns:
        The untrained model's validation metrics, the per-epoch log and the epoch kept.
    """
    rng = np.random.default_rng(config.seed)
    params = model.set_trainable(text_encoder=not config.freeze_text_encoder)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    logger.info(
        "training the preference reward on %d pairs (validation %d), %.2fM trainable parameters",
        len(train),
        len(validation),
        sum(p.numel() for p in params) / 1e6,
    )
    held_out = {"batch_size": config.eval_batch_size, "num_workers": config.num_workers}
    initial = evaluate(model, validation, **held_out)
    best_accuracy, best_epoch, best_state = initial["validation/accuracy"], 0, _trainable_state(model)
    log, started = MetricsLog(), time.monotonic()
    for epoch in tqdm(range(1, config.epochs + 1), desc="training preference reward", unit="epoch"):
        _train_epoch(model, optimizer, train, config, rng, log, epoch)
        log.add(evaluate(model, validation, **held_out))
        row = log.log({"epoch": epoch, "time_s": time.monotonic() - started})
        logger.info(
            "epoch %d: validation accuracy %.3f, loss %.4f", epoch, row["validation/accuracy"], row["validation/loss"]
        )
        _write_metrics(config.out_url, log.history)
        if row["validation/accuracy"] > best_accuracy:
            best_accuracy, best_epoch, best_state = row["validation/accuracy"], epoch, _trainable_state(model)
    unexpected = model.load_state_dict(best_state, strict=False).unexpected_keys  # only the trained tensors
    assert not unexpected, unexpected  # names come from this model's own named_parameters
    return initial, log, best_epoch


def _final_metrics(
    history: list[dict[str, float]],
    best_epoch: int,
    initial: dict[str, float],
    tested: dict[str, float],
    sizes: tuple[int, int, int],
) -> dict[str, float]:
    best = dict(history[best_epoch - 1]) if best_epoch else {"epoch": 0.0, **initial}
    best.update(tested)
    best.update(
        {
            "best_epoch": float(best_epoch),
            "validation/accuracy_init": initial["validation/accuracy"],
            **{
                f"data/{split}_pairs": float(n)
                for split, n in zip(("train", "validation", "test"), sizes, strict=True)
            },
        }
    )
    return best


def _run_id() -> str:
    return "preference-" + datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def _write_metrics(out_url: str, history: list[dict[str, float]]) -> None:
    # the whole file is rewritten each epoch: object stores cannot append, and it stays a few KB
    lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in history)
    write_durably(join_url(out_url, METRICS_FILE), lines.encode())


def plot_training_curve(
    history: list[dict[str, float]],
    initial: dict[str, float],
    dest: str,
    *,
    best_epoch: int | None = None,
    test: dict[str, float] | None = None,
) -> str:
    """Draw the BT losses and the validation accuracy per epoch (epoch 0 = the untrained model) as a PNG.

    Args:
        history: One metrics dict per epoch (``train/loss``, ``validation/loss``, ``validation/accuracy``).
        initial: Validation metrics of the untrained model.
        dest: Where to write the PNG (path or fsspec URL).
        best_epoch: The epoch kept, marked on the accuracy plot.
        test: Test metrics of the kept model (``test/accuracy``), drawn as one point at ``best_epoch``.

    Returns:
        ``dest``.
    """
    epochs = [0] + [int(row["epoch"]) for row in history]
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)  # attaches an Agg canvas: no global backend, no display needed
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs[1:], [row["train/loss"] for row in history], marker="o", label="train")
    validation_loss = [initial["validation/loss"]] + [row["validation/loss"] for row in history]
    loss_axes.plot(epochs, validation_loss, marker="o", label="validation")
    loss_axes.axhline(math.log(2), color="grey", linestyle=":", label="chance (ln 2)")
    loss_axes.set(title="Bradley–Terry loss", xlabel="epoch", ylabel="BCE on σ(r_A − r_B)")
    loss_axes.legend()
    accuracy = [initial["validation/accuracy"]] + [row["validation/accuracy"] for row in history]
    accuracy_axes.plot(epochs, accuracy, marker="o", color="tab:green", label="validation (chooses the epoch)")
    accuracy_axes.axhline(0.5, color="grey", linestyle=":", label="chance")
    if best_epoch is not None:
        accuracy_axes.axvline(best_epoch, color="tab:red", linestyle="--", label=f"kept (epoch {best_epoch})")
        if test is not None:
            accuracy_axes.plot(
                [best_epoch],
                [test["test/accuracy"]],
                marker="*",
                markersize=12,
                color="black",
                linestyle="none",
                label="test (reported)",
            )
    accuracy_axes.set(title="Pair accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0.0, 1.0))
    accuracy_axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_durably(dest, buffer.getvalue())
    return dest
