"""Idempotency keys: a retried request yields the same reply and no second event.

Two mechanisms work together:

* every id a request mints (event ids, clip ids, seeds, comparison ids) is derived from the caller and
  its ``Idempotency-Key``, so a retry re-publishes the *same* events, which JetStream drops as duplicates
  within its window (``Nats-Msg-Id``);
* the finished reply is kept in the ``idempotency`` KV bucket and replayed to later retries, so a
  client sees one answer even after the window.

A key reused with a different body is a 409. While a first request holds its key (its *lease*), a retry
is a 409 too; a request that only publishes events takes a zero lease, since running it twice publishes
the same events, which JetStream deduplicates.
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

from musicrl.errors import Conflict, InvalidRequest


logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)


MAX_KEY_CHARS = 255
_NAMESPACE = uuid.UUID("5f0b6a7e-8f3a-4c4e-9a55-1b1c8b8d2f61")  # fixed: derived ids must never change


@dataclass(frozen=True, slots=True)
class StoredReply:
    """A reply to replay: HTTP status and JSON body."""

    status_code: int
    body: dict[str, Any]


class Idempotency:
    """The idempotency of one request; without a key it mints random ids and stores nothing.

    Args:
        kv: The ``idempotency`` bucket.
        scope: Who is calling (the caller's rate key) — keys are per caller.
        key: The ``Idempotency-Key`` header, or None.
        fingerprint: A hash of the request (method, path, body).
    """

    def __init__(self, kv: KeyValue, scope: str, key: str | None, fingerprint: str) -> None:
        if key is not None and not 0 < len(key) <= MAX_KEY_CHARS:
            raise InvalidRequest(f"Idempotency-Key must have 1 to {MAX_KEY_CHARS} characters")
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
        return str(uuid.uuid5(_NAMESPACE, f"{self.scope}\x00{self.key}\x00{purpose}"))

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

    async def begin(self, lease_s: float) -> StoredReply | None:
        """Claim the key for ``lease_s``; returns the stored reply if this request was already answered.

        Raises:
            Conflict: The key was used with another request, or its first request still holds the lease.
        """
        if self.key is None:
            return None
        pending = json.dumps(
            {"state": "pending", "fingerprint": self.fingerprint, "until": time.time() + lease_s}
        ).encode()
        try:
            await self.kv.create(self._record, pending)
            return None
        except KeyWrongLastSequenceError:
            pass
        entry = await self.kv.get(self._record)
        record = json.loads(entry.value or b"{}")
        if record.get("fingerprint") != self.fingerprint:
            raise Conflict("this Idempotency-Key was already used with a different request")
        if record.get("state") == "done":
            return StoredReply(int(record["status_code"]), record["body"])
        if time.time() < float(record.get("until", 0)):
            raise Conflict("a request with this Idempotency-Key is still in progress; retry later")
        await self.kv.update(self._record, pending, last=entry.revision)  # the lease ran out: take over
        return None

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
