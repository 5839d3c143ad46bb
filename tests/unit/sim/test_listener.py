import numpy as np
import pytest

from musicrl.data.snapshot_config import SnapshotConfig
from musicrl.errors import InvalidRequest
from musicrl.sim.listener import Listener, ListenerConfig, agreement
from musicrl.sim.pool import ClipPool, generate_pool
from musicrl.sim.snapshot import prompt_splits, within_prompt_pairs
from musicrl.sim.tastes import TASTES, Brightness, scores, taste_by_name
from tests.unit.sim.conftest import POOL_SPEC


VOTES = 20_000  # binomial SE of an agreement near 0.8: 0.003
FAULTS = {
    "clean": ListenerConfig(temperature=0.3),
    "inattentive": ListenerConfig(temperature=0.3, inattentive_share=0.25),
    "position-biased": ListenerConfig(temperature=0.3, position_bias=0.3),
    "ties": ListenerConfig(temperature=0.3, tie_margin=0.2, tie_rate=0.1),
    "all faults": ListenerConfig(
        temperature=0.5, inattentive_share=0.1, position_bias=0.2, tie_margin=0.1, tie_rate=0.05
    ),
}


def _pairs(pool: ClipPool, count: int, seed: int) -> np.ndarray:
    """``count`` pairs drawn with replacement from the pool's within-prompt pairs, [count, 2]."""
    every = within_prompt_pairs(pool, np.arange(len(pool.prompts)), np.random.default_rng(seed))
    return every[np.random.default_rng(seed + 1).integers(0, len(every), count)]


@pytest.mark.parametrize("taste_name", list(TASTES))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_measured_agreement_matches_the_stated_ceiling(tiny_pool, taste_name, fault):
    taste = taste_by_name(taste_name)
    values = scores(taste, tiny_pool.clips())
    listener = Listener.calibrated(taste, FAULTS[fault], values, tiny_pool.prompt_of)
    pairs = _pairs(tiny_pool, VOTES, seed=3)
    a, b = values[pairs[:, 0]], values[pairs[:, 1]]
    votes = listener.vote(a, b, np.random.default_rng(7))
    measured, decisive = agreement(listener.margins(a, b), votes.choices)
    ceiling = listener.ceiling(a, b)
    error = max(np.sqrt(ceiling * (1 - ceiling) / decisive), 1 / decisive)  # binomial SE, one vote at least
    assert abs(measured - ceiling) < 4 * error, (measured, ceiling, error)
    assert ceiling > 0.55  # the listener hears something in these clips


def test_inattention_and_position_bias_lower_the_ceiling_and_close_calls_as_ties_raise_it(tiny_pool):
    values = scores(Brightness(), tiny_pool.clips())
    pairs = _pairs(tiny_pool, 5_000, seed=5)
    a, b = values[pairs[:, 0]], values[pairs[:, 1]]

    def ceiling(**fields: float) -> float:
        config = ListenerConfig(temperature=0.3, **fields)
        return Listener.calibrated(Brightness(), config, values, tiny_pool.prompt_of).ceiling(a, b)

    clean = ceiling()
    assert ceiling(inattentive_share=0.25) == pytest.approx(0.75 * clean + 0.25 * 0.5)  # a quarter flip coins
    assert ceiling(position_bias=0.3) < clean - 0.05
    assert ceiling(tie_rate=0.2) == pytest.approx(clean)  # ties at random leave the decisive votes as they were
    assert ceiling(tie_margin=0.3) > clean + 0.01  # the closest, noisiest pairs become ties


def test_without_faults_the_ceiling_is_the_mean_of_max_p_and_votes_follow_bradley_terry():
    listener = Listener(Brightness(), ListenerConfig(temperature=1.0), scale=1.0)
    delta = np.array([2.0, -1.0, 0.0])
    p = 1 / (1 + np.exp(-delta))
    assert listener.ceiling(delta, np.zeros(3)) == pytest.approx(np.mean(np.maximum(p, 1 - p)))
    votes = listener.vote(np.full(40_000, 1.0), np.zeros(40_000), np.random.default_rng(0))
    assert np.mean(votes.choices == "a") == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.01)


def test_inattentive_members_are_whole_listeners_who_did_not_listen():
    config = ListenerConfig(inattentive_share=0.25, panel_size=20)
    votes = Listener(Brightness(), config, 1.0).vote(np.ones(2_000), np.zeros(2_000), np.random.default_rng(0))
    assert set(votes.users[~votes.listened]) == set(range(5))
    coin = votes.choices[~votes.listened] == "a"
    assert abs(coin.mean() - 0.5) < 4 * np.sqrt(0.25 / len(coin))  # a fair coin, within 4 standard errors


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"position_bias": 1.5}, "position_bias is a probability"),
        ({"tie_rate": 1.0}, "every answer a tie"),
        ({"panel_size": 0}, "panel_size must be >= 1"),
    ],
)
def test_config_refuses_bad_values(fields, message):
    with pytest.raises(InvalidRequest, match=message):
        ListenerConfig(**fields)


def test_pools_are_cached_and_split_by_the_snapshot_s_prompt_hash(tiny_pool, tmp_path):
    again = generate_pool(POOL_SPEC, cache_dir=tmp_path)
    assert np.array_equal(again.codes, tiny_pool.codes) and again.prompts == tiny_pool.prompts  # same seeds
    assert (tmp_path / f"pool-{POOL_SPEC.cache_key()}.npz").exists()
    splits = prompt_splits(tiny_pool, SnapshotConfig(validation_fraction=0.3, test_fraction=0.3))
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(len(tiny_pool.prompts)))
