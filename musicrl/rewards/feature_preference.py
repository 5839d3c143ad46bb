"""The preference baselines: a Bradley–Terry head over fixed clip features, chosen on validation pairs.

    r(clip) = head(standardise(x)),  P(A ≻ B) = σ(r_A − r_B)

with ``x`` one of :mod:`musicrl.rewards.clip_features` and ``head`` a linear map or a one-hidden-layer MLP,
trained with the platform reward's loss (:func:`~musicrl.rewards.train_preference.bt_loss`) plus an L2
penalty on the weights. Each penalty of ``l2_grid`` trains from scratch; the (penalty, epoch) kept is the
one with the best validation accuracy (then the lower validation loss), so the test pairs choose nothing,
as in :func:`~musicrl.rewards.train_preference.train_preference`. The last layer starts at zero: every pair
starts at P = 0.5.
"""

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from musicrl.errors import InvalidRequest
from musicrl.rewards.train_preference import bt_loss, pair_accuracy


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FeatureTrainConfig:
    """How to train a feature baseline.

    Attributes:
        hidden: Width of the MLP's hidden layer; 0 makes the head linear.
        epochs: Passes over the training pairs per penalty.
        batch_size: Pairs per optimiser step.
        lr: Adam learning rate.
        l2_grid: L2 penalties on the weights to choose from on validation.
        seed: Seeds the initialisation and the pair order.
    """

    hidden: int = 0
    epochs: int = 30  # a head on a few hundred features converges in tens of passes
    batch_size: int = 128
    lr: float = 3e-3  # on standardised features: the step of a linear probe
    l2_grid: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1)  # from none to strong enough for 1k pairs of 1k features
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 0 or self.epochs < 1 or self.batch_size < 1:
            raise InvalidRequest(
                f"hidden must be >= 0 and epochs, batch_size >= 1, got {self.hidden}, {self.epochs}, {self.batch_size}"
            )
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise InvalidRequest(f"lr must be a positive number, got {self.lr}")
        if not self.l2_grid or any(not (np.isfinite(v) and v >= 0) for v in self.l2_grid):
            raise InvalidRequest(f"l2_grid must hold at least one penalty, each >= 0, got {self.l2_grid}")


@dataclass(frozen=True, slots=True)
class FeaturePairs:
    """Pairs as feature rows: clip A's features float32 [N, F], clip B's [N, F] and P(A ≻ B) targets [N]."""

    a: np.ndarray
    b: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


class FeatureHead(nn.Module):
    """r = head((x − mean) / scale), with the last layer zero-initialised.

    Args:
        num_features: F.
        hidden: Hidden width; 0 for a linear head.
    """

    mean: torch.Tensor  # float32 [F]
    scale: torch.Tensor  # float32 [F]

    def __init__(self, num_features: int, hidden: int = 0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("scale", torch.ones(num_features))
        last = nn.Linear(hidden or num_features, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), last) if hidden else last

    def fit_standardisation(self, features: np.ndarray) -> None:
        """Set mean and scale from training features [M, F] (constant features get scale 1)."""
        values = torch.from_numpy(np.asarray(features, np.float32))
        self.mean.copy_(values.mean(dim=0))
        std = values.std(dim=0)
        self.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """r, float32 [N], of features float32 [N, F]."""
        return self.net((features - self.mean) / self.scale).squeeze(-1)

    def penalty(self) -> torch.Tensor:
        """Sum of squared weights (biases excluded)."""
        return sum((p**2).sum() for name, p in self.named_parameters() if name.endswith("weight"))  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class FeatureTrainResult:
    """A trained baseline and what chose it.

    Attributes:
        head: The kept head (eval mode).
        l2: Its penalty.
        epoch: Its epoch (0: no epoch beat the untrained head).
        validation_accuracy: Its validation accuracy.
        history: Per (penalty, epoch): ``{"l2", "epoch", "train/loss", "validation/loss", "validation/accuracy"}``.
    """

    head: FeatureHead
    l2: float
    epoch: int
    validation_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)


def margins(head: FeatureHead, pairs: FeaturePairs) -> np.ndarray:
    """r_A − r_B of each pair, float32 [N]."""
    with torch.no_grad():
        a, b = torch.from_numpy(pairs.a), torch.from_numpy(pairs.b)
        return (head(a) - head(b)).numpy()


def train_feature_preference(
    train: FeaturePairs, validation: FeaturePairs, config: FeatureTrainConfig
) -> FeatureTrainResult:
    """Train a head per penalty of ``config.l2_grid`` and keep the best (penalty, epoch) on validation.

    Raises:
        InvalidRequest: No training pairs, or no decisive validation pairs to choose with.
    """
    if not len(train) or not (validation.labels != 0.5).any():
        raise InvalidRequest(
            f"a feature baseline needs training pairs and decisive validation pairs, got {len(train)} and "
            f"{int((validation.labels != 0.5).sum())}"
        )
    best: tuple[float, float] = (-1.0, 0.0)  # (validation accuracy, -validation loss)
    kept: FeatureTrainResult | None = None
    history: list[dict[str, float]] = []
    for l2 in config.l2_grid:
        for epoch, head, row in _runs(train, validation, config, l2):
            history.append(row)
            key = (row["validation/accuracy"], -row["validation/loss"])
            if key > best:
                best = key
                kept = FeatureTrainResult(copy.deepcopy(head).eval(), l2, epoch, key[0])
    assert kept is not None  # epoch 0 of the first penalty always beats (-1, 0)
    logger.info("feature baseline: kept l2=%g epoch %d, validation accuracy %.3f", kept.l2, kept.epoch, best[0])
    return FeatureTrainResult(kept.head, kept.l2, kept.epoch, kept.validation_accuracy, history)


def _runs(train: FeaturePairs, validation: FeaturePairs, config: FeatureTrainConfig, l2: float):  # type: ignore[no-untyped-def]
    """Yield (epoch, head, metrics) from epoch 0 (untrained) to ``config.epochs`` of one penalty."""
    torch.manual_seed(config.seed)
    head = FeatureHead(train.a.shape[1], config.hidden)
    head.fit_standardisation(np.concatenate([train.a, train.b]))
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    a, b, labels = (torch.from_numpy(x) for x in (train.a, train.b, train.labels.astype(np.float32)))
    yield 0, head, _row(head, validation, l2, 0, float("nan"))
    for epoch in range(1, config.epochs + 1):
        head.train()
        losses = []
        for index in torch.randperm(len(labels), generator=generator).split(config.batch_size):
            loss = bt_loss(head(a[index]) - head(b[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            (loss + l2 * head.penalty()).backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        head.eval()
        yield epoch, head, _row(head, validation, l2, epoch, float(np.mean(losses)))


def _row(head: FeatureHead, validation: FeaturePairs, l2: float, epoch: int, train_loss: float) -> dict[str, float]:
    margin = margins(head, validation)
    labels = validation.labels.astype(np.float32)
    return {
        "l2": l2,
        "epoch": float(epoch),
        "train/loss": train_loss,
        "validation/loss": float(bt_loss(torch.from_numpy(margin), torch.from_numpy(labels))),
        "validation/accuracy": pair_accuracy(margin, labels),
    }
