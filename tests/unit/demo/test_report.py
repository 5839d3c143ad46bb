"""The demo's configuration and report, on artefacts laid out as a pipeline run writes them (no platform)."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from musicrl.demo.config import DemoConfig
from musicrl.demo.loop import DemoRun, RoundResult
from musicrl.demo.measure import TasteMeasurement, difference_interval
from musicrl.demo.report import html_report, sequential_curve, summary, text_report, write_report
from musicrl.errors import InvalidRequest
from musicrl.rollout.record import RolloutRecord, Status, Verdict
from musicrl.rollout.sequential import log_e_promote


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rounds": 0}, "rounds must be at least 1"),
        ({"comparisons": 5}, "comparisons must be at least 20"),
        ({"canary_comparisons": 10, "min_votes": 30}, "no promotion could happen"),
        ({"canary_comparisons": 200, "max_votes": 200}, "the controller must decide before the listeners stop"),
        ({"comparisons": 40, "rating_share": 0.1}, "raise rating_share or comparisons"),
        ({"clip_duration_s": 0}, "clip_duration_s must be in"),
        ({"first_port": 80}, "first_port must be between"),
        ({"validation_fraction": 0.6, "test_fraction": 0.5}, "sum to less than 1"),
    ],
)
def test_a_demo_that_could_not_run_or_learn_is_refused_with_a_sentence(overrides, message):
    with pytest.raises(InvalidRequest, match=message):
        DemoConfig(**overrides)


def test_every_port_is_its_own_and_clear_of_musicrl_up():
    config = DemoConfig(first_port=20000)
    names = ["gateway_port", "generator_http_port", "nats_port", "rollout_metrics_port", "canary_first_port"]
    ports = [config.port(n) for n in names]
    assert len(set(ports)) == len(ports) and min(ports) == 20000 and 8000 not in ports


def test_the_sequential_curve_is_the_rollouts_statistic_after_each_decisive_vote():
    votes = [1.0, float("nan"), 1.0, 0.0, 1.0]
    promote, rollback = sequential_curve(votes)
    assert len(promote) == len(rollback) == 4  # the tie is not a vote
    assert promote[-1] == pytest.approx(log_e_promote(3, 1))
    assert promote[1] > promote[0]  # two wins say more than one


def _measurement(version: str, shift: float) -> TasteMeasurement:
    rng = np.random.default_rng(0)  # the same draws: the same seeds, a policy that adds `shift`
    return TasteMeasurement(version, f"file:///{version}", rng.normal(10.0, 1.0, (12, 2)) + shift)


def test_a_paired_shift_has_an_interval_around_it_and_none_has_one_around_zero():
    before = _measurement("v0", 0.0)
    shifted = difference_interval(before, _measurement("v1", 0.3))
    assert shifted[0] == pytest.approx(0.3) and shifted[1] == pytest.approx(0.3)  # paired: no noise left
    rng = np.random.default_rng(1)
    noisy = TasteMeasurement("v1", "x", before.scores + rng.normal(0.0, 0.5, before.scores.shape))
    diff, low, high = difference_interval(before, noisy)
    assert low < diff < high and low < 0 < high


def _run_dir(root: Path) -> Path:
    """What a pipeline run leaves: the preference model's metadata, the RL metrics and plot, the gate report."""
    run = root / "artifacts" / "runs" / "musicrl-retraining-1"
    (run / "preference").mkdir(parents=True)
    (run / "preference" / "musicrl.json").write_text(
        json.dumps({"metrics": {"test/accuracy": 0.713, "data/test_pairs": 40, "data/train_pairs": 150}})
    )
    (run / "rl-u").mkdir()
    rows = [{"step": s, "reward/mean": 0.1 * s, "kl": 0.01 * s} for s in range(1, 6)]
    (run / "rl-u" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from musicrl.rl.plots import plot_run

    plot_run(rows, run / "rl-u" / "training.png", "MusicRL-U")
    (run / "gate").mkdir()
    (run / "gate" / "gate_report.json").write_text(json.dumps({"passed": True, "reasons": []}))
    return run


def _promoted(version: str) -> RolloutRecord:
    verdict = Verdict("promote", "listeners prefer the canary", "controller", {"canary_wins": 30, "stable_wins": 8})
    return RolloutRecord(
        id="r1", status=Status.PROMOTED, model_uri=f"file:///{version}", version=version, canary_share=1.0,
        requested_by="retraining pipeline run 1", requested_at=0.0, verdict=verdict,
    )  # fmt: skip


def test_the_report_says_what_each_round_measured_and_inlines_its_plots(tmp_path):
    run = DemoRun(config=DemoConfig(out_dir=str(tmp_path)), out_dir=tmp_path, scale=0.9)
    votes = [1.0] * 30 + [0.0] * 8 + [math.nan] * 2
    run.rounds.append(
        RoundResult(
            round=1, stable_before=_measurement("v0", 0.0), stable_after=_measurement("v1", 0.4), comparisons=200,
            preferences_recorded=240, ratings=37, run_dir=_run_dir(tmp_path), rollout=_promoted("v1"),
            canary_votes=votes, pipeline_s=100.0, seconds=300.0,
        )
    )  # fmt: skip
    page = write_report(run)
    text = (tmp_path / "report.txt").read_text()
    assert text == text_report(run)
    for expected in (
        "200 comparisons judged, 240 preference events",
        "preference model test accuracy: 0.713 on 40 held-out pairs (trained on 150)",
        "RL (U): reward 0.100 → 0.500, KL 0.0500 after 5 steps",
        "offline gate: passed",
        "canary v1, every vote as cast (some after the decision): win rate 0.789",
        "over 38 decisive votes",
        "decision: promoted by the controller: listeners prefer the canary",
        f"{run.rounds[0].stable_before.mean:.4f} (v0) → {run.rounds[0].stable_after.mean:.4f} (v1)",
        "change +0.4000 [+0.4000, +0.4000]",
    ):
        assert expected in text, expected
    body = page.read_text()
    assert body.count('src="data:image/png;base64,') == 2  # the loop's plot and the RL run's
    assert not re.search(r'(src|href)="(?!data:)', body)  # one file: nothing fetched from anywhere
    figures = summary(run)["rounds"][0]
    assert figures["rollout_status"] == "promoted" and figures["canary_win_rate"] == pytest.approx(30 / 38)
    assert "&lt;script&gt;" in html_report("<script>", [])  # text is escaped, never markup


def test_a_round_whose_preference_model_learned_nothing_says_the_pipeline_stopped_before_rl(tmp_path):
    run = DemoRun(config=DemoConfig(out_dir=str(tmp_path)), out_dir=tmp_path, scale=0.9)
    folder = tmp_path / "artifacts" / "runs" / "musicrl-retraining-1" / "preference"
    folder.mkdir(parents=True)
    metrics = {"test/accuracy": 0.5, "best_epoch": 0.0, "data/validation_pairs": 8, "data/test_pairs": 15}
    (folder / "musicrl.json").write_text(json.dumps({"metrics": metrics}))
    unchanged = _measurement("v0", 0.0)
    run.rounds.append(
        RoundResult(round=1, stable_before=unchanged, stable_after=unchanged, run_dir=folder.parent, comparisons=120)
    )
    text = text_report(run)
    assert "no epoch beat the untrained preference model on 8 validation pairs: the pipeline stopped before RL" in text
    assert "RL (U)" not in text and "canary: none (the run stopped before one)" in text
    assert "(v0) → " in text and "change +0.0000" in text


def test_a_new_demo_clears_what_the_last_one_wrote_and_nothing_else(tmp_path):
    from musicrl.demo.loop import _clear_last_run

    for made in ("state/nats/x", "artifacts/registry/v1.json", "round-1/gate-prompts.txt", "kfp-root/a"):
        (tmp_path / made).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / made).write_text("old")
    (tmp_path / "report.txt").write_text("old")
    (tmp_path / "my-notes.md").write_text("mine")
    _clear_last_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-notes.md"]
