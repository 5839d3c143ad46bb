"""Blinding of A/B comparisons: which slot the canary fills, what the event records, what the reply shows.

The draws use real ``Idempotency`` objects on a real JetStream KV bucket (a nats-server for the module), so
the seed chain is the one the gateway runs: request → seed → slots and display order.
"""

import asyncio
import dataclasses
import datetime
import json

import pytest

from musicrl.bus.connection import connect, ensure_buckets
from musicrl.bus.local_server import LocalNatsServer
from musicrl.config import BusConfig
from musicrl.data.event_tables import event_row
from musicrl.gateway.clips import ClipRecord
from musicrl.gateway.comparisons import Draw, ServedComparison, StoredComparison, draw_comparison, served_event
from musicrl.gateway.idempotency import Idempotency
from musicrl.gateway.routes.comparisons import comparison_public
from musicrl.rollout.routing import PolicyEndpoint, RoutingTable
from musicrl.v1 import events_pb2


STABLE = PolicyEndpoint("stable-predictor:80", "musicgen", "s3://policies/run-41", "v3")
CANARY = PolicyEndpoint("canary-predictor:80", "musicgen-canary", "s3://policies/run-42", "v4-canary")
NOW = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)
DRAWS = 2000  # the canary's share of slot A is then within ±0.011 (1 sd) of ½; the bound below is 4.5 sd


@pytest.fixture(scope="module")
def kv(tmp_path_factory):
    async def open_bucket(url: str):
        client, js = await connect(BusConfig(nats_url=url), "comparisons-test")
        return client, (await ensure_buckets(js, BusConfig(nats_url=url)))["idempotency"]

    with LocalNatsServer(tmp_path_factory.mktemp("nats")) as server:
        loop = asyncio.new_event_loop()
        client, bucket = loop.run_until_complete(open_bucket(server.url))
        yield bucket
        loop.run_until_complete(client.close())
        loop.close()


def _idem(kv, key: str | None, fingerprint: str = "POST /v1/comparisons {prompt}") -> Idempotency:
    return Idempotency(kv, "partner\x00listener-1", key, fingerprint)


def _draws(kv, table: RoutingTable, n: int = DRAWS) -> list[Draw]:
    return [draw_comparison(table, _idem(kv, f"key-{i}")) for i in range(n)]


def test_the_canary_fills_slot_a_and_slot_b_about_half_the_time_each(kv):
    draws = _draws(kv, RoutingTable(STABLE, CANARY, canary_share=1.0))
    in_a = sum(d.canary_slot == "a" for d in draws)
    assert abs(in_a / DRAWS - 0.5) < 0.05, in_a
    for d in draws:
        assert d.canary_slot in ("a", "b")
        canary_index = "ab".index(d.canary_slot)
        assert d.endpoints[canary_index] == CANARY and d.endpoints[1 - canary_index] == STABLE
    # the display order is its own draw: each (canary slot, slot shown first) pairing comes up about a quarter
    for slot in "ab":
        for a_first in (True, False):
            cell = sum(d.canary_slot == slot and d.a_first is a_first for d in draws)
            assert abs(cell / DRAWS - 0.25) < 0.05, (slot, a_first, cell)


def test_the_canary_takes_part_in_its_share_and_never_without_one(kv):
    draws = _draws(kv, RoutingTable(STABLE, CANARY, canary_share=0.3))
    with_canary = [d for d in draws if d.canary_slot is not None]
    assert abs(len(with_canary) / DRAWS - 0.3) < 0.05
    assert all(d.endpoints == (STABLE, STABLE) for d in draws if d.canary_slot is None)
    assert abs(sum(d.canary_slot == "a" for d in with_canary) / len(with_canary) - 0.5) < 0.08
    alone = _draws(kv, RoutingTable(STABLE), n=200)
    assert all(d.endpoints == (STABLE, STABLE) and d.canary_slot is None for d in alone)
    assert 0.35 < sum(d.a_first for d in alone) / 200 < 0.65  # the display order is still drawn
    same = _draws(kv, RoutingTable(STABLE, STABLE, canary_share=1.0), n=50)
    assert all(d.canary_slot is None for d in same)  # a "canary" identical to the stable policy is no canary


def test_a_retry_with_the_same_key_draws_the_same_slots_and_order(kv):
    table = RoutingTable(STABLE, CANARY, canary_share=1.0)
    first = [draw_comparison(table, _idem(kv, f"retry-{i}")) for i in range(200)]
    retried = [draw_comparison(table, _idem(kv, f"retry-{i}")) for i in range(200)]
    assert retried == first
    other_body = [draw_comparison(table, _idem(kv, f"retry-{i}", "another body")) for i in range(200)]
    assert other_body != first  # the seed depends on the request, not on the key alone
    unkeyed = [draw_comparison(table, _idem(kv, None)) for _ in range(200)]
    assert 0.35 < sum(d.canary_slot == "a" for d in unkeyed) / 200 < 0.65  # no key: a fresh random draw


def _clip(slot: str, policy: PolicyEndpoint) -> ClipRecord:
    clip_id = slot * 32
    return ClipRecord(clip_id, "a calm piano piece", policy, 7, 0.4, f"file:///clips/{clip_id}.wav", "c.npy")


def _served(canary_slot: str | None, a_first: bool = True) -> ServedComparison:
    policies = {"a": CANARY if canary_slot == "a" else STABLE, "b": CANARY if canary_slot == "b" else STABLE}
    clips = (_clip("a", policies["a"]), _clip("b", policies["b"]))
    stored = StoredComparison(
        "3f1c2a4e-0000-4000-8000-000000000001", "a calm piano piece", ("a" * 32, "b" * 32), a_first, "u" * 32
    )
    return ServedComparison(stored, clips, canary_slot)


@pytest.mark.parametrize(
    "canary_slot, recorded",
    [("a", events_pb2.CANARY_SLOT_A), ("b", events_pb2.CANARY_SLOT_B), (None, events_pb2.CANARY_SLOT_NONE)],
)
def test_the_event_records_which_policy_fills_each_slot(canary_slot, recorded):
    served = _served(canary_slot, a_first=False)
    event = served_event(served, "3f1c2a4e-0000-4000-8000-000000000002")
    assert event.canary_slot == recorded
    assert (event.clip_a.clip_id, event.clip_b.clip_id) == ("a" * 32, "b" * 32)
    for ref, clip in zip((event.clip_a, event.clip_b), served.clips, strict=True):
        assert (ref.policy.model_uri, ref.policy.version) == (clip.policy.model_uri, clip.policy.version)
    canary_refs = [r for r in (event.clip_a, event.clip_b) if r.policy.version == CANARY.version]
    assert len(canary_refs) == (0 if canary_slot is None else 1)
    assert event.display_order == events_pb2.DISPLAY_ORDER_B_FIRST  # the order is recorded apart from the slots
    # the snapshot's flat table reads it as a short label
    decoded = events_pb2.ComparisonServed.FromString(event.SerializeToString())
    assert event_row(decoded, recorded_at=NOW, stream_sequence=1)["canary_slot"] == (canary_slot or "none")


def _shape(value) -> object:
    """The JSON's structure: keys and value types, not values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_the_reply_is_the_same_shape_whichever_slot_the_canary_fills_and_names_no_policy():
    replies = [
        comparison_public(_served(slot, a_first), min_listened_share=0.5).model_dump(mode="json")
        for slot in ("a", "b", None)
        for a_first in (True, False)
    ]
    assert all(_shape(r) == _shape(replies[0]) for r in replies)
    assert {c["slot"] for c in replies[0]["clips"]} == {"a", "b"}
    canary_in_a, canary_in_b = replies[0], replies[2]  # both shown A first: only the policies differ
    assert canary_in_a == canary_in_b  # nothing in the reply depends on which slot holds the canary
    secrets = [v for p in (STABLE, CANARY) for v in dataclasses.astuple(p)]
    text = json.dumps(replies)
    for reply in replies:
        for value in _strings(reply):
            assert not any(secret in value for secret in secrets), value
    assert "canary" not in text and "policy" not in text and "version" not in text
