import numpy as np
import pytest

from musicrl.errors import InvalidRequest
from musicrl.rewards.base import ClipBatch, ClipInput
from musicrl.rewards.mixture import MixtureConfig, MixtureTerm, Normalization, RewardMixture


class FixedReward:
    """Scores clips with given values, so the arithmetic of the mix can be checked exactly."""

    reads = ClipInput.AUDIO

    def __init__(self, name: str, values: list[float]) -> None:
        self.name = name
        self.values = np.asarray(values, dtype=np.float32)

    def score(self, batch: ClipBatch) -> np.ndarray:
        return self.values[: len(batch)]


def _batch(n: int) -> ClipBatch:
    return ClipBatch(prompts=["x"] * n, audio=[np.zeros(100, np.float32)] * n, sample_rate=16_000)


def test_raw_scores_are_weighted_and_summed():
    mixture = RewardMixture(
        {"text": FixedReward("text", [0.1, 0.5]), "quality": FixedReward("quality", [0.9, 0.2])},
        MixtureConfig((MixtureTerm("text", 2.0), MixtureTerm("quality", -1.0))),
    )
    total, raw = mixture.score(_batch(2))
    np.testing.assert_allclose(total, [2 * 0.1 - 0.9, 2 * 0.5 - 0.2], rtol=1e-6)
    np.testing.assert_allclose(raw["quality"], [0.9, 0.2])


def test_batch_normalisation_z_scores_each_reward_before_weighting():
    big = FixedReward("big", [100.0, 200.0, 300.0])
    small = FixedReward("small", [0.3, 0.2, 0.1])
    mixture = RewardMixture(
        {"big": big, "small": small},
        MixtureConfig((MixtureTerm("big", 1.0, Normalization.BATCH), MixtureTerm("small", 1.0, Normalization.BATCH))),
    )
    total, _ = mixture.score(_batch(3))
    np.testing.assert_allclose(total, [0.0, 0.0, 0.0], atol=1e-4)  # equal and opposite once on one scale


def test_running_normalisation_remembers_the_scale_across_batches():
    reward = FixedReward("r", [10.0, 20.0])
    mixture = RewardMixture({"r": reward}, MixtureConfig((MixtureTerm("r", 1.0, Normalization.RUNNING),), 0.5))
    first, _ = mixture.score(_batch(2))
    np.testing.assert_allclose(first, [-1.0, 1.0], atol=1e-4)
    reward.values = np.asarray([30.0, 40.0], dtype=np.float32)  # better clips: above the running mean
    second, _ = mixture.score(_batch(2))
    assert (second > 0).all()
    assert second[1] > second[0]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: MixtureConfig(()), "needs at least one term"),
        (lambda: MixtureConfig((MixtureTerm("a", 1.0), MixtureTerm("a", 2.0))), "appears twice"),
        (lambda: MixtureTerm("a", float("nan")), "finite number"),
        (lambda: MixtureConfig((MixtureTerm("a", 1.0),), momentum=1.0), "momentum must be in"),
        (lambda: MixtureConfig.from_wire({"terms": [{"reward": "a"}]}), "malformed reward mixture"),
        (
            lambda: MixtureConfig.from_wire({"terms": [{"reward": "a", "weight": 1, "normalization": "z"}]}),
            "malformed",
        ),
        (lambda: RewardMixture({}, MixtureConfig((MixtureTerm("quality", 1.0),))), "not loaded: \\['quality'\\]"),
    ],
)
def test_bad_mixtures_are_refused(build, message):
    with pytest.raises(InvalidRequest, match=message):
        build()


def test_batch_normalisation_needs_two_clips():
    mixture = RewardMixture(
        {"r": FixedReward("r", [1.0])}, MixtureConfig((MixtureTerm("r", 1.0, Normalization.BATCH),))
    )
    with pytest.raises(InvalidRequest, match="at least 2 clips"):
        mixture.score(_batch(1))


def test_config_reads_its_json_form():
    config = MixtureConfig.from_wire(
        {
            "terms": [
                {"reward": "text-adherence", "weight": 0.5, "normalization": "running"},
                {"reward": "quality", "weight": 0.5},
            ]
        }
    )
    assert config.terms[0] == MixtureTerm("text-adherence", 0.5, Normalization.RUNNING)
    assert config.terms[1].normalization is Normalization.NONE
