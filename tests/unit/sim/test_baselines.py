"""The benchmark's report (bootstrap, calibration) and its feature baselines, on synthetic pairs with known truth."""

import numpy as np
import pytest
from scipy.special import expit

from musicrl.errors import InvalidRequest
from musicrl.rewards.clip_features import code_histograms
from musicrl.rewards.feature_preference import FeaturePairs, FeatureTrainConfig, margins, train_feature_preference
from musicrl.rewards.preference_eval import (
    accuracy_difference,
    bootstrap_interval,
    expected_calibration_error,
    held_out_report,
)


def _bt_labels(margin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (rng.random(len(margin)) < expit(margin)).astype(np.float32)


def test_calibrated_margins_have_a_small_ece_and_overconfident_ones_a_large_one():
    rng = np.random.default_rng(0)
    margin = rng.normal(0, 2, 20_000)
    labels = _bt_labels(margin, rng)
    assert expected_calibration_error(margin, labels) < 0.02
    assert expected_calibration_error(5 * margin, labels) > 0.1


def test_the_bootstrap_resamples_prompts_so_correlated_pairs_widen_the_interval():
    rng = np.random.default_rng(1)
    per_prompt = rng.random(40) < 0.7  # every pair of a prompt right or wrong together
    values = np.repeat(per_prompt.astype(float), 25)  # [1000]
    prompts = np.repeat(np.arange(40), 25)
    low, high = bootstrap_interval(values, prompts, np.random.default_rng(0))
    pair_low, pair_high = bootstrap_interval(values, np.arange(1000), np.random.default_rng(0))
    assert low <= values.mean() <= high
    assert high - low > 3 * (pair_high - pair_low)  # 40 independent prompts, not 1000 independent pairs


def test_a_model_compared_with_itself_differs_by_exactly_nothing():
    rng = np.random.default_rng(2)
    margin = rng.normal(size=300)
    labels = _bt_labels(margin, rng)
    assert accuracy_difference(margin, margin, labels, np.arange(300) // 10) == (0.0, 0.0, 0.0)


def _linear_taste_pairs(n: int, rng: np.random.Generator, weights: np.ndarray) -> tuple[FeaturePairs, np.ndarray]:
    a, b = rng.normal(size=(n, len(weights))), rng.normal(size=(n, len(weights)))
    truth = (a - b) @ weights  # [n]
    pairs = FeaturePairs(a.astype(np.float32), b.astype(np.float32), _bt_labels(truth, rng))
    return pairs, truth


def test_a_linear_baseline_learns_a_linear_taste_up_to_its_ceiling_on_held_out_pairs():
    rng = np.random.default_rng(3)
    weights = np.zeros(40)
    weights[:3] = (1.5, -1.0, 0.5)  # 3 of 40 features matter
    train, _ = _linear_taste_pairs(2000, rng, weights)
    validation, _ = _linear_taste_pairs(500, rng, weights)
    test, truth = _linear_taste_pairs(2000, rng, weights)
    result = train_feature_preference(train, validation, FeatureTrainConfig(epochs=10))
    report = held_out_report(margins(result.head, test), test.labels, np.arange(len(test)))
    p = expit(truth)
    ceiling = float(np.mean(np.maximum(p, 1 - p)))  # the accuracy of the true taste, in expectation
    assert result.epoch >= 1
    assert report.low - 0.02 <= ceiling  # reaches the ceiling within its interval (and a margin for a finite fit)
    assert report.accuracy > 0.5 + 0.8 * (ceiling - 0.5)


def test_code_histograms_count_each_codebook_separately():
    codes = np.array([[0, 0, 1, 3], [2, 2, 2, 2]])
    histogram = code_histograms([codes], vocab_size=4)[0]
    assert histogram.tolist() == [0.5, 0.25, 0.0, 0.25, 0.0, 0.0, 1.0, 0.0]


def test_the_baseline_trainer_refuses_a_validation_split_without_decisive_pairs():
    rng = np.random.default_rng(4)
    train, _ = _linear_taste_pairs(50, rng, np.ones(3))
    ties = FeaturePairs(train.a, train.b, np.full(len(train), 0.5, np.float32))
    with pytest.raises(InvalidRequest, match="decisive validation pairs"):
        train_feature_preference(train, ties, FeatureTrainConfig())
