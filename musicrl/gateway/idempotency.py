"""Idempotency keys: a retried request yields the same reply and no second event.

Two mechanisms work together:

* every id a request mints (event ids, clip ids, seeds, comparison ids) is derived from the caller, the
  listener, the ``Idempotency-Key`` and the request's fingerprint, so a retry re-publishes the *same*
  events, which JetStream drops as duplicates within its window (``Nats-Msg-Id``), while a key reused
  for another request — even after its record expired — can never mint the same ids;
* the finished reply is kept in the ``idempotency`` KV bucket and replayed to later retries, so a
  client sees one answer even after the window.

Keys are scoped by (API key id, listener pseudonym): many listeners behind one partner key may pick keys
independently. A key reused with a different request is a 422, which no retry can fix. While a first
request holds its key (its *lease*), a retry is a 409 with ``Retry-After``.

A request that only publishes events with derived ids (feedback) is *repeatable*: running it twice
publishes copies of the same events, which JetStream drops within its duplicate window and the dataset
drops by event id after it. Its record holds only the fingerprint, written before the work; a retry checks
the fingerprint and runs the work again, which re-publishes whatever a crashed first attempt had not, and
answers the same reply. That is one KV write per request instead of a claim and a stored reply, on the
platform's busiest path.
"""

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
from fastapi import Response
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from musicrl.errors import Conflict, IdempotencyKeyReused, InvalidRequest


logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)


MAX_KEY_CHARS = 255
IN_PROGRESS_RETRY_S = 2.0  # Retry-After of a 409: a comparison takes seconds, its lease minutes
KEY_REUSED = "this Idempotency-Key was already used with a different request; use a new key for a new request"
CLAIM_ATTEMPTS = 3  # a claim races only with retries of the same request; three rounds settle it
_NAMESPACE = uuid.UUID("5f0b6a7e-8f3a-4c4e-9a55-1b1c8b8d2f61")  # fixed: derived ids must never change


@dataclass(frozen=True, slots=True)
class StoredReply:
    """A reply to replay: HTTP status and JSON body."""

    status_code: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A request's ``Idempotency-Key`` before it is bound to a caller and listener (what the dependency gives).

    Attributes:
        kv: The ``idempotency`` bucket.
        key: The ``Idempotency-Key`` header, or None.
        fingerprint: A hash of the request (method, path, body).
    """

    kv: KeyValue
    key: str | None
    fingerprint: str

    def __post_init__(self) -> None:
        if self.key is not None and not 0 < len(self.key) <= MAX_KEY_CHARS:
            raise InvalidRequest(f"Idempotency-Key must have 1 to {MAX_KEY_CHARS} characters")

    def for_user(self, key_id: str, user_id: str) -> "Idempotency":
        """The idempotency of this request for the caller ``key_id`` (``ui`` for page sessions) and the
        listener ``user_id`` (a pseudonym)."""
        return Idempotency(self.kv, f"{key_id}\x00{user_id}", self.key, self.fingerprint)


class Idempotency:
    """The idempotency of one request; without a key it mints random ids and stores nothing.

    Args:
        kv: The ``idempotency`` bucket.
        scope: Who is calling: the API key id and the listener pseudonym.
        key: The ``Idempotency-Key`` header, or None.
        fingerprint: A hash of the request (method, path, body).
    """

    def __init__(self, kv: KeyValue, scope: str, key: str | None, fingerprint: str) -> None:
        self.kv = kv
        self.scope = scope
        self.key = key
        self.fingerprint = fingerprint

    @property
    def _record(self) -> str:
        return hashlib.sha256(f"{self.scope}\x00{self.key}".encode()).hexdigest()

    def new_id(self, purpose: str) -> str:
        """A UUID for ``purpose`` (e.g. ``event/preference``): derived from the key if any, else random."""
        if self.key is None:
            return str(uuid.uuid4())
        return str(uuid.uuid5(_NAMESPACE, f"{self.scope}\x00{self.key}\x00{self.fingerprint}\x00{purpose}"))

    def new_seed(self, purpose: str) -> int:
        """A sampling seed in [0, 2^63): derived from the key if any, else random."""
        return uuid.UUID(self.new_id(purpose)).int >> 65

    async def run(
        self, work: Callable[[], Awaitable[ModelT]], model: type[ModelT], lease_s: float, response: Response
    ) -> ModelT:
        """Run ``work`` once per key and return its result; a replayed reply is marked ``Idempotent-Replayed``.

        Args:
            work: The request's work, returning the reply body.
            model: The reply's type (to rebuild a stored reply).
            lease_s: How long a first attempt holds the key against concurrent retries.
            response: The outgoing reply, for the replay header.
        """
        replay = await self.begin(lease_s)
        if replay is not None:
            response.headers["Idempotent-Replayed"] = "true"
            return model.model_validate(replay.body)
        try:
            result = await work()
        except BaseException:
            await self.abandon()
            raise
        await self.finish(200, result.model_dump(mode="json"))
        return result

    async def run_repeatable(self, work: Callable[[], Awaitable[ModelT]], response: Response) -> ModelT:
        """Run ``work``, whose only effects are events with ids derived from this key, once or again.

        Args:
            work: The request's work, returning the reply body; it must return the same reply when run again.
            response: The outgoing reply, marked ``Idempotent-Replayed`` when the key had been seen.

        Raises:
            IdempotencyKeyReused: The key was used with another request (final).
        """
        if self.key is None:
            return await work()
        record = json.dumps({"state": "repeatable", "fingerprint": self.fingerprint}).encode()
        seen = False
        try:
            await self.kv.create(self._record, record)
        except KeyWrongLastSequenceError:
            seen = True
            await self._check_fingerprint()
        try:
            result = await work()
        except BaseException:
            if not seen:
                await self.abandon()  # a request that failed (a 404, the bus down) leaves the key unused
            raise
        if seen:
            response.headers["Idempotent-Replayed"] = "true"
        return result

    async def _check_fingerprint(self) -> None:
        try:
            entry = await self.kv.get(self._record)
        except KeyNotFoundError:  # released by a failed first attempt: this one is as good as first
            return
        if json.loads(entry.value or b"{}").get("fingerprint") != self.fingerprint:
            raise IdempotencyKeyReused(KEY_REUSED)

    async def begin(self, lease_s: float) -> StoredReply | None:
        """Claim the key for ``lease_s``; returns the stored reply if this request was already answered.

        Raises:
            IdempotencyKeyReused: The key was used with another request (final).
            Conflict: The key's first request still holds the lease (retry after ``retry_after_s``).
        """
        if self.key is None:
            return None
        for _ in range(CLAIM_ATTEMPTS):
            claimed, replay = await self._claim(lease_s)
            if claimed or replay is not None:
                return replay
        raise Conflict("a request with this Idempotency-Key is being started concurrently; retry later")

    async def _claim(self, lease_s: float) -> tuple[bool, StoredReply | None]:
        """One round of claiming: (claimed, replay). (False, None) means another request raced us: retry."""
        pending = json.dumps(
            {"state": "pending", "fingerprint": self.fingerprint, "until": time.time() + lease_s}
        ).encode()
        try:
            await self.kv.create(self._record, pending)
            return True, None
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self.kv.get(self._record)
        except KeyNotFoundError:  # released between our create and get: claim it again
            return False, None
        record = json.loads(entry.value or b"{}")
        if record.get("fingerprint") != self.fingerprint:
            raise IdempotencyKeyReused(KEY_REUSED)
        if record.get("state") == "done":
            return False, StoredReply(int(record["status_code"]), record["body"])
        wait_s = float(record.get("until", 0)) - time.time()
        if wait_s > 0:
            # the first request usually finishes long before its lease runs out: ask for a retry soon
            raise Conflict(
                "a request with this Idempotency-Key is still in progress; retry later",
                min(wait_s, IN_PROGRESS_RETRY_S),
            )
        try:
            await self.kv.update(self._record, pending, last=entry.revision)  # the lease ran out: take over
        except KeyWrongLastSequenceError:  # another retry took over first
            return False, None
        return True, None

    async def finish(self, status_code: int, body: dict[str, Any]) -> None:
        """Store the reply for retries."""
        if self.key is None:
            return
        record = {"state": "done", "fingerprint": self.fingerprint, "status_code": status_code, "body": body}
        await self.kv.put(self._record, json.dumps(record).encode())

    async def abandon(self) -> None:
        """Release the key after a failure, so that a retry runs the request again (with the same ids)."""
        if self.key is None:
            return
        try:
            await self.kv.delete(self._record)
        except KeyNotFoundError:
            pass
        except nats.errors.Error:  # the bus is down: the lease runs out by itself
            logger.warning("could not release Idempotency-Key record %s", self._record)
