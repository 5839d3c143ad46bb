"""How a preference model is judged on held-out pairs: accuracy with a bootstrap interval, and calibration.

Every model of the preference benchmark, the platform's reward and its baselines alike, is reported from
its margins r_A − r_B on the test pairs by these functions, so their numbers are comparable.

* **accuracy**: :func:`~musicrl.rewards.train_preference.pair_accuracy` on the decisive pairs;
* **interval**: a percentile bootstrap (Efron & Tibshirani 1993, §13) that resamples *prompts*, not pairs:
  pairs of one prompt share clips and are not independent, so resampling pairs would make it too narrow;
* **ECE**: the expected calibration error of P(A ≻ B) = σ(r_A − r_B) in equal-width bins of the
  probability given to the predicted winner (Guo et al. 2017, §2).
"""

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from musicrl.rewards.train_preference import pair_accuracy


BOOTSTRAP_DRAWS = 1000  # percentile intervals at 95% settle within ~0.005 by a thousand draws
CALIBRATION_BINS = 10


@dataclass(frozen=True, slots=True)
class HeldOutReport:
    """A model's figures on held-out pairs.

    Attributes:
        accuracy: Share of decisive pairs ranked as the votes say.
        low: Lower end of the 95% bootstrap interval of ``accuracy``.
        high: Upper end.
        ece: Expected calibration error of σ(margin), in [0, 1].
        pairs: Decisive pairs the figures are over.
    """

    accuracy: float
    low: float
    high: float
    ece: float
    pairs: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        """The figures as ``{"<prefix>/accuracy": ..., "<prefix>/accuracy_low": ..., ...}``."""
        return {
            f"{prefix}/accuracy": self.accuracy,
            f"{prefix}/accuracy_low": self.low,
            f"{prefix}/accuracy_high": self.high,
            f"{prefix}/ece": self.ece,
            f"{prefix}/pairs": float(self.pairs),
        }


def bootstrap_interval(
    values: np.ndarray, groups: np.ndarray, rng: np.random.Generator, *, draws: int = BOOTSTRAP_DRAWS
) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` [N], resampling whole ``groups`` [N] with replacement.

    Returns:
        ``(low, high)``; both NaN when there are no values.
    """
    values = np.asarray(values, np.float64)
    if not len(values):
        return float("nan"), float("nan")
    _, inverse = np.unique(groups, return_inverse=True)
    sums = np.bincount(inverse, weights=values)  # [G]
    counts = np.bincount(inverse).astype(np.float64)  # [G]
    picks = rng.integers(0, len(sums), size=(draws, len(sums)))  # [draws, G]
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)  # [draws]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def expected_calibration_error(margin: np.ndarray, labels: np.ndarray, *, bins: int = CALIBRATION_BINS) -> float:
    """ECE of σ(margin) against decisive labels (1: A won, 0: B won); ties (0.5) are left out.

    Each pair's confidence is the probability given to the clip it ranks first, max(p, 1 − p), binned in
    ``bins`` equal widths over [0.5, 1]; ECE = Σ_bins (n_bin / n) · |accuracy_bin − confidence_bin|.

    Returns:
        The ECE in [0, 1], or NaN when no pair is decisive.
    """
    margin, labels = np.asarray(margin, np.float64), np.asarray(labels, np.float64)
    decisive = labels != 0.5
    if not decisive.any():
        return float("nan")
    p = expit(margin[decisive])
    predicted_a = p >= 0.5
    confidence = np.where(predicted_a, p, 1 - p)
    right = predicted_a == (labels[decisive] == 1.0)
    which = np.minimum(((confidence - 0.5) * 2 * bins).astype(int), bins - 1)  # [N] bin of each pair
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - confidence[inside].mean())
    return float(total)


def correct(margin: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per decisive pair: 1 if the margin ranks it as voted, 0 if not, 0.5 at a zero margin; float64 [N_decisive]."""
    margin, labels = np.asarray(margin, np.float64), np.asarray(labels)
    decisive = labels != 0.5
    said = np.where(labels[decisive] == 1.0, 1.0, -1.0)
    return (np.sign(margin[decisive]) * said + 1) / 2


def accuracy_difference(
    margin: np.ndarray, baseline: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, seed: int = 0
) -> tuple[float, float, float]:
    """Accuracy of ``margin`` minus that of ``baseline`` on the same pairs, with a paired prompt-bootstrap interval.

    Args:
        margin: One model's r_A − r_B, [N].
        baseline: The other's, [N].
        labels: P(A ≻ B) targets, [N].
        groups: Prompt of each pair, [N].
        seed: Seeds the bootstrap.

    Returns:
        ``(difference, low, high)``.
    """
    decisive = np.asarray(labels) != 0.5
    difference = correct(margin, labels) - correct(baseline, labels)  # [N_decisive], paired per pair
    low, high = bootstrap_interval(difference, np.asarray(groups)[decisive], np.random.default_rng(seed))
    return float(difference.mean()), low, high


def held_out_report(margin: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, seed: int = 0) -> HeldOutReport:
    """Accuracy, its prompt-bootstrap interval and the ECE of margins [N] against labels [N] (groups: prompts [N]).

    Returns:
        The report over the decisive pairs.
    """
    margin, labels, groups = np.asarray(margin, np.float64), np.asarray(labels), np.asarray(groups)
    decisive = labels != 0.5
    right = correct(margin, labels)  # per pair, as pair_accuracy counts it
    low, high = bootstrap_interval(right, groups[decisive], np.random.default_rng(seed))
    return HeldOutReport(
        accuracy=pair_accuracy(margin, labels),
        low=low,
        high=high,
        ece=expected_calibration_error(margin, labels),
        pairs=int(decisive.sum()),
    )
