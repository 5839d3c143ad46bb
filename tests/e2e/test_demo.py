"""The closed loop, shortened for CI: ``musicrl demo``'s own code, through every real interface.

The local stack runs as ``musicrl up`` runs it (nats-server, generator, recorder, gateway, rollout
controller); simulated listeners with a hidden taste use the REST API; the recorder writes the Parquet
dataset; the retraining pipeline runs under kfp.local and its last step asks the controller for the canary;
the same listeners judge stable against canary until the controller decides. The toy policy is trained
here (``toy://musicgen``), so brightness is something RL can change.

Shortened: fewer comparisons and RL steps than ``make demo``; each round takes ~2-3 minutes on 2 cores.
"""

import json
import math

import pytest

from musicrl.data.dataset import read_kind
from musicrl.demo.loop import DemoRun
from musicrl.demo.measure import difference_interval
from musicrl.pipeline.registry import PolicyRegistry
from musicrl.v1 import events_pb2
from tests.utils.demo import short_demo


# two rounds take ~7 min alone and ~9 under CI's load; the module fixture runs inside the first test's limit
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return short_demo(tmp_path_factory.mktemp("bright"), taste="brightness", rounds=2)


def test_listeners_promote_a_canary_that_serves_their_hidden_taste_better(two_rounds):
    report = (two_rounds.out_dir / "report.txt").read_text()
    promoted = [r for r in two_rounds.rounds if r.promoted]
    # a round may end without one (its preference model learned nothing, or the canary was not preferred);
    # over two rounds the listeners' taste must reach the stable policy
    assert promoted, report
    for result in promoted:
        assert result.rollout is not None and result.rollout.verdict is not None
        assert result.rollout.verdict.actor == "controller"  # the rollout's own sequential test decided
        evidence = result.rollout.verdict.evidence
        assert evidence["canary_wins"] > evidence["stable_wins"]
        decisive = [v for v in result.canary_votes if not math.isnan(v)]
        assert sum(decisive) / len(decisive) > 0.5  # as the listeners cast them, blind to which clip was the canary
        assert result.stable_after is not None and result.stable_after.version == result.rollout.version
        gain, _, _ = difference_interval(result.stable_before, result.stable_after)
        assert gain > 0, report  # the listeners' taste, measured on held-out prompts and common seeds
    for result in two_rounds.rounds:
        if not result.promoted:  # nothing reaches the listeners without a promotion
            assert result.stable_after is not None and result.stable_after.version == result.stable_before.version
    last = two_rounds.rounds[-1].stable_after
    assert last is not None
    diff, low, high = difference_interval(two_rounds.rounds[0].stable_before, last)  # after the whole demo
    assert low > 0, f"hidden-taste gain {diff:+.4f} [{low:+.4f}, {high:+.4f}]\n{report}"


def test_round_two_retrains_from_the_stable_policy_round_one_left_and_its_events_carry_its_version(two_rounds):
    first, second = two_rounds.rounds
    left = first.stable_after
    assert left is not None
    assert (second.stable_before.version, second.stable_before.model_uri) == (left.version, left.model_uri)
    out = two_rounds.out_dir
    assert second.run_dir is not None  # round 2 held enough new preferences to retrain
    # the reward model of round 2 starts from the policy its listeners heard (MusicRL: the RM is the generator)
    meta = json.loads((second.run_dir / "preference" / "musicrl.json").read_text())
    assert meta["parent_uri"] == left.model_uri
    versions = PolicyRegistry(str(out / "artifacts" / "registry")).list()
    if first.promoted:  # the on-policy loop: round 2 finetunes what round 1 promoted
        assert first.rollout is not None and versions[0].version == first.rollout.version == left.version
        if second.rollout is not None:  # round 2 registered a candidate: its parent is round 1's promoted policy
            assert versions[1].parent_uri == left.model_uri
    served = read_kind(
        str(out / "state" / "dataset"),
        events_pb2.ComparisonServed,
        ["comparison_id", "clip_a_policy_version", "clip_b_policy_version", "clip_a_policy_model_uri"],
    ).to_pylist()
    round_two = [row for row in served if row["comparison_id"] in set(second.comparison_ids)]
    assert len({row["comparison_id"] for row in round_two}) == second.comparisons
    assert {(r["clip_a_policy_version"], r["clip_b_policy_version"]) for r in round_two} == {(left.version,) * 2}
    assert {r["clip_a_policy_model_uri"] for r in round_two} == {left.model_uri}
    report = (out / "report.txt").read_text()
    assert "Round 2" in report and f"({left.version})" in report
