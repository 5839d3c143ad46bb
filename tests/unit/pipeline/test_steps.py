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


def test_a_run_that_does_not_require_a_learned_model_goes_on_to_rl_anyway():
    assert preference_outcome(_trained(0, [0.4]), "R,U,RU", required=False).usable
    assert not preference_outcome(_trained(0, [0.4]), "R,U,RU", required=True).usable


def test_serving_reads_the_stable_policy_the_routing_table_names_when_the_run_starts(tmp_path):
    import asyncio

    from musicrl.bus.connection import connect, ensure_buckets
    from musicrl.bus.local_server import LocalNatsServer
    from musicrl.config import BusConfig
    from musicrl.errors import NotFound
    from musicrl.pipeline.steps import resolve_stable
    from musicrl.rollout.routing import PolicyEndpoint, RoutingStore, RoutingTable

    async def publish(url: str, table: RoutingTable) -> None:
        client, js = await connect(BusConfig(nats_url=url), name="test")
        try:
            await RoutingStore((await ensure_buckets(js, BusConfig(nats_url=url)))["routing"]).put(table)
        finally:
            await client.drain()

    with LocalNatsServer(tmp_path / "nats") as server:
        with pytest.raises(NotFound, match="no routing table yet"):
            resolve_stable("serving", server.url)  # no gateway has started on this bus
        promoted = PolicyEndpoint("10.0.0.7:8080", "generator", "s3://musicrl/artifacts/runs/r7/rl-ru/step-200", "v7")
        canary = PolicyEndpoint("10.0.0.8:8080", "generator", "s3://musicrl/artifacts/runs/r8/rl-ru/step-200", "v8")
        asyncio.run(publish(server.url, RoutingTable(promoted, canary, 0.5)))
        assert resolve_stable("serving", server.url) == promoted.model_uri  # the stable one, not the canary
        assert resolve_stable("hf://facebook/musicgen-small", server.url) == "hf://facebook/musicgen-small"
