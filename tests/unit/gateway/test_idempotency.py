"""Idempotency keys against a real JetStream KV bucket (a nats-server started for the module)."""

import asyncio

import pytest
from fastapi import Response

from musicrl.bus.connection import connect, ensure_buckets
from musicrl.bus.local_server import LocalNatsServer
from musicrl.config import BusConfig
from musicrl.errors import BusUnavailable, Conflict, IdempotencyKeyReused
from musicrl.gateway.idempotency import Idempotency, IdempotencyKey
from musicrl.gateway.schemas import EventPublic


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory):
    with LocalNatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server.url


def _run(nats_url: str, scenario) -> object:
    async def main() -> object:
        client, js = await connect(BusConfig(nats_url=nats_url), "idempotency-test")
        try:
            kv = (await ensure_buckets(js, BusConfig(nats_url=nats_url)))["idempotency"]
            return await scenario(kv)
        finally:
            await client.close()

    return asyncio.run(main())


def test_in_progress_is_a_409_with_a_short_retry_after_and_reuse_is_final(nats_url):
    async def scenario(kv):
        first = IdempotencyKey(kv, "k-progress", "body-1").for_user("partner", "alice")
        assert await first.begin(lease_s=120) is None
        with pytest.raises(Conflict) as in_progress:
            await IdempotencyKey(kv, "k-progress", "body-1").for_user("partner", "alice").begin(lease_s=120)
        with pytest.raises(IdempotencyKeyReused, match="different request"):
            await IdempotencyKey(kv, "k-progress", "body-2").for_user("partner", "alice").begin(lease_s=120)
        return in_progress.value

    conflict = _run(nats_url, scenario)
    assert conflict.http_status == 409 and 0 < conflict.retry_after_s <= 2  # not the lease's 120 s


def test_keys_are_scoped_per_listener_and_ids_depend_on_the_body(nats_url):
    async def scenario(kv):
        key = IdempotencyKey(kv, "shared-key", "body-1")
        alice, bob = key.for_user("partner", "alice"), key.for_user("partner", "bob")
        assert await alice.begin(lease_s=60) is None
        assert await bob.begin(lease_s=60) is None  # no collision behind one partner key
        other_body = IdempotencyKey(kv, "shared-key", "body-2").for_user("partner", "alice")
        return alice.new_id("event"), bob.new_id("event"), other_body.new_id("event"), alice.new_id("event")

    alice, bob, alice_other_body, alice_again = _run(nats_url, scenario)
    assert alice == alice_again  # a retry mints the same id
    assert len({alice, bob, alice_other_body}) == 3  # a key reused after its TTL cannot mint the same ids


class ReleasedBeforeGet:
    """The real bucket, except that the record is deleted just before each read — as if the first request
    failed and released its key between our ``create`` and our ``get``."""

    def __init__(self, kv) -> None:
        self.kv = kv
        self.releases = 0

    async def create(self, key, value):
        return await self.kv.create(key, value)

    async def get(self, key):
        if self.releases == 0:
            self.releases += 1
            await self.kv.delete(key)
        return await self.kv.get(key)

    async def update(self, key, value, last):
        return await self.kv.update(key, value, last=last)


def test_a_key_released_between_create_and_get_is_claimed_not_a_500(nats_url):
    async def scenario(kv):
        await IdempotencyKey(kv, "k-race", "body").for_user("partner", "alice").begin(lease_s=60)
        racing = ReleasedBeforeGet(kv)
        claimed = await Idempotency(racing, "partner\x00alice", "k-race", "body").begin(lease_s=60)
        return claimed, racing.releases

    claimed, releases = _run(nats_url, scenario)
    assert releases == 1 and claimed is None  # the retry took the key over instead of failing


class _Work:
    """Feedback-like work: counts its runs and returns the same reply each time."""

    def __init__(self, fail: bool = False) -> None:
        self.runs = 0
        self.fail = fail

    async def __call__(self) -> EventPublic:
        self.runs += 1
        if self.fail:
            raise BusUnavailable("the event bus did not acknowledge the event")
        return EventPublic(event_id="e" * 36)


def test_a_repeatable_request_runs_again_on_a_retry_and_a_reused_key_runs_nothing(nats_url):
    async def scenario(kv):
        work, replies = _Work(), []
        for _ in range(2):
            response = Response()
            await IdempotencyKey(kv, "k-repeat", "body-1").for_user("partner", "alice").run_repeatable(work, response)
            replies.append(response.headers.get("Idempotent-Replayed"))
        other = _Work()
        with pytest.raises(IdempotencyKeyReused, match="different request"):
            await (
                IdempotencyKey(kv, "k-repeat", "body-2").for_user("partner", "alice").run_repeatable(other, Response())
            )
        return work.runs, replies, other.runs

    runs, replies, reused_runs = _run(nats_url, scenario)
    assert runs == 2  # the retry re-publishes: whatever a crashed first attempt left out lands now
    assert replies == [None, "true"]
    assert reused_runs == 0  # no event of a second request under one key


def test_a_failed_repeatable_request_leaves_its_key_unused(nats_url):
    async def scenario(kv):
        with pytest.raises(BusUnavailable):
            await (
                IdempotencyKey(kv, "k-fail", "body-1")
                .for_user("partner", "alice")
                .run_repeatable(_Work(fail=True), Response())
            )
        response, work = Response(), _Work()
        # another body under the same key is a first request now, not a reuse: the failure published nothing
        await IdempotencyKey(kv, "k-fail", "body-2").for_user("partner", "alice").run_repeatable(work, response)
        return work.runs, response.headers.get("Idempotent-Replayed")

    assert _run(nats_url, scenario) == (1, None)


class DiesBeforeRelease:
    """The real bucket, except that nothing is ever deleted: the process died before it could release."""

    def __init__(self, kv) -> None:
        self.kv = kv

    async def create(self, key, value):
        return await self.kv.create(key, value)

    async def delete(self, key):
        pass


def test_a_repeatable_record_left_by_a_crash_still_gets_its_event(nats_url):
    """The first attempt wrote its record and died before its event: the retry must publish it."""

    async def scenario(kv):
        with pytest.raises(BusUnavailable):
            await Idempotency(DiesBeforeRelease(kv), "partner\x00alice", "k-crash", "body-1").run_repeatable(
                _Work(fail=True), Response()
            )
        work, response = _Work(), Response()
        await IdempotencyKey(kv, "k-crash", "body-1").for_user("partner", "alice").run_repeatable(work, response)
        return work.runs, response.headers.get("Idempotent-Replayed")

    assert _run(nats_url, scenario) == (1, "true")
