"""Plots a person can read: each reward against step and against KL (as MusicRL's Figures 2 and 3)."""

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np


matplotlib.use("Agg")  # files only: training runs have no display

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


def plot_run(rows: list[dict[str, Any]], out: Path, title: str) -> Path:
    """Write ``out`` (PNG): rewards vs step, rewards vs KL, KL and entropy vs step, value loss vs step."""
    rewards = sorted(k for k in (rows[0] if rows else {}) if k.startswith("reward/") and k.endswith("/mean"))
    steps = [r["step"] for r in rows]
    kl = [r.get("kl", float("nan")) for r in rows]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    for key in rewards:
        label = key.removeprefix("reward/").removesuffix("/mean")
        reward = [r[key] for r in rows]
        (line,) = axes[0, 0].plot(steps, reward, label=label)
        # each step's KL and reward are noisy batch means: joined in step order they scribble back and forth,
        # so the steps are faint points and the line is their running mean, the trade-off the run followed
        axes[0, 1].scatter(kl, reward, s=8, alpha=0.25, color=line.get_color())
        axes[0, 1].plot(running_mean(kl), running_mean(reward), color=line.get_color(), label=label)
    axes[0, 0].set(title="Rewards during training", xlabel="step", ylabel="mean reward")
    axes[0, 1].set(
        title="Reward against KL (points: steps; line: running mean)",
        xlabel="KL (nats per step)",
        ylabel="mean reward",
    )
    axes[1, 0].plot(steps, [r.get("kl", float("nan")) for r in rows], label="KL")
    axes[1, 0].plot(steps, [r.get("entropy", float("nan")) for r in rows], label="entropy")
    axes[1, 0].set(title="KL and entropy", xlabel="step", ylabel="nats per step")
    axes[1, 1].plot(steps, [r.get("value_loss", float("nan")) for r in rows])
    axes[1, 1].set(title="Value loss", xlabel="step", ylabel="MSE")
    return save_figure(figure, axes.flat, title, out)


def running_mean(values: list[float], share: float = 0.1) -> np.ndarray:
    """The mean of each value with the ones before it, over a trailing window of ``share`` of the run.

    NaNs (a metric a step did not log) are skipped, so they do not blank the window around them.
    """
    data = np.asarray(values, dtype=float)
    window = max(1, round(share * len(data)))
    valid = ~np.isnan(data)
    sums = np.cumsum(np.where(valid, data, 0.0))
    counts = np.cumsum(valid)
    start = np.maximum(np.arange(len(data)) - window, -1)
    previous_sums = np.where(start >= 0, sums[np.maximum(start, 0)], 0.0)
    previous_counts = np.where(start >= 0, counts[np.maximum(start, 0)], 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums - previous_sums) / (counts - previous_counts)


def save_figure(figure: Any, axes: Any, title: str, out: Path) -> Path:
    """Grid and legend on every axis, a title, then ``out`` (PNG); the figure is closed."""
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
