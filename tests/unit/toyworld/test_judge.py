"""``musicrl toyworld judge``: a finetuned toy policy against its base, paired on held-out captions."""

import json
from pathlib import Path

import numpy as np
import pytest

from musicrl.cli import main
from musicrl.errors import InvalidRequest
from musicrl.toyworld.judge import Difference, _paired, _per_clip_measures, judge
from musicrl.toyworld.judge_config import JudgeConfig


MEASURES = {f"probe/{a}" for a in ("pitch", "tempo", "timbre", "loudness", "all")} | {
    "reward/text-adherence",
    "reward/quality",
}


def test_a_policy_judged_against_itself_changes_nothing() -> None:
    judgement = judge(JudgeConfig(policy_uri="toy://musicgen", prompts=8))

    assert set(judgement.measures) == MEASURES
    for name, d in judgement.measures.items():
        assert (d.delta, d.low, d.high) == (0.0, 0.0, 0.0), name  # same prompts, same seeds: the same clips
        assert 0 < d.count <= 8
    assert judgement.measures["reward/text-adherence"].count == 8  # every prompt is scored by the rewards
    assert judgement.measures["probe/pitch"].count < 8 or judgement.measures["probe/tempo"].count < 8


def test_another_policy_is_told_apart_and_the_cli_writes_the_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "judgement.json"

    main(["toyworld", "judge", "--policy-uri", "tiny://musicgen?seed=0", "--prompts", "6", "--out", str(out)])

    printed = capsys.readouterr().out
    assert "reward/text-adherence" in printed and "95% interval" in printed
    stored = json.loads(out.read_text())
    assert set(stored) == MEASURES
    # random weights at 32 kHz against the trained policy: its clips differ, so do their rewards
    assert stored["reward/text-adherence"]["delta"] != 0.0


def test_the_paired_interval_covers_the_mean_difference_and_skips_unasked_prompts() -> None:
    baseline = np.array([0.0, 1.0, np.nan, 0.0, 1.0, 0.0])
    policy = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 0.0])

    d = _paired(baseline, policy, np.random.default_rng(0))

    assert isinstance(d, Difference) and d.count == 5
    assert (d.baseline, d.policy) == (0.4, 0.8)
    assert d.low <= d.delta <= d.high and d.high <= 0.8 + 1e-9


def test_too_few_prompts_are_refused_with_a_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["toyworld", "judge", "--policy-uri", "toy://musicgen", "--prompts", "1"])
    assert stopped.value.code == InvalidRequest.exit_code
    assert "a paired comparison needs at least 2" in capsys.readouterr().err


def test_the_sweep_shows_temperature_making_the_audio_more_restless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep.json"

    main(["toyworld", "sweep", "--prompts", "8", "--out", str(out)])

    sweep = json.loads(out.read_text())
    flux = {row["temperature"]: row["spectral_flux"] for row in sweep["temperature"]}
    assert list(flux) == [0.5, 1.0, 1.5]
    assert flux[0.5] < flux[1.0] < flux[1.5]  # sampling further from the mode changes the sound more per frame
    assert [row["guidance_scale"] for row in sweep["guidance"]] == [1.0, 3.0, 5.0]
    assert all(0 <= row["adherence"] <= 1 for row in sweep["guidance"])
    assert "entropy (bits)" in capsys.readouterr().out


def test_silence_is_a_miss_and_an_attribute_no_prompt_asks_for_is_left_out() -> None:
    prompts = ["a low drone", "a high drone"]
    silence = np.zeros(16_000, np.float32)

    measures = _per_clip_measures(prompts, [silence, silence], 16_000, rewards=[])

    np.testing.assert_array_equal(measures["probe/pitch"], [0.0, 0.0])  # asked, and nothing was heard
    assert np.isnan(measures["probe/tempo"]).all()
    assert _paired(measures["probe/tempo"], measures["probe/tempo"], np.random.default_rng(0)) is None
