"""Where a rollout acts: the serving side that runs the canary next to the stable policy.

The controller decides; a :class:`RolloutTarget` carries the decision out. ``local`` starts and stops
generator processes on this machine; ``kserve`` merge-patches the generator InferenceService. Either way the
controller then writes the gateway's routing table, because the gateway calls the stable and the canary
policy explicitly for the same prompt, which pairwise judging needs.
"""

from dataclasses import dataclass
from typing import Protocol

from musicrl.errors import InvalidRequest
from musicrl.rollout.routing import PolicyEndpoint


@dataclass(frozen=True, slots=True)
class CanarySpec:
    """The policy to serve as the canary.

    Attributes:
        rollout_id: The rollout it belongs to (names the canary's resources, so a retry finds them).
        model_uri: The checkpoint.
        version: Its registry version (``v<n>``), recorded in events.
        traffic_percent: Share of the generation API's traffic the serving side sends to the canary, 0 to 100.
        url: ``host:port`` of a canary that is already being served (the ``local`` target then adopts it
            instead of starting a generator, and never stops it); empty to have the target serve it.
    """

    rollout_id: str
    model_uri: str
    version: str
    traffic_percent: int = 0
    url: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.traffic_percent <= 100:
            raise InvalidRequest(f"traffic_percent must be between 0 and 100, got {self.traffic_percent}")


class RolloutTarget(Protocol):
    """The serving side of a rollout. Every method is idempotent: a restarted controller repeats the last one."""

    async def check_idle(self) -> None:
        """Raise :class:`musicrl.errors.Conflict` when the serving side already runs a canary.

        Two canaries at once leak routes (KServe issue 2130), so a rollout never starts over another one.
        """
        ...

    async def start_canary(self, canary: CanarySpec, stable: PolicyEndpoint) -> PolicyEndpoint:
        """Serve ``canary`` next to ``stable``; returns the endpoint the gateway calls for it."""
        ...

    def stable_during_canary(self, stable: PolicyEndpoint) -> PolicyEndpoint:
        """Where the gateway calls the stable policy while a canary runs.

        Usually ``stable`` itself; in KServe's Serverless mode the main route splits traffic with the canary,
        so pairwise judging must call the previous revision's own tag route instead.
        """
        ...

    async def canary_ready(self, canary: PolicyEndpoint) -> bool:
        """Whether the canary is serving (its pods ready, its model loaded)."""
        ...

    async def promote(self, canary: PolicyEndpoint, stable: PolicyEndpoint) -> PolicyEndpoint:
        """Make the canary the stable policy; returns the endpoint the gateway calls for it from now on."""
        ...

    async def rollback(self, canary: PolicyEndpoint, stable: PolicyEndpoint) -> None:
        """Stop serving the canary; the stable policy serves everything."""
        ...
