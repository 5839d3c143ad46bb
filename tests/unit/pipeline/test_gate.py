"""Tests of the offline gate on tiny policies: verdicts, KL, win rates, reports, ``musicrl gate`` exit codes."""

import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import fsspec
import numpy as np
import pytest

from musicrl.cli import main
from musicrl.config import SamplingParams
from musicrl.errors import InvalidRequest, ModelNotFound
from musicrl.pipeline.gate import GateFailed, read_prompts, run_gate
from musicrl.pipeline.gate_config import GateConfig, GateReward, GateThresholds
from musicrl.pipeline.gate_report import GateReport, failures
from musicrl.pipeline.gate_stats import PromptBootstrap, standardised, wins


STABLE = "tiny://musicgen?seed=0"
OTHER = "tiny://musicgen?seed=1"  # same architecture, other random weights: a candidate that moved far
PROMPTS = ("a calm piano melody", "an upbeat funk groove", "a minimal techno track")  # 3: the fewest that resample
CLIPS = 2  # two paired seeds per prompt: enough to exercise the clustering of clips by prompt
DURATION_S = 0.5  # 25 frames: 28 decode steps per clip, a second or two for a whole gate on a CPU
FRAMES, CODEBOOKS = 25, 4
ANALYTIC = (
    GateReward("loudness", "analytic://loudness"),
    GateReward("low-codes", "analytic://low-codes?vocab_size=128"),
)
ALL_REWARDS = (
    GateReward("text-adherence", "tiny://clap?seed=0"),
    *ANALYTIC,
    GateReward("preference", STABLE),  # untrained: scores every clip 0, so every pair ties
)


def _config(candidate: str = STABLE, rewards: Sequence[GateReward] = ALL_REWARDS, **overrides: object) -> GateConfig:
    fields: dict = {
        "candidate_uri": candidate,
        "stable_uri": STABLE,
        "rewards": tuple(rewards),
        "prompts": PROMPTS,
        "clips_per_prompt": CLIPS,
        "sampling": SamplingParams(duration_s=DURATION_S),
    }
    fields.update(overrides)
    return GateConfig(**fields)


@pytest.fixture(scope="module")
def same_policy() -> Iterator[GateReport]:
    """The stable policy gated against itself (shared by the read-only checks: it is the slow part)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUSICRL_CACHE_DIR", "/nonexistent-cache")  # tiny models are built in memory: nothing is read
        yield run_gate(_config())


@pytest.fixture(scope="module")
def other_policy() -> GateReport:
    """Another seed's weights against the stable policy, with low-codes as the judge to get a real win rate."""
    return run_gate(_config(OTHER, preference_judge="low-codes"))


def test_the_same_policy_passes_with_zero_kl_and_even_odds(same_policy: GateReport) -> None:
    metrics = same_policy.metrics

    assert same_policy.passed and same_policy.reasons == ()
    assert metrics["kl_to_stable"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["win_rate/preference"] == metrics["win_rate/independent"] == 0.5  # identical clips: all ties
    for name in ("text-adherence", "loudness", "low-codes", "preference"):
        low, high = metrics[f"reward/{name}/diff_ci_low"], metrics[f"reward/{name}/diff_ci_high"]
        assert metrics[f"reward/{name}/diff_mean"] == 0.0
        assert low <= 0.0 <= high and low == pytest.approx(-high, abs=1e-12)  # centred on zero
        assert metrics[f"reward/{name}/candidate_mean"] == metrics[f"reward/{name}/stable_mean"]
    assert same_policy.preference_judge == "preference"
    assert same_policy.independent_judges == ("text-adherence", "loudness", "low-codes")
    assert same_policy.thresholds == {"win_rate/preference": 0.5}  # the only default gate


def test_another_policy_is_far_away_in_kl(other_policy: GateReport) -> None:
    metrics = other_policy.metrics

    assert metrics["kl_to_stable/ci_low"] > 0.1  # independent random weights: far apart on every token
    assert metrics["kl_to_stable/ci_low"] <= metrics["kl_to_stable"] <= metrics["kl_to_stable/ci_high"]
    # per step sums the 4 codebooks over T + K − 1 steps; per token averages over K·T tokens
    tokens_per_step = CODEBOOKS * FRAMES / (FRAMES + CODEBOOKS - 1)
    assert metrics["kl_to_stable/per_step"] == pytest.approx(metrics["kl_to_stable"] * tokens_per_step, rel=1e-9)
    assert metrics["win_rate/preference"] == metrics["reward/low-codes/win_rate"]  # the judge asked for
    assert other_policy.independent_judges == ("text-adherence", "loudness")  # neither the judge nor preference
    assert metrics["reward/loudness/diff_mean"] != 0.0  # the clips differ, so the scores do


def test_an_impossible_threshold_fails_with_a_sentence_naming_it() -> None:
    rewards = (GateReward("loudness", "analytic://loudness", min_diff=1.0), ANALYTIC[1])
    thresholds = GateThresholds(min_reward_diff=-0.5, min_win_rate_preference=None, min_win_rate_independent=0.9)

    report = run_gate(_config(rewards=rewards, thresholds=thresholds))

    assert not report.passed
    assert report.reasons == (
        "reward/loudness/diff_ci_low: the lower 95% bound of the mean loudness difference (candidate − stable) "
        "is 0, below the minimum 1",
        "win_rate/independent: the win rate under the independent judge is 0.5, below the minimum 0.9",
    )
    assert report.thresholds["reward/low-codes/diff_ci_low"] == -0.5  # the common minimum, met
    assert "win_rate/preference" not in report.metrics  # no listener-trained reward: no preference judge
    markdown = report.to_markdown()
    assert "# Offline gate: FAILED" in markdown and "**fail** (≥ 1)" in markdown and "no judge" in markdown


def test_a_kl_above_the_maximum_is_a_reason(other_policy: GateReport) -> None:
    kl = other_policy.metrics["kl_to_stable"]

    (reason,) = failures(other_policy.metrics, {"kl_to_stable": 0.01}, 0.95)

    assert reason == f"kl_to_stable: the KL to the stable policy is {kl:.4g} nats per token, above 0.01"


def test_a_candidate_that_does_not_load_names_itself(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"

    with pytest.raises(ModelNotFound) as raised:
        run_gate(_config(str(missing), rewards=ANALYTIC))

    assert str(raised.value) == (
        f"the candidate policy {missing} does not load: no checkpoint directory at {missing} (from {missing})"
    )


def test_the_report_is_written_as_json_and_markdown(same_policy: GateReport, tmp_path: Path) -> None:
    url = same_policy.write(str(tmp_path / "gate"))

    assert url == str(tmp_path / "gate" / "gate_report.json")
    wire = json.loads(Path(url).read_text())
    assert wire["verdict"] == "passed" and wire["reasons"] == []
    assert wire["metrics"]["reward/text-adherence/diff_mean"] == 0.0
    assert GateReport.from_wire({**wire, "a_newer_field": 1}) == same_policy
    markdown = (tmp_path / "gate" / "gate_report.md").read_text()
    assert markdown == same_policy.to_markdown() and "# Offline gate: PASSED" in markdown
    for name in same_policy.rewards:
        assert f"| {name} |" in markdown


def test_the_report_goes_to_any_fsspec_url(
    same_policy: GateReport, memory_filesystem: fsspec.AbstractFileSystem
) -> None:
    url = same_policy.write("memory://artifacts/gate/run-1")

    assert url == "memory://artifacts/gate/run-1/gate_report.json"
    assert memory_filesystem.exists("/artifacts/gate/run-1/gate_report.md")
    with fsspec.open(url) as f:
        assert GateReport.from_wire(json.load(f)) == same_policy


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"preference_judge": "quality"}, "the preference judge 'quality' is not among the gate's rewards"),
        ({"independent_judges": ("low-codes", "low-codes")}, "each independent judge may be named once"),
        ({"preference_judge": "low-codes", "independent_judges": ("low-codes",)}, "cannot also be an independent"),
        ({"prompts": ("only one",)}, "at least 2 held-out prompts"),
        ({"prompts": ("a", " ")}, "a held-out prompt is empty"),
        ({"prompts_file": "prompts.txt"}, "as a list or as prompts_file (one of them)"),
        ({"rewards": ANALYTIC * 2}, "each reward may appear once"),
        ({"clips_per_prompt": 0}, "clips_per_prompt and batch_size must be >= 1"),
    ],
)
def test_the_config_refuses_what_cannot_run(overrides: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        _config(**{"rewards": ANALYTIC, **overrides})


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ({"min_win_rate_preference": 1.5}, "min_win_rate_preference is a share of clip pairs and must lie in"),
        ({"max_kl_to_stable": -1.0}, "max_kl_to_stable must be >= 0 nats per token"),
        ({"min_reward_diff": float("nan")}, "min_reward_diff must be a finite number"),
    ],
)
def test_thresholds_out_of_range_are_refused(thresholds: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        GateThresholds(**thresholds)


def test_a_reward_spec_is_name_equals_uri() -> None:
    assert GateReward.parse("low-codes=analytic://low-codes?vocab_size=128") == ANALYTIC[1]
    with pytest.raises(InvalidRequest, match="--reward takes NAME=URI"):
        GateReward.parse("loudness")
    with pytest.raises(InvalidRequest, match="unknown reward 'loud'"):
        GateReward.parse("loud=analytic://loudness")


def test_prompts_come_from_a_file_without_its_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "held-out.txt"
    path.write_text("a calm piano melody\n\n  an upbeat funk groove  \n")
    assert read_prompts(_config(rewards=ANALYTIC, prompts=(), prompts_file=str(path))) == PROMPTS[:2]

    path.write_text("a calm piano melody\n")
    with pytest.raises(InvalidRequest, match="holds 1 prompts; the gate needs at least 2"):
        read_prompts(_config(rewards=ANALYTIC, prompts=(), prompts_file=str(path)))
    with pytest.raises(InvalidRequest, match="cannot read the gate's prompts file"):
        read_prompts(_config(rewards=ANALYTIC, prompts=(), prompts_file=str(tmp_path / "missing.txt")))


def test_ties_count_half_and_a_constant_reward_favours_no_one() -> None:
    candidate, stable = np.array([[1.0, 2.0], [3.0, 3.0]]), np.array([[0.0, 5.0], [3.0, 1.0]])
    assert wins(candidate, stable).tolist() == [[1.0, 0.0], [0.5, 1.0]]

    ours, theirs = standardised(np.full((2, 2), 7.0), np.full((2, 2), 7.0))
    assert not ours.any() and not theirs.any()


def test_the_bootstrap_resamples_prompts_reproducibly() -> None:
    table = np.random.default_rng(0).normal(size=(20, 3))
    first, again = (PromptBootstrap(20, 2000, 0.9, seed=7).mean(table) for _ in range(2))

    assert first == again
    assert first.mean == pytest.approx(table.mean())
    assert first.low < first.mean < first.high
    # clips of a prompt move together: three copies of each prompt's clip are no surer than one clip
    one = PromptBootstrap(20, 2000, 0.9, seed=7).mean(table[:, :1])
    copies = PromptBootstrap(20, 2000, 0.9, seed=7).mean(np.repeat(table[:, :1], 3, axis=1))
    assert (copies.low, copies.high) == pytest.approx((one.low, one.high))


# --- musicrl gate ---------------------------------------------------------------------------------------------


@pytest.fixture
def _no_musicrl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("MUSICRL_") and n != "MUSICRL_CACHE_DIR"]:
        monkeypatch.delenv(name)  # flags only: no stray MUSICRL_DEVICE from the caller's shell


def _run_cli(tmp_path: Path, candidate: str, *extra: str) -> int:
    prompts = tmp_path / "held-out.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    argv = ["gate", "--candidate-uri", candidate, "--stable-uri", STABLE, "--prompts-file", str(prompts)]
    argv += ["--reward", "loudness=analytic://loudness", "--reward", "low-codes=analytic://low-codes?vocab_size=128"]
    argv += ["--clips-per-prompt", str(CLIPS), "--duration", str(DURATION_S), "--out-url", str(tmp_path / "out")]
    try:
        main(argv + list(extra))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "musicrl" and r.levelno == logging.ERROR]


@pytest.mark.usefixtures("_no_musicrl_env")
def test_cli_exits_0_and_prints_the_report_when_the_gate_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = _run_cli(tmp_path, STABLE, "--min-diff", "loudness=0", "--max-kl-to-stable", "0.001")

    assert status == 0
    report = tmp_path / "out" / "gate_report.json"
    assert capsys.readouterr().out == f"{report}\n"
    wire = json.loads(report.read_text())
    assert wire["passed"] and wire["thresholds"] == {"reward/loudness/diff_ci_low": 0.0, "kl_to_stable": 0.001}


@pytest.mark.usefixtures("_no_musicrl_env")
def test_cli_exits_with_the_gate_code_and_the_reasons_when_it_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    status = _run_cli(tmp_path, STABLE, "--min-diff", "low-codes=0.5")

    assert status == GateFailed.exit_code == 20
    report = tmp_path / "out" / "gate_report.json"
    assert capsys.readouterr().out == f"{report}\n"  # the report is the output whatever the verdict
    assert _errors(caplog) == [
        f"the candidate {STABLE} failed the offline gate: reward/low-codes/diff_ci_low: the lower 95% bound of "
        f"the mean low-codes difference (candidate − stable) is 0, below the minimum 0.5 (report: {report})"
    ]


@pytest.mark.usefixtures("_no_musicrl_env")
def test_cli_names_a_candidate_that_does_not_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "no-such-checkpoint"

    status = _run_cli(tmp_path, str(missing))

    assert status == ModelNotFound.exit_code == 3
    assert _errors(caplog) == [
        f"the candidate policy {missing} does not load: no checkpoint directory at {missing} (from {missing})"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("_no_musicrl_env")
def test_cli_refuses_a_malformed_min_diff(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert _run_cli(tmp_path, STABLE, "--min-diff", "quality=0.1") == 2
    assert _errors(caplog) == [
        "--min-diff names 'quality', which is not among the gate's rewards ['loudness', 'low-codes']"
    ]
