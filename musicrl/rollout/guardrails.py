"""The canary's guardrails, checked on a timer: is it ready, and are its errors and latency no worse than stable's.

Counts are taken from the generators' Prometheus metrics as differences from the first sample after the
warm-up, so the stable policy's history before the rollout does not dilute the comparison. A restarted
controller takes a new first sample: the guardrails then judge from the restart on, which errs toward
judging fewer requests, never toward inventing failures.
"""

import logging

from musicrl.errors import UpstreamUnavailable
from musicrl.rollout import health
from musicrl.rollout.config import ControllerConfig
from musicrl.rollout.record import RolloutRecord
from musicrl.rollout.target import RolloutTarget


logger = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 5.0


class GuardrailProbe:
    """Checks a running canary against the stable policy.

    Args:
        config: The limits.
        target: Answers whether the canary is ready, and where the stable policy is served while it runs.
    """

    def __init__(self, config: ControllerConfig, target: RolloutTarget) -> None:
        self.guardrails = config.guardrails
        self.target = target
        self._baselines: dict[str, health.MetricsSample] = {}

    def reset(self) -> None:
        """Forget the baselines (a new rollout)."""
        self._baselines.clear()

    async def check(self, record: RolloutRecord) -> list[str] | None:
        """The guardrails that fail now, as sentences; None when nothing could be judged yet."""
        canary, stable = record.canary_endpoint(), record.stable_endpoint()
        if canary is None or stable is None:
            return None
        if not await self.target.canary_ready(canary):
            return ["the canary is not ready"]
        # where the gateway calls the stable policy meanwhile: KServe Serverless's main route also reaches the canary
        stable = self.target.stable_during_canary(stable)
        try:
            samples = [await health.scrape(e.url, e.model_name, SCRAPE_TIMEOUT_S) for e in (canary, stable)]
        except UpstreamUnavailable as e:
            return [f"the generators' metrics cannot be read: {e}"]
        if not self._baselines:
            self._baselines = {"canary": samples[0], "stable": samples[1]}
            return None
        canary_health = health.EndpointHealth.between(self._baselines["canary"], samples[0])
        stable_health = health.EndpointHealth.between(self._baselines["stable"], samples[1])
        return health.check_guardrails(canary_health, stable_health, self.guardrails)
