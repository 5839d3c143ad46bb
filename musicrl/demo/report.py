"""The demo's report: a text summary, plots (PNG) and one self-contained HTML page with both.

Each round's figures come from the artefacts the platform wrote, read back as a person would find them:
the pipeline run's preference model (``preference/musicrl.json``), its RL stage (``rl-u/metrics.jsonl``),
its gate report (``gate/gate_report.json``), and the rollout record the controller kept.
"""

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib


matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402

from musicrl.demo.loop import DemoRun, RoundResult, canary_win_rate, taste_difference  # noqa: E402
from musicrl.demo.measure import difference_interval  # noqa: E402
from musicrl.rl.plots import save_figure  # noqa: E402
from musicrl.rollout.sequential import log_e_promote, log_e_rollback, win_rate_interval  # noqa: E402


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _rl_rows(run_dir: Path | None) -> list[dict[str, Any]]:
    path = run_dir / "rl-u" / "metrics.jsonl" if run_dir else None
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def preference_metrics(run_dir: Path | None) -> dict[str, float]:
    """The preference model's final metrics, from its checkpoint's metadata (empty when it did not train)."""
    meta = _read_json(run_dir / "preference" / "musicrl.json") if run_dir else {}
    return dict(meta.get("metrics", {}))


def preference_accuracy(run_dir: Path | None) -> float:
    """The preference model's test accuracy (NaN when it did not train)."""
    return float(preference_metrics(run_dir).get("test/accuracy", math.nan))


def gate_summary(run_dir: Path | None) -> dict[str, Any]:
    """The offline gate's report (empty when the run stopped before it)."""
    return _read_json(run_dir / "gate" / "gate_report.json") if run_dir else {}


def sequential_curve(votes: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """log E of "the canary is preferred" and of "the stable policy is preferred" after each decisive vote."""
    wins = losses = 0
    promote, rollback = [], []
    for v in votes:
        if math.isnan(v):
            continue
        wins, losses = wins + int(v == 1.0), losses + int(v == 0.0)
        promote.append(log_e_promote(wins, losses))
        rollback.append(log_e_rollback(wins, losses))
    return np.array(promote), np.array(rollback)


def round_lines(result: RoundResult, alpha: float) -> list[str]:
    """The round as text lines."""
    lines = [f"Round {result.round} ({result.seconds:.0f} s, of which the pipeline {result.pipeline_s:.0f} s)"]
    lines.append(
        f"  preferences: {result.comparisons} comparisons judged, {result.preferences_recorded} preference events "
        f"recorded so far, {result.ratings} ratings so far"
    )
    metrics = preference_metrics(result.run_dir)
    tested, trained = int(metrics.get("data/test_pairs", 0)), int(metrics.get("data/train_pairs", 0))
    lines.append(
        f"  preference model test accuracy: {metrics.get('test/accuracy', math.nan):.3f} on {tested} held-out "
        f"pairs (trained on {trained})"
    )
    if metrics and not metrics.get("best_epoch", 1.0):
        lines.append(
            f"  no epoch beat the untrained preference model on {int(metrics.get('data/validation_pairs', 0))} "
            "validation pairs: the pipeline stopped before RL"
        )
    rows = _rl_rows(result.run_dir)
    if rows:
        first, last = rows[0], rows[-1]
        lines.append(
            f"  RL (U): reward {first.get('reward/mean', math.nan):.3f} → {last.get('reward/mean', math.nan):.3f}, "
            f"KL {last.get('kl', math.nan):.4f} after {int(last.get('step', len(rows)))} steps"
        )
    gate = gate_summary(result.run_dir)
    if gate:
        verdict = "passed" if gate.get("passed") else "failed: " + "; ".join(gate.get("reasons", []))
        lines.append(f"  offline gate: {verdict}")
    if result.rollout is None:
        lines.append("  canary: none (the run stopped before one)")
    else:
        decisive = [v for v in result.canary_votes if not math.isnan(v)]
        wins = int(sum(decisive))
        low, high = win_rate_interval(wins, len(decisive) - wins, alpha) if decisive else (math.nan, math.nan)
        promote, _ = sequential_curve(result.canary_votes)
        e = math.exp(min(promote[-1], 700.0)) if len(promote) else math.nan
        lines.append(
            f"  canary {result.rollout.version}, every vote as cast (some after the decision): win rate "
            f"{canary_win_rate(result.canary_votes):.3f} [{low:.3f}, {high:.3f}] over {len(decisive)} decisive votes, "
            f"E = {e:.4g} (1/α = {1 / alpha:.4g})"
        )
        decided = result.rollout.verdict
        by = f" by the {decided.actor}: {decided.reason}" if decided else ""
        lines.append(f"  decision: {result.rollout.status.value}{by}")
    if result.stable_after is not None:
        diff, low, high = difference_interval(result.stable_before, result.stable_after)
        lines.append(
            f"  hidden taste, stable policy: {result.stable_before.mean:.4f} ({result.stable_before.version}) → "
            f"{result.stable_after.mean:.4f} ({result.stable_after.version}); "
            f"change {diff:+.4f} [{low:+.4f}, {high:+.4f}]"
        )
    return lines


def text_report(run: DemoRun) -> str:
    """Everything the demo measured, as plain text."""
    config = run.config
    lines = [
        f"MusicRL closed-loop demo: taste {config.taste}, {len(run.rounds)} round(s), policy {config.policy_uri}",
        f"listeners: temperature {config.listener_temperature} taste spreads, {config.inattentive_share:.0%} "
        f"inattentive; taste spread within a prompt {run.scale:.4f}",
        "",
    ]
    for result in run.rounds:
        lines += round_lines(result, config.alpha) + [""]
    if run.rounds and run.rounds[-1].stable_after is not None:
        diff, low, high = taste_difference(run)
        lines.append(
            f"Over the demo, the stable policy's hidden-taste mean changed by {diff:+.4f} [{low:+.4f}, {high:+.4f}] "
            "(95% bootstrap interval over the measured prompts)"
        )
    return "\n".join(lines) + "\n"


def plot_rounds(run: DemoRun, out: Path) -> Path:
    """The loop in four panels: hidden taste per round, RL reward and KL, the canary's sequential evidence."""
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))
    start = run.rounds[0].stable_before
    after = [r.stable_after for r in run.rounds if r.stable_after is not None]
    changes = [difference_interval(start, m, seed=run.config.seed) for m in after]  # paired: prompts and seeds
    centers = [0.0] + [c[0] for c in changes]
    below = [0.0] + [c[0] - c[1] for c in changes]
    above = [0.0] + [c[2] - c[0] for c in changes]
    axes[0, 0].errorbar(range(len(centers)), centers, yerr=[below, above], fmt="o-", capsize=4)
    axes[0, 0].axhline(0.0, color="k", linewidth=0.8)
    labels = [f"{start.version}\n(start)"] + [f"{m.version}\n(after round {i + 1})" for i, m in enumerate(after)]
    axes[0, 0].set_xticks(range(len(centers)), labels)
    axes[0, 0].set(
        title="Hidden taste of the stable policy, change from the start (95% interval)",
        ylabel=f"{run.config.taste} score",
    )
    for result in run.rounds:
        rows = _rl_rows(result.run_dir)
        steps = [r.get("step", i + 1) for i, r in enumerate(rows)]
        axes[0, 1].plot(steps, [r.get("reward/mean", math.nan) for r in rows], label=f"round {result.round}")
        axes[1, 0].plot(steps, [r.get("kl", math.nan) for r in rows], label=f"round {result.round}")
        promote, rollback = sequential_curve(result.canary_votes)
        if len(promote):
            votes = np.arange(1, len(promote) + 1)
            axes[1, 1].plot(votes, promote, label=f"round {result.round}: canary preferred")  # as cast, blind
            axes[1, 1].plot(votes, rollback, "--", label=f"round {result.round}: stable preferred")
    axes[0, 1].set(title="RL reward (preference model)", xlabel="step", ylabel="mean reward")
    axes[1, 0].set(title="KL to the round's stable policy", xlabel="step", ylabel="nats per step")
    axes[1, 1].axhline(-math.log(run.config.alpha), color="k", linewidth=0.8, label="threshold log(1/α)")
    axes[1, 1].set(title="Canary: sequential evidence over the votes cast", xlabel="decisive vote", ylabel="log E")
    return save_figure(figure, axes.flat, f"Closed loop, taste {run.config.taste}", out)


def html_report(text: str, images: list[tuple[Path, str]]) -> str:
    """One HTML page with the text and the images inlined (base64), so it opens anywhere as one file.

    Args:
        text: The text report.
        images: Each PNG and its caption.
    """
    figures = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for path, caption in images
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>MusicRL closed-loop demo</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto}img{max-width:100%}</style></head><body>"
        f"<h1>MusicRL closed-loop demo</h1><pre>{html.escape(text)}</pre>{figures}</body></html>"
    )


def write_report(run: DemoRun) -> Path:
    """Write ``report.txt``, ``loop.png``, each round's RL plot, ``report.json`` and ``report.html``."""
    out = run.out_dir
    text = text_report(run)
    (out / "report.txt").write_text(text)
    images = [(plot_rounds(run, out / "loop.png"), "The loop: taste, RL and the canary's evidence, per round")]
    for r in run.rounds:
        plot = r.run_dir / "rl-u" / "training.png" if r.run_dir else None
        if plot is not None and plot.exists():
            images.append((plot, f"Round {r.round}: the RL stage (MusicRL-U) of the retraining pipeline"))
    (out / "report.html").write_text(html_report(text, images))
    (out / "report.json").write_text(json.dumps(summary(run), indent=2) + "\n")
    return out / "report.html"


def summary(run: DemoRun) -> dict[str, Any]:
    """The figures a test or a script reads back."""
    rounds = []
    for r in run.rounds:
        rounds.append(
            {
                "round": r.round,
                "comparisons": r.comparisons,
                "preferences_recorded": r.preferences_recorded,
                "preference_test_accuracy": preference_accuracy(r.run_dir),
                "gate_passed": gate_summary(r.run_dir).get("passed"),
                "rollout_status": r.rollout.status.value if r.rollout else None,
                "canary_version": r.rollout.version if r.rollout else None,
                "canary_win_rate": canary_win_rate(r.canary_votes) if r.rollout else None,
                "stable_before": {"version": r.stable_before.version, "mean": r.stable_before.mean},
                "stable_after": {"version": r.stable_after.version, "mean": r.stable_after.mean}
                if r.stable_after
                else None,
                "seconds": r.seconds,
            }
        )
    return {"taste": run.config.taste, "scale": run.scale, "rounds": rounds}
