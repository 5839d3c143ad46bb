"""The rollout record: one canary's life, kept in the NATS KV bucket ``rollout`` under the key ``current``.

Every writer (``musicrl rollout start|promote|rollback``, the pipeline's last step, the controller) changes it
with a compare-and-set on its KV revision, so two of them never both win: two ``start`` calls cannot both
begin a rollout, and a person's promote cannot cross the controller's rollback. The bucket's history is the
audit trail.

A rollout moves through::

    requested → starting (the canary is being served) → running (ready and warmed up: votes count)
              → deciding (the decision is taken and being carried out) → promoted | rolled_back

``deciding`` is written before anything is acted on, so a controller that dies half-way through an action
finishes that same action when it restarts, rather than judging again.
"""

import dataclasses
import enum
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from musicrl.errors import Conflict, InvalidRequest
from musicrl.rollout.routing import PolicyEndpoint


CURRENT_KEY = "current"


class Status(enum.StrEnum):
    REQUESTED = "requested"
    STARTING = "starting"
    RUNNING = "running"
    DECIDING = "deciding"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"

    @property
    def finished(self) -> bool:
        return self in (Status.PROMOTED, Status.ROLLED_BACK)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision being carried out, or carried out.

    Attributes:
        action: ``promote`` or ``rollback``.
        reason: Why, in a sentence.
        actor: ``controller``, or who pulled the lever by hand.
        evidence: The numbers it was based on (wins, statistics, interval), by name.
        decided_at: When (Unix seconds).
    """

    action: str
    reason: str
    actor: str
    evidence: Mapping[str, float] = field(default_factory=dict)
    decided_at: float = 0.0


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """One rollout.

    Attributes:
        id: Random id; it names the rollout's keys in the bucket and its events.
        status: Where it is (see the module docstring).
        model_uri: The canary's checkpoint.
        version: Its registry version.
        canary_share: Share of comparisons that pit the canary against the stable policy, in [0, 1].
        requested_by: Who or what started it (a person, a pipeline run).
        requested_at: When (Unix seconds).
        canary_url: ``host:port`` of a canary already being served, to adopt (empty: the target serves it).
        stable: The stable policy when the rollout started (wire form of a PolicyEndpoint).
        canary: The canary's endpoint once it is being served.
        ready_at: When the canary was first seen ready.
        counting_from: Comparisons served from then on count (ready plus the warm-up).
        guardrail_failures: Failed guardrail checks so far.
        guardrails_failing: The guardrails failing at the latest check.
        promote_crossed: Whether E_promote has reached 1/α.
        manual: A person's promote or rollback waiting for the controller to carry it out.
        verdict: The decision, once taken.
    """

    id: str
    status: Status
    model_uri: str
    version: str
    canary_share: float
    requested_by: str
    requested_at: float
    canary_url: str = ""
    stable: Mapping[str, str] | None = None
    canary: Mapping[str, str] | None = None
    ready_at: float | None = None
    counting_from: float | None = None
    guardrail_failures: int = 0
    guardrails_failing: tuple[str, ...] = ()
    promote_crossed: bool = False
    manual: Verdict | None = None
    verdict: Verdict | None = None

    @classmethod
    def new(
        cls, model_uri: str, version: str, canary_share: float, requested_by: str, canary_url: str = ""
    ) -> "RolloutRecord":
        """A fresh request. Raises InvalidRequest for a share outside [0, 1] or an empty model URI."""
        check_canary_share(canary_share)
        if not model_uri.strip():
            raise InvalidRequest("a rollout needs the canary's model URI")
        return cls(
            id=uuid.uuid4().hex,
            status=Status.REQUESTED,
            model_uri=model_uri,
            version=version,
            canary_share=float(canary_share),
            requested_by=requested_by,
            requested_at=time.time(),
            canary_url=canary_url,
        )

    def stable_endpoint(self) -> PolicyEndpoint | None:
        return PolicyEndpoint.from_wire(self.stable) if self.stable else None

    def canary_endpoint(self) -> PolicyEndpoint | None:
        return PolicyEndpoint.from_wire(self.canary) if self.canary else None

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "RolloutRecord":
        raw: dict[str, Any] = json.loads(data)
        known = {f.name for f in dataclasses.fields(cls)}
        raw = {k: v for k, v in raw.items() if k in known}  # a newer writer's fields are ignored
        raw["status"] = Status(raw["status"])
        raw["guardrails_failing"] = tuple(raw.get("guardrails_failing") or ())
        for name in ("manual", "verdict"):
            if raw.get(name):
                raw[name] = Verdict(**raw[name])
        return cls(**raw)


def check_canary_share(canary_share: float) -> None:
    """Raise InvalidRequest unless ``canary_share`` is a number in [0, 1]."""
    if not (isinstance(canary_share, int | float) and 0.0 <= canary_share <= 1.0):
        raise InvalidRequest(f"the canary share of comparisons must be between 0 and 1, got {canary_share!r}")


class RolloutStore:
    """The ``current`` rollout record, read and changed by compare-and-set.

    Args:
        kv: The ``rollout`` bucket.
    """

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self) -> tuple[RolloutRecord | None, int]:
        """The record and its revision; (None, 0) before the first rollout."""
        try:
            entry = await self.kv.get(CURRENT_KEY)
        except KeyNotFoundError:
            return None, 0
        if not entry.value:  # deleted or purged
            return None, int(entry.revision or 0)
        return RolloutRecord.from_json(entry.value), int(entry.revision or 0)

    async def begin(self, record: RolloutRecord) -> int:
        """Store a new request, unless a rollout is in flight.

        Raises:
            Conflict: A rollout that has not finished, or a concurrent ``begin`` that won the race.
        """
        current, revision = await self.get()
        if current is not None and not current.status.finished:
            raise Conflict(
                f"rollout {current.id} of {current.version} ({current.model_uri}) is {current.status.value}; "
                "promote or roll it back before starting another",
                retry_after_s=60.0,
            )
        return await self.replace(record, revision)

    async def replace(self, record: RolloutRecord, revision: int) -> int:
        """Write ``record`` if the stored one is still at ``revision`` (0: none yet); returns the new revision.

        Raises:
            Conflict: Someone else changed the record since it was read.
        """
        try:
            if revision == 0:
                return int(await self.kv.create(CURRENT_KEY, record.to_json()))
            return int(await self.kv.update(CURRENT_KEY, record.to_json(), last=revision))
        except KeyWrongLastSequenceError as e:
            raise Conflict("the rollout record changed while this change was being made; read it and try again") from e
