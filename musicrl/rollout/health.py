"""The canary's health from its generator's Prometheus metrics: error rate and p95 latency against the stable's.

Every model server exposes ``/metrics`` on its HTTP port (:mod:`musicrl.serving.metrics`): the counter
``musicrl_inference_requests_total{model, outcome}`` (outcome ``ok``, ``invalid`` or ``error``) and the
histogram ``musicrl_inference_request_latency_seconds{model}``. Both count from the server's start, so the
rollout takes a :class:`MetricsSample` of each policy when it starts counting and judges the difference to
a later one (:class:`EndpointHealth`) with :func:`check_guardrails`.

One URL is one process: behind a Service with several replicas each scrape may reach another pod, so scrape
each pod and add their :class:`EndpointHealth` up with :meth:`EndpointHealth.total`.
"""

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from musicrl.errors import InvalidRequest, UpstreamUnavailable


logger = logging.getLogger(__name__)

# The names as the parser reports them (a counter's family drops ``_total``); see musicrl/serving/metrics.py.
REQUESTS_FAMILY = "musicrl_inference_requests"
LATENCY_FAMILY = "musicrl_inference_request_latency_seconds"
ERROR, INVALID = "error", "invalid"  # outcomes: the server failed; the client sent a bad request
P95 = 0.95

Buckets = tuple[tuple[float, float], ...]  # (upper bound in seconds, cumulative count), ascending, last +inf


@dataclass(frozen=True, slots=True)
class MetricsSample:
    """One model's request counters and latency histogram as one server process reported them.

    Attributes:
        model_name: The ``model`` label they were read for.
        requests: ``(outcome, count)`` pairs, sorted by outcome, counted since the process started.
        latency_buckets: The latency histogram's cumulative buckets: ``(upper bound in s, count)``, ascending,
            the last one ``+inf``; empty before the model served its first request.
        created_s: When the process created the histogram (Unix seconds): a different value in a later
            sample means the server restarted and its counts began again. None if it was not exposed.
    """

    model_name: str
    requests: tuple[tuple[str, float], ...] = ()
    latency_buckets: Buckets = ()
    created_s: float | None = None

    def count(self, outcome: str) -> float:
        """Requests that ended with ``outcome`` (0 for an outcome never seen)."""
        return dict(self.requests).get(outcome, 0.0)

    @classmethod
    def parse(cls, text: str, model_name: str) -> "MetricsSample":
        """Read ``model_name``'s series from Prometheus text exposition; other models' series are ignored.

        Raises:
            InvalidRequest: ``text`` is not Prometheus text exposition.
        """
        requests: dict[str, float] = {}
        buckets: dict[float, float] = {}
        created_s = None
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.labels.get("model") != model_name:
                        continue
                    if sample.name == REQUESTS_FAMILY + "_total":
                        outcome = sample.labels.get("outcome", "")
                        requests[outcome] = requests.get(outcome, 0.0) + sample.value
                    elif sample.name == LATENCY_FAMILY + "_bucket":
                        buckets[float(sample.labels["le"])] = sample.value  # "+Inf" reads as math.inf
                    elif sample.name == LATENCY_FAMILY + "_created":
                        created_s = sample.value
        except (ValueError, KeyError, TypeError) as e:  # the parser's errors for malformed lines
            raise InvalidRequest(f"the metrics page is not Prometheus text exposition: {e}") from e
        return cls(model_name, tuple(sorted(requests.items())), tuple(sorted(buckets.items())), created_s)


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """What one policy's server did between two samples.

    Attributes:
        requests: Requests it answered, except ``invalid`` ones (a bad request is the client's fault, and
            the stable and the canary see the same requests, so counting them would only dilute the rate).
        errors: Requests that failed on the server's side (outcome ``error``).
        invalid: Requests refused as invalid (reported, never judged).
        latency_buckets: The latency histogram's cumulative bucket counts over the interval (every outcome).
    """

    requests: float = 0.0
    errors: float = 0.0
    invalid: float = 0.0
    latency_buckets: Buckets = ()

    @property
    def error_rate(self) -> float | None:
        """Errors per judged request, 0 to 1; None without requests."""
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def latency_count(self) -> float:
        """Latency observations over the interval (the ``+inf`` bucket)."""
        return self.latency_buckets[-1][1] if self.latency_buckets else 0.0

    @property
    def p95_latency_s(self) -> float | None:
        """The 95th percentile of request latency in seconds, estimated from the buckets; None without requests."""
        return histogram_quantile(P95, self.latency_buckets)

    @classmethod
    def between(cls, baseline: MetricsSample, current: MetricsSample) -> "EndpointHealth":
        """The counts of ``current`` minus those of ``baseline``.

        When the server restarted in between (its histogram was created anew, or a count went down), the
        counts before the restart are lost: the health is then what ``current`` counted since the restart.

        Raises:
            InvalidRequest: The samples are of different models.
        """
        if baseline.model_name != current.model_name:
            raise InvalidRequest(
                f"cannot subtract samples of different models ({baseline.model_name!r}, {current.model_name!r})"
            )
        if _restarted(baseline, current):
            logger.info("the server of %s restarted since the baseline: counting from the restart", current.model_name)
            baseline = MetricsSample(current.model_name)
        outcomes = {outcome for outcome, _ in current.requests}
        judged = sum(current.count(o) - baseline.count(o) for o in outcomes if o != INVALID)
        before = dict(baseline.latency_buckets)
        buckets = tuple((bound, count - before.get(bound, 0.0)) for bound, count in current.latency_buckets)
        return cls(
            requests=judged,
            errors=current.count(ERROR) - baseline.count(ERROR),
            invalid=current.count(INVALID) - baseline.count(INVALID),
            latency_buckets=buckets,
        )

    @classmethod
    def total(cls, parts: Iterable["EndpointHealth"]) -> "EndpointHealth":
        """The health of one policy served by several processes (replicas): their counts added up.

        Raises:
            InvalidRequest: The parts' histograms have different bucket bounds.
        """
        parts = list(parts)
        bounds = {tuple(b for b, _ in p.latency_buckets) for p in parts if p.latency_buckets}
        if len(bounds) > 1:
            raise InvalidRequest(f"the replicas' latency histograms have different buckets: {sorted(bounds)}")
        summed: dict[float, float] = {}
        for part in parts:
            for bound, count in part.latency_buckets:
                summed[bound] = summed.get(bound, 0.0) + count
        return cls(
            requests=sum(p.requests for p in parts),
            errors=sum(p.errors for p in parts),
            invalid=sum(p.invalid for p in parts),
            latency_buckets=tuple(sorted(summed.items())),
        )


def _restarted(baseline: MetricsSample, current: MetricsSample) -> bool:
    """Whether the server restarted between the samples: a count that fell is a reset, as in PromQL's
    ``increase``; the histogram's creation time also catches a restart whose counts already passed the old."""
    if None not in (baseline.created_s, current.created_s) and baseline.created_s != current.created_s:
        return True
    if any(current.count(outcome) < count for outcome, count in baseline.requests):
        return True
    now = dict(current.latency_buckets)
    return any(bound not in now or now[bound] < count for bound, count in baseline.latency_buckets)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram, as PromQL's ``histogram_quantile`` estimates it.

    The bucket that holds rank ``q · total`` is found, and the value is interpolated linearly between its
    lower and upper bound (the first bucket's lower bound is 0). A rank in the ``+inf`` bucket gives the
    highest finite bound, as in PromQL: the histogram cannot say more.

    Args:
        q: The quantile, 0 to 1.
        buckets: ``(upper bound, cumulative count)`` pairs, ascending, the last one ``+inf``.

    Returns:
        The estimate in the bounds' unit; None for an empty histogram, or one with no finite bound.
    """
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank and count > below:
            if math.isinf(upper):
                return lower if lower > 0 else None  # only a +inf bucket: no finite bound to report
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


@dataclass(frozen=True, slots=True)
class Guardrails:
    """When a canary's server counts as unhealthy.

    Attributes:
        max_error_rate: The highest share of the canary's requests that may fail on the server's side.
        max_latency_ratio: The highest canary p95 latency, as a multiple of the stable policy's p95.
        min_requests: Requests the canary must have answered before its error rate is judged, and latency
            observations each policy must have before the latency ratio is.
    """

    max_error_rate: float = 0.05  # share of requests, 0 to 1: one failure in twenty is a broken canary, not noise
    max_latency_ratio: float = 1.5  # canary p95 / stable p95: half as slow again is felt by people waiting on a clip
    min_requests: int = 20  # per policy: with fewer, a single error is already 5 % and a p95 is one request

    def __post_init__(self) -> None:
        if not (isinstance(self.max_error_rate, int | float) and 0.0 <= self.max_error_rate <= 1.0):
            raise InvalidRequest(f"max_error_rate must be a share between 0 and 1, got {self.max_error_rate!r}")
        ratio = self.max_latency_ratio
        if not (isinstance(ratio, int | float) and math.isfinite(ratio) and ratio >= 1.0):
            raise InvalidRequest(
                f"max_latency_ratio must be a finite ratio of at least 1 (canary p95 over stable p95), got {ratio!r}"
            )
        if isinstance(self.min_requests, bool) or not isinstance(self.min_requests, int) or self.min_requests < 1:
            raise InvalidRequest(f"min_requests must be a whole number of at least 1, got {self.min_requests!r}")


def check_guardrails(canary: EndpointHealth, stable: EndpointHealth, guardrails: Guardrails) -> list[str]:
    """The guardrails the canary fails, each as a sentence; empty when it passes.

    A guardrail with too little data is not judged, and so does not fail: the error rate waits for
    ``min_requests`` canary requests, the latency for ``min_requests`` latency observations of each policy.

    Args:
        canary: The canary's health since the rollout started counting.
        stable: The stable policy's health over the same interval.
        guardrails: The limits.

    Returns:
        One sentence per failed guardrail.
    """
    failed = []
    rate = canary.error_rate
    if canary.requests >= guardrails.min_requests and rate is not None and rate > guardrails.max_error_rate:
        failed.append(
            f"the canary's error rate is {rate:.1%} ({canary.errors:.0f} of {canary.requests:.0f} requests), "
            f"over the limit of {guardrails.max_error_rate:.1%}"
        )
    enough = min(canary.latency_count, stable.latency_count) >= guardrails.min_requests
    canary_p95, stable_p95 = canary.p95_latency_s, stable.p95_latency_s
    if enough and canary_p95 is not None and stable_p95 is not None and stable_p95 > 0:
        ratio = canary_p95 / stable_p95
        if ratio > guardrails.max_latency_ratio:
            failed.append(
                f"the canary's p95 latency is {canary_p95:.3g} s, {ratio:.2f} times the stable policy's "
                f"{stable_p95:.3g} s, over the limit of {guardrails.max_latency_ratio:g} times"
            )
    return failed


def metrics_url(url: str) -> str:
    """The metrics page of a model server: ``http://host:port/metrics`` for ``host:port`` (a policy endpoint's
    ``url``); a URL with a scheme is taken to be the page itself."""
    return url if "://" in url else f"http://{url}/metrics"


async def scrape(url: str, model_name: str, timeout_s: float) -> MetricsSample:
    """Read one model's metrics from a model server's Prometheus page.

    Args:
        url: The server's ``host:port`` (a policy endpoint's ``url``: KServe serves ``/metrics`` on the
            inference port), or the page's full URL; see :func:`metrics_url`.
        model_name: The model's name on that server (the ``model`` label).
        timeout_s: The most seconds the whole request may take.

    Returns:
        The sample.

    Raises:
        UpstreamUnavailable: The page cannot be reached, answers other than 200, or is not Prometheus text.
    """
    # here, not at the top: Guardrails is part of the controller's config, which the `musicrl` parser reads in
    # images without aiohttp
    import aiohttp

    url = metrics_url(url)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(url) as response:
                if response.status != 200:
                    raise UpstreamUnavailable(f"the metrics page {url} answered HTTP {response.status}")
                text = await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise UpstreamUnavailable(f"the metrics page {url} is unreachable: {str(e) or type(e).__name__}") from e
    try:
        return MetricsSample.parse(text, model_name)
    except InvalidRequest as e:
        raise UpstreamUnavailable(f"{url}: {e}") from e
