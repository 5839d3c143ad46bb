"""The routing table: which policy endpoints serve comparisons, and how often the canary takes part.

On a cluster the rollout controller patches the KServe InferenceService (``canaryTrafficPercent``); locally,
and for the gateway's comparisons everywhere, this table in the NATS KV bucket ``routing`` plays that role.
"""

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from musicrl.bus.events import new_header
from musicrl.errors import InvalidRequest, NotFound
from musicrl.v1 import events_pb2


ROUTING_KEY = "table"


@dataclass(frozen=True, slots=True)
class PolicyEndpoint:
    """One deployed policy.

    Attributes:
        url: ``host:port`` of its V2 REST endpoint.
        model_name: Its model name on that endpoint.
        model_uri: The checkpoint it serves (recorded in events).
        version: A version label (recorded in events).
    """

    url: str
    model_name: str
    model_uri: str
    version: str

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "PolicyEndpoint":
        try:
            return cls(str(data["url"]), str(data["model_name"]), str(data["model_uri"]), str(data["version"]))
        except KeyError as e:
            raise InvalidRequest(f"a policy endpoint lacks field {e}") from e

    def to_wire(self) -> dict[str, str]:
        return {"url": self.url, "model_name": self.model_name, "model_uri": self.model_uri, "version": self.version}


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Stable and canary policies and the share of comparisons that pit the canary against the stable one.

    Attributes:
        stable: The policy every request goes to by default.
        canary: The policy under evaluation, if any.
        canary_share: Fraction of comparisons that are stable-vs-canary (the rest are stable-vs-stable with
            different seeds).
    """

    stable: PolicyEndpoint
    canary: PolicyEndpoint | None = None
    canary_share: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.canary_share) and 0.0 <= self.canary_share <= 1.0):
            raise InvalidRequest(f"canary_share must be between 0 and 1, got {self.canary_share}")
        if self.canary is None and self.canary_share > 0:
            raise InvalidRequest("canary_share > 0 needs a canary endpoint")

    def comparison_pair(self, rng: random.Random) -> tuple[PolicyEndpoint, PolicyEndpoint]:
        """The policies of slot A and slot B for one comparison.

        With probability ``canary_share`` the canary takes part, and then a second draw puts it in slot A or
        slot B with probability ½ each: were it always in one slot, anyone reading a comparison's slot names
        would know which clip is the canary's, and the votes would not be blind.

        Args:
            rng: The comparison's own generator (seeded from the request, so a retry draws the same pair).
                It is not drawn from without a canary, once when the canary sits this comparison out, and
                twice when it takes part.

        Returns:
            The endpoint of slot A and that of slot B; both are ``stable`` when the canary does not take part.
        """
        if self.canary is None or rng.random() >= self.canary_share:
            return self.stable, self.stable
        if rng.random() < 0.5:
            return self.canary, self.stable
        return self.stable, self.canary

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "RoutingTable":
        """Read the JSON form; unknown fields are ignored."""
        canary = data.get("canary")
        return cls(
            stable=PolicyEndpoint.from_wire(data["stable"]),
            canary=PolicyEndpoint.from_wire(canary) if canary else None,
            canary_share=float(data.get("canary_share", 0.0)),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "stable": self.stable.to_wire(),
            "canary": self.canary.to_wire() if self.canary else None,
            "canary_share": self.canary_share,
        }


class RoutingStore:
    """The routing table in the ``routing`` KV bucket, with a fallback when none was written yet.

    Args:
        kv: The bucket.
        default: The table used while the bucket holds none.
    """

    def __init__(self, kv: KeyValue, default: RoutingTable | None = None) -> None:
        self.kv = kv
        self.default = default

    async def get(self) -> RoutingTable:
        """The current table.

        Raises:
            NotFound: The bucket holds none and this store has no default (no gateway has started yet).
        """
        try:
            entry = await self.kv.get(ROUTING_KEY)
        except KeyNotFoundError:
            if self.default is None:
                raise NotFound("no routing table yet: start the gateway first, which writes its default") from None
            return self.default
        return RoutingTable.from_wire(json.loads(entry.value or b"{}"))

    async def put_default(self) -> None:
        """Write the default table unless one is stored, so the rollout controller knows the stable policy."""
        if self.default is None:
            return
        try:
            await self.kv.create(ROUTING_KEY, json.dumps(self.default.to_wire()).encode())
        except KeyWrongLastSequenceError:  # a table is there already: it wins over this replica's default
            pass

    async def put(self, table: RoutingTable) -> int:
        """Replace the table; returns the KV revision (the bucket keeps a history of them)."""
        return int(await self.kv.put(ROUTING_KEY, json.dumps(table.to_wire()).encode()))


def rollout_event(
    table: RoutingTable, action: "events_pb2.RolloutAction", reason: str, event_id: str | None = None
) -> Message:
    """The PolicyRollout event that records a change of the routing table.

    Args:
        table: The table after the change.
        action: A ``RolloutAction`` value of the v1 schema.
        reason: Why, in a sentence (who changed it, which analysis decided it).
        event_id: The event id (default: a fresh one).
    """
    return events_pb2.PolicyRollout(
        header=new_header(event_id),
        action=action,
        stable_model_uri=table.stable.model_uri,
        canary_model_uri=table.canary.model_uri if table.canary else "",
        canary_percent=100.0 * table.canary_share,
        reason=reason,
    )
