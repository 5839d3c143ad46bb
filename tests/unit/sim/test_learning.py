"""CI-sized learning checks on the real path: engine clips, simulated votes, the trainers, test prompts.

Issue 14's goal is that the platform's preference reward learns any consistent taste at least as well as a
linear Bradley–Terry model on code histograms. The margin is asserted with its paired prompt-bootstrap
interval, never with a number written down from a run.
"""

import pytest

from musicrl.data.snapshot_config import SnapshotConfig
from musicrl.rewards.preference_eval import accuracy_difference
from musicrl.sim.experiment import Bench, CellConfig
from musicrl.sim.listener import ListenerConfig
from musicrl.sim.pool import PoolSpec


# 60 prompts x 8 clips of 1 s (28 pairs a prompt), half the prompts held out: ~0.8k training pairs and ~0.5k
# test pairs over ~18 prompts (an interval of about ±0.07), ~15 s to generate
LEARNING_POOL = PoolSpec("tiny://musicgen?seed=0", num_prompts=60, clips_per_prompt=8, duration_s=1.0)
SPLIT = SnapshotConfig(validation_fraction=0.2, test_fraction=0.3)
LISTENER = ListenerConfig(temperature=0.3)  # a ceiling near 0.88 on these pairs
CELL = {"train_pairs": 800, "validation_pairs": 300, "test_pairs": 600, "default_epochs": 3}  # ~20 s of training


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    root = tmp_path_factory.mktemp("preference-bench")
    return Bench(LEARNING_POOL, root / "work", clap_uri="tiny://clap?seed=0", cache_dir=root / "cache", split=SPLIT)


@pytest.mark.slow
@pytest.mark.parametrize(
    "taste",
    [
        "brightness",
        pytest.param(
            "code-share",
            marks=pytest.mark.xfail(
                strict=True,  # passing means the follow-up (issue 14, item 4) landed: remove the mark
                reason="issue 14 item 4: on a taste linear in codebook 0's histogram, the finetuned reward "
                "(0.66) does not beat the histogram head (0.69); the interval of the difference spans 0",
            ),
        ),
    ],
)
def test_the_default_reward_beats_the_code_histogram_baseline_on_test_prompts(bench, taste):
    result = bench.run(CellConfig(taste, listener=LISTENER, models=("default", "histogram"), **CELL))
    difference, low, high = accuracy_difference(
        result.margins["default"], result.margins["histogram"], result.labels, result.groups
    )
    figures = {model: round(report.accuracy, 3) for model, report in result.reports.items()}
    assert low > 0, (
        f"default − histogram = {difference:.3f} [{low:.3f}, {high:.3f}]; {figures}, ceiling {result.ceiling:.3f}"
    )


@pytest.mark.slow
def test_under_shuffled_labels_every_model_stays_at_chance_on_test(bench):
    config = CellConfig(
        "code-share", listener=LISTENER, models=("default", "histogram", "logmel"), shuffled_labels=True, **CELL
    )
    result = bench.run(config)
    for model, report in result.reports.items():
        assert report.low <= 0.5 <= report.high, (model, report)
    # the same cell with true labels is learnable: the control is not at chance for want of signal
    assert result.ceiling > 0.75
