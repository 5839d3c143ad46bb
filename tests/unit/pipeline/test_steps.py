"""The pipeline's own decisions between training steps: which preference models the RL stages may optimise."""

import pytest

from musicrl.pipeline.steps import preference_outcome
from musicrl.rewards.train_preference import PreferenceTrainResult


def _trained(best_epoch: int, validation_accuracy: list[float]) -> PreferenceTrainResult:
    return PreferenceTrainResult(
        uri="/runs/r1/preference",
        best_epoch=best_epoch,
        metrics={"data/validation_pairs": 8.0, "validation/accuracy_init": 0.5},
        history=[{"epoch": float(i + 1), "validation/accuracy": a} for i, a in enumerate(validation_accuracy)],
    )


@pytest.mark.parametrize("stages, optimising", [("U", "U"), ("R,U", "U"), ("R,U,RU", "RU, U"), ("R,RU", "RU")])
def test_a_model_no_epoch_of_which_beat_the_untrained_one_stops_the_stages_that_optimise_it(stages, optimising):
    outcome = preference_outcome(_trained(0, [0.375, 0.25, 0.5]), stages)
    assert not outcome.usable and outcome.uri == "/runs/r1/preference"
    assert "learned nothing" in outcome.reason and "8 validation pairs" in outcome.reason
    assert "best accuracy 0.500, untrained 0.500" in outcome.reason
    assert f"stage(s) {optimising} would optimise noise" in outcome.reason
    assert "validation_fraction" in outcome.reason  # what to change


def test_a_model_that_beat_its_untrained_self_goes_on_to_rl():
    outcome = preference_outcome(_trained(2, [0.55, 0.75, 0.6]), "R,U,RU")
    assert outcome.usable and outcome.reason == ""


def test_a_run_of_r_alone_does_not_wait_on_a_preference_model_it_never_optimises():
    assert preference_outcome(_trained(0, [0.4]), "R").usable
