"""The training plot's running mean, which draws the reward-against-KL trade-off."""

import math

import numpy as np
import pytest

from musicrl.rl.plots import plot_run, running_mean


def test_running_mean_averages_a_trailing_window_of_the_run() -> None:
    values = [float(v) for v in range(1, 11)]  # a window of 2 at share 0.2

    assert running_mean(values, share=0.2).tolist() == [1.0, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5]
    assert running_mean(values, share=0.0).tolist() == values  # a window of at least one step


def test_running_mean_skips_steps_that_did_not_log_the_metric() -> None:
    smoothed = running_mean([1.0, math.nan, 3.0, 5.0], share=0.5)  # a window of 2

    assert smoothed.tolist() == [1.0, 1.0, 3.0, 4.0]
    assert np.isnan(running_mean([math.nan, math.nan], share=0.5)).all()


@pytest.mark.parametrize("steps", [1, 40])
def test_a_run_without_kl_on_some_steps_still_plots(tmp_path, steps: int) -> None:
    rows = [
        {"step": s, "reward/mean": 0.1 * s, "entropy": 3.0, "value_loss": 1.0, **({"kl": 0.01 * s} if s % 3 else {})}
        for s in range(steps)
    ]

    out = plot_run(rows, tmp_path / "training.png", "a run")

    assert out.stat().st_size > 10_000
