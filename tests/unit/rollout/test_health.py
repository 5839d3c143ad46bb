"""Canary health from real Prometheus exposition: samples, deltas, p95, guardrails, and scraping over HTTP.

Every sample is parsed from text a real ``prometheus_client`` registry wrote, with the serving metrics' own
names and buckets, and scraped from a real HTTP server on loopback.
"""

import asyncio
import socket
import uuid

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, start_http_server

from musicrl.errors import InvalidRequest, UpstreamUnavailable
from musicrl.rollout import health
from musicrl.rollout.health import (
    EndpointHealth,
    Guardrails,
    MetricsSample,
    check_guardrails,
    histogram_quantile,
    metrics_url,
    scrape,
)
from musicrl.serving import metrics as serving_metrics
from tests.utils.recording_http import recording_server


BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)  # REQUEST_LATENCY's, musicrl/serving/metrics.py
MODEL = "musicgen-canary"


class Server:
    """One model server's metrics: a registry of its own, as a process would have."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "musicrl_inference_requests_total", "Requests.", ["model", "outcome"], registry=self.registry
        )
        self.latency = Histogram(
            "musicrl_inference_request_latency_seconds", "Latency.", ["model"], buckets=buckets, registry=self.registry
        )

    def serve(self, outcome: str, latency_s: float, n: int = 1, model: str = MODEL) -> "Server":
        for _ in range(n):
            self.requests.labels(model=model, outcome=outcome).inc()
            self.latency.labels(model=model).observe(latency_s)
        return self

    def sample(self, model: str = MODEL) -> MetricsSample:
        return MetricsSample.parse(generate_latest(self.registry).decode(), model)


def _health(ok: int = 0, invalid: int = 0, error: int = 0, latency_s: float = 0.3) -> EndpointHealth:
    server = Server().serve("ok", latency_s, ok).serve("invalid", 0.01, invalid).serve("error", latency_s, error)
    return EndpointHealth.between(MetricsSample(MODEL), server.sample())


def test_the_names_are_the_serving_metrics_names():
    assert serving_metrics.REQUESTS.describe()[0].name == health.REQUESTS_FAMILY
    assert serving_metrics.REQUEST_LATENCY.describe()[0].name == health.LATENCY_FAMILY


def test_a_sample_holds_one_models_counts_and_cumulative_buckets():
    server = Server().serve("ok", 0.07, 3).serve("error", 3.0).serve("invalid", 0.02, 2)
    server.serve("ok", 0.07, 5, model="musicgen-stable")  # another model on the same server
    sample = server.sample()
    assert sample.requests == (("error", 1.0), ("invalid", 2.0), ("ok", 3.0))
    assert sample.count("ok") == 3 and sample.count("timeout") == 0
    bounds = dict(sample.latency_buckets)
    assert list(bounds) == [*BUCKETS, float("inf")]
    assert (bounds[0.05], bounds[0.1], bounds[2.5], bounds[5], bounds[float("inf")]) == (2, 5, 5, 6, 6)
    assert sample.created_s is not None
    assert Server().sample() == MetricsSample(MODEL)  # a model that served nothing yet has no series


def test_health_is_the_difference_of_two_samples_without_invalid_requests():
    server = Server().serve("ok", 0.07, 40).serve("error", 0.07, 10)
    baseline = server.sample()
    server.serve("ok", 3.0, 18).serve("error", 3.0, 2).serve("invalid", 0.02, 30)
    since = EndpointHealth.between(baseline, server.sample())
    assert (since.requests, since.errors, since.invalid) == (20, 2, 30)
    assert since.error_rate == pytest.approx(0.1)
    assert since.latency_count == 50  # latency is observed for every outcome
    # the 40 quick requests before the baseline are gone: 30 of 50 took 0.02 s, 20 took 3 s, in (2.5, 5]
    assert since.p95_latency_s == pytest.approx(2.5 + 2.5 * (47.5 - 30) / 20)
    idle = EndpointHealth.between(baseline, baseline)
    assert (idle.requests, idle.errors, idle.latency_count) == (0, 0, 0)
    assert idle.error_rate is None and idle.p95_latency_s is None
    with pytest.raises(InvalidRequest, match="different models"):
        EndpointHealth.between(baseline, server.sample("musicgen-stable"))


def test_a_restarted_server_is_counted_from_its_restart():
    before = Server().serve("ok", 0.07, 100).serve("error", 0.07, 1).sample()
    restarted = Server().serve("ok", 0.07, 3).serve("error", 0.07, 2)  # a new process: fewer counts
    since = EndpointHealth.between(before, restarted.sample())
    assert (since.requests, since.errors, since.latency_count) == (5, 2, 5)
    restarted.serve("ok", 0.07, 200)  # now past the old counts: only the histogram's creation time tells
    since = EndpointHealth.between(before, restarted.sample())
    assert (since.requests, since.errors) == (205, 2)


def test_p95_interpolates_inside_its_bucket_like_histogram_quantile():
    server = Server(buckets=(0.1, 0.2, 0.5, 1.0))
    server.serve("ok", 0.05, 50).serve("ok", 0.15, 30).serve("ok", 0.3, 20)
    # rank 95 of 100 falls in (0.2, 0.5], which holds ranks 81..100: 15 of its 20 in
    assert EndpointHealth.between(MetricsSample(MODEL), server.sample()).p95_latency_s == pytest.approx(0.425)
    uniform = Server(buckets=tuple(i / 10 for i in range(1, 11)))
    for i in range(1000):
        uniform.serve("ok", (i + 0.5) / 1000)
    assert EndpointHealth.between(MetricsSample(MODEL), uniform.sample()).p95_latency_s == pytest.approx(
        0.95, abs=0.002
    )
    inf = float("inf")
    assert histogram_quantile(0.95, ((1.0, 1.0), (2.0, 2.0), (inf, 100.0))) == 2.0  # beyond the last bound: PromQL's
    assert histogram_quantile(0.95, ((1.0, 0.0), (inf, 0.0))) is None
    assert histogram_quantile(0.95, ()) is None


@pytest.mark.parametrize(
    "canary, stable, failed",
    [
        pytest.param(_health(ok=48, error=2), _health(ok=50), [], id="2 of 50 passes"),
        pytest.param(_health(ok=95, error=5), _health(ok=50), [], id="5 % is at the limit, not over"),
        pytest.param(_health(ok=44, error=6), _health(ok=50), ["error rate is 12.0% (6 of 50"], id="6 of 50 fails"),
        pytest.param(_health(ok=5, error=5), _health(ok=50), [], id="10 requests: not judged"),
        pytest.param(_health(ok=20, error=1, invalid=40), _health(ok=50), [], id="invalid requests not counted"),
        pytest.param(_health(ok=40, latency_s=3.0), _health(ok=40, latency_s=0.7), ["p95 latency is"], id="slow"),
        pytest.param(_health(ok=40, latency_s=0.9), _health(ok=40, latency_s=0.7), [], id="same bucket passes"),
        pytest.param(_health(ok=40, latency_s=0.7), _health(ok=40, latency_s=3.0), [], id="faster passes"),
        pytest.param(_health(ok=40, latency_s=3.0), _health(ok=10, latency_s=0.7), [], id="stable too quiet"),
        pytest.param(
            _health(ok=35, error=5, latency_s=3.0),
            _health(ok=40, latency_s=0.7),
            ["error rate is 12.5%", "p95 latency is"],
            id="both fail",
        ),
    ],
)
def test_guardrails(canary, stable, failed):
    sentences = check_guardrails(canary, stable, Guardrails())
    assert len(sentences) == len(failed), sentences
    for sentence, expected in zip(sentences, failed, strict=True):
        assert expected in sentence


def test_the_latency_sentence_names_both_p95s_and_the_limit():
    (sentence,) = check_guardrails(_health(ok=40, latency_s=3.0), _health(ok=40, latency_s=0.7), Guardrails())
    # 3 s lands in (2.5, 5], 0.7 s in (0.5, 1]: each p95 is 95 % of the way through its bucket
    assert sentence == (
        "the canary's p95 latency is 4.88 s, 5.00 times the stable policy's 0.975 s, over the limit of 1.5 times"
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_error_rate", 1.5),
        ("max_error_rate", -0.1),
        ("max_latency_ratio", 0.5),
        ("max_latency_ratio", float("inf")),
        ("min_requests", 0),
        ("min_requests", 2.5),
    ],
)
def test_guardrails_refuse_bad_values_naming_the_field(field, value):
    with pytest.raises(InvalidRequest, match=field):
        Guardrails(**{field: value})


def test_the_health_of_replicas_adds_up():
    parts = [_health(ok=10, error=1, latency_s=0.07), _health(ok=30, error=2, latency_s=3.0)]
    total = EndpointHealth.total(parts)
    assert (total.requests, total.errors, total.latency_count) == (43, 3, 43)
    assert total.p95_latency_s > 2.5  # the slow replica's 32 of 43 requests hold the 95th percentile
    other = EndpointHealth.between(MetricsSample(MODEL), Server(buckets=(1.0,)).serve("ok", 0.5).sample())
    with pytest.raises(InvalidRequest, match="different buckets"):
        EndpointHealth.total([parts[0], other])


def test_scrape_reads_a_real_model_servers_page():
    name = f"health-test-{uuid.uuid4().hex[:8]}"  # the process-wide registry: a model no other test uses
    for outcome, n in (("ok", 7), ("error", 2), ("invalid", 1)):
        for _ in range(n):
            serving_metrics.REQUESTS.labels(model=name, outcome=outcome).inc()
            serving_metrics.REQUEST_LATENCY.labels(model=name).observe(0.3)
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=REGISTRY)
    try:
        endpoint = f"127.0.0.1:{httpd.server_address[1]}"  # as a policy endpoint names its server
        sample = asyncio.run(scrape(endpoint, name, timeout_s=5))
        assert asyncio.run(scrape(f"http://{endpoint}/metrics", name, timeout_s=5)) == sample
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert (sample.count("ok"), sample.count("error"), sample.count("invalid")) == (7, 2, 1)
    assert dict(sample.latency_buckets)[0.5] == 10 and dict(sample.latency_buckets)[0.25] == 0
    assert metrics_url(endpoint) == f"http://{endpoint}/metrics"


def test_scrape_of_an_unreachable_page_is_upstream_unavailable():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: the connection is refused
        endpoint = f"127.0.0.1:{closed.getsockname()[1]}"
        with pytest.raises(UpstreamUnavailable, match="unreachable") as refused:
            asyncio.run(scrape(endpoint, MODEL, timeout_s=5))
    assert f"http://{endpoint}/metrics" in str(refused.value) and refused.value.http_status == 503


def test_scrape_of_an_error_or_a_page_that_is_not_prometheus_text_is_upstream_unavailable():
    with recording_server(lambda request: (404, {"detail": "no such page"})) as (base, _):
        with pytest.raises(UpstreamUnavailable, match="answered HTTP 404"):
            asyncio.run(scrape(base + "/metrics", MODEL, timeout_s=5))
    with recording_server(lambda request: (200, {"not": "metrics"})) as (base, recorded):
        with pytest.raises(UpstreamUnavailable, match="not Prometheus text"):
            asyncio.run(scrape(base + "/metrics", MODEL, timeout_s=5))
    assert [r.path for r in recorded] == ["/metrics"]
