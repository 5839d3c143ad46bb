"""Learning curves of the preference reward and its baselines on every simulated taste.

For each substrate (a policy whose clips the listeners hear) and each taste of :mod:`musicrl.sim.tastes`, a
simulated panel votes on pairs of clips of one prompt; every model (the platform's preference reward and the
code-histogram, CLAP and log-mel baselines, :mod:`musicrl.sim.experiment`) trains on 1k, 5k and 20k of
those pairs, chooses its epoch on validation prompts and is reported on test prompts: accuracy with a 95%
prompt-bootstrap interval, beside the panel's own agreement ceiling on the same pairs (the accuracy of the
true taste), and the expected calibration error. The baseline of each line is in the same table: a model
that does not beat the code histogram learns nothing a token count would not.

Substrates: ``tiny`` (``tiny://musicgen?seed=0``, random weights: clips differ by sampling temperature only)
and ``toy`` (``toy://musicgen``, the toy world's trained policy, whose clips follow their prompts). Clips come
from the platform's engine and are cached under ``--cache-dir``. ``--shuffled-labels`` permutes the training
and validation answers (test stays true): every model must then sit at 0.5 within its interval.

    python bench/preference_learning.py [--substrates tiny toy] [--tastes brightness code-share]
        [--pairs 1000 5000 20000] [--models default histogram clap logmel probe] [--shuffled-labels] [--out DIR]
    python bench/preference_learning.py --report DIR/curves.json OTHER/curves.json --out DIR  # merge runs

``probe`` is a diagnostic beside the baselines: a linear head on the untrained reward's pooled decoder state.
"""

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads it when imported: one bar per epoch would bury the table

SUBSTRATES = {
    "tiny": ("tiny://musicgen?seed=0", "tiny://clap?seed=0"),
    "toy": ("toy://musicgen", "toy://clap"),
}
TASTES = ("brightness", "crescendo", "onset-rate", "code-share", "prompt-timbre")
TRAIN_SHARE = 0.65  # of prompts: the rest are validation (0.15) and test (0.2), by the snapshot's hash


def _arguments() -> argparse.Namespace:
    from musicrl.sim.experiment import MODELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--substrates", nargs="+", choices=sorted(SUBSTRATES), default=["tiny", "toy"])
    parser.add_argument("--tastes", nargs="+", default=list(TASTES))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--pairs", nargs="+", type=int, default=[1000, 5000, 20000], help="training pairs per cell")
    parser.add_argument("--validation-pairs", type=int, default=1000)
    parser.add_argument("--test-pairs", type=int, default=2000)
    parser.add_argument("--clips-per-prompt", type=int, default=12, help="each prompt gives C(C-1)/2 pairs")
    parser.add_argument(
        "--prompts",
        type=int,
        default=0,
        help="prompts in the pool; 0 sizes it for the largest --pairs and held-out sizes",
    )
    parser.add_argument("--duration-s", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the platform's reward")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate of the platform's reward")
    parser.add_argument("--temperature", type=float, default=0.3, help="listener BT temperature (pool std units)")
    parser.add_argument("--inattentive-share", type=float, default=0.0)
    parser.add_argument("--position-bias", type=float, default=0.0)
    parser.add_argument("--tie-rate", type=float, default=0.0)
    parser.add_argument("--shuffled-labels", action="store_true", help="the chance control")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/preference_learning"))
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/musicrl/sim")
    parser.add_argument(
        "--report", nargs="+", type=Path, help="train nothing: merge these result files into one table and plot"
    )
    return parser.parse_args()


def _prompts_needed(args: argparse.Namespace) -> int:
    """The pool's prompts: ``--prompts``, or enough for every split (a run with other sizes has another pool)."""
    if args.prompts:
        return int(args.prompts)
    per_prompt = args.clips_per_prompt * (args.clips_per_prompt - 1) // 2
    held_out = max(args.validation_pairs / 0.15, args.test_pairs / 0.2)
    return math.ceil(max(max(args.pairs) / TRAIN_SHARE, held_out) / per_prompt * 1.1)  # 10% for the hash's spread


def _row(substrate: str, result) -> list[dict]:  # type: ignore[no-untyped-def]
    return [
        {
            "substrate": substrate,
            "taste": result.config.taste,
            "train_pairs": result.train_pairs,
            "model": model,
            "ceiling": result.ceiling,
            "agreement": result.agreement,
            **{k.split("/")[1]: v for k, v in report.as_dict("test").items()},
            **{f"chosen_{k}": v for k, v in result.chosen[model].items()},
            "history": [
                {k: v for k, v in row.items() if k in ("epoch", "l2", "train/accuracy", "validation/accuracy")}
                for row in result.histories.get(model, [])
            ],
        }
        for model, report in result.reports.items()
    ]


def _print_table(rows: list[dict]) -> None:
    print(f"{'substrate':9} {'taste':14} {'pairs':>6} {'ceiling':>7} {'model':9} {'test acc [95% CI]':>22} {'ECE':>6}")
    for r in rows:
        interval = f"{r['accuracy']:.3f} [{r['accuracy_low']:.3f}, {r['accuracy_high']:.3f}]"
        print(
            f"{r['substrate']:9} {r['taste']:14} {r['train_pairs']:>6} {r['ceiling']:>7.3f} {r['model']:9} "
            f"{interval:>22} {r['ece']:>6.3f}"
        )


def plot(rows: list[dict], dest: Path, title: str) -> None:
    """Test accuracy against training pairs, one panel per (substrate, taste), the ceiling dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cells = sorted({(r["substrate"], r["taste"]) for r in rows})
    columns = min(5, len(cells))
    lines = math.ceil(len(cells) / columns)
    figure = Figure(figsize=(3.6 * columns, 3.2 * lines), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for ax, (substrate, taste) in zip(axes, cells, strict=False):
        mine = [r for r in rows if (r["substrate"], r["taste"]) == (substrate, taste)]
        for model in dict.fromkeys(r["model"] for r in mine):
            points = sorted((r["train_pairs"], r) for r in mine if r["model"] == model)
            x = [p for p, _ in points]
            y = [r["accuracy"] for _, r in points]
            err = [
                [r["accuracy"] - r["accuracy_low"] for _, r in points],
                [r["accuracy_high"] - r["accuracy"] for _, r in points],
            ]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=model)
        ceiling = sorted((r["train_pairs"], r["ceiling"]) for r in mine)
        ax.plot([c[0] for c in ceiling], [c[1] for c in ceiling], "k--", label="listener ceiling")
        ax.axhline(0.5, color="grey", linestyle=":")
        ax.set(
            title=f"{substrate}: {taste}",
            xscale="log",
            xlabel="training pairs",
            ylabel="test accuracy",
            ylim=(0.4, 1.0),
        )
        sizes = sorted({r["train_pairs"] for r in mine})
        ax.set_xticks(sizes, [f"{n // 1000}k" if n % 1000 == 0 else str(n) for n in sizes], minor=False)
        ax.set_xticks([], minor=True)  # the log scale's minor labels overlap the sizes
    for ax in axes[len(cells) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(dest)


def _merged_report(files: list[Path], out: Path) -> None:
    rows: dict[tuple, dict] = {}
    for file in files:
        for row in json.loads(file.read_text())["rows"]:
            rows[(row["substrate"], row["taste"], row["train_pairs"], row["model"])] = row  # a later file wins
    ordered = [rows[key] for key in sorted(rows)]
    _print_table(ordered)
    out.mkdir(parents=True, exist_ok=True)
    plot(ordered, out / "merged.png", "preference learning curves")
    print(f"\nwrote {out / 'merged.png'}")


def main() -> None:
    args = _arguments()
    if args.report:
        _merged_report(args.report, args.out)
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    import torch

    from musicrl.sim.experiment import Bench, CellConfig
    from musicrl.sim.listener import ListenerConfig
    from musicrl.sim.pool import PoolSpec

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    listener = ListenerConfig(
        temperature=args.temperature,
        inattentive_share=args.inattentive_share,
        position_bias=args.position_bias,
        tie_rate=args.tie_rate,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    name = "shuffled" if args.shuffled_labels else "curves"
    for substrate in args.substrates:
        policy, clap = SUBSTRATES[substrate]
        spec = PoolSpec(policy, _prompts_needed(args), args.clips_per_prompt, args.duration_s, seed=args.seed)
        started = time.monotonic()
        bench = Bench(spec, args.out / f"work-{substrate}", clap_uri=clap, cache_dir=args.cache_dir)
        counts = {split: len(pairs) for split, pairs in bench.candidates.items()}
        print(
            f"{substrate}: {len(bench.pool)} clips of {spec.num_prompts} prompts, candidate pairs {counts} "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
        for taste in args.tastes:
            for pairs in args.pairs:
                cell = CellConfig(
                    taste,
                    pairs,
                    validation_pairs=args.validation_pairs,
                    test_pairs=args.test_pairs,
                    listener=listener,
                    models=tuple(args.models),
                    shuffled_labels=args.shuffled_labels,
                    default_epochs=args.epochs,
                    default_lr=args.lr,
                    seed=args.seed,
                )
                started = time.monotonic()
                new = _row(substrate, bench.run(cell))
                for r in new:
                    r["seconds"] = time.monotonic() - started
                _print_table(new)
                rows += new
                (args.out / f"{name}.json").write_text(
                    json.dumps(
                        {
                            "args": {k: str(v) for k, v in vars(args).items()},
                            "listener": dataclasses.asdict(listener),
                            "rows": rows,
                        },
                        indent=2,
                    )
                )
    print()
    _print_table(rows)
    title = "shuffled training labels (chance control)" if args.shuffled_labels else "preference learning curves"
    plot(rows, args.out / f"{name}.png", f"{title}; listener τ={args.temperature}")
    print(f"\nwrote {args.out / f'{name}.json'} and {args.out / f'{name}.png'}")


if __name__ == "__main__":
    main()
