"""Training records of the toy models: ``metrics.jsonl`` and a PNG of the curves a person reads."""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from musicrl.rl.plots import plt, save_figure  # pyplot on the Agg backend: training runs have no display


METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curves.png"


def write_history(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One JSON object per logged step."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / METRICS_FILE
    path.write_text("".join(json.dumps(dict(row), sort_keys=True) + "\n" for row in rows))
    return path


def plot_history(
    rows: Sequence[Mapping[str, Any]], out: Path, title: str, panels: Mapping[str, Sequence[str]]
) -> Path:
    """One panel per entry of ``panels`` (its title → the metric keys it plots against ``step``)."""
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, (panel, keys) in zip(axes[0], panels.items(), strict=True):
        for key in keys:
            points = [(row["step"], row[key]) for row in rows if key in row]
            if points:
                steps, values = zip(*points, strict=True)
                axis.plot(steps, values, ".-" if len(points) < 30 else "-", label=key)
        axis.set(title=panel, xlabel="step")
    return save_figure(figure, axes[0], title, out)
