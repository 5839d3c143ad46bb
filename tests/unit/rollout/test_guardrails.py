"""The guardrail probe scrapes the canary and the stable policy where each serves only itself."""

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from musicrl.config import BusConfig
from musicrl.rollout.config import ControllerConfig
from musicrl.rollout.guardrails import GuardrailProbe
from musicrl.rollout.record import RolloutRecord, Status
from musicrl.rollout.routing import PolicyEndpoint


MODEL = "musicgen"


class ModelServer:
    """One generator process's metrics, under the serving metrics' names."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "musicrl_inference_requests_total", "Requests.", ["model", "outcome"], registry=self.registry
        )
        self.latency = Histogram(
            "musicrl_inference_request_latency_seconds", "Latency.", ["model"], registry=self.registry
        )

    def serve(self, outcome: str, n: int) -> None:
        for _ in range(n):
            self.requests.labels(model=MODEL, outcome=outcome).inc()
            self.latency.labels(model=MODEL).observe(0.3)


@contextmanager
def serving(server: ModelServer) -> Iterator[str]:
    """``host:port`` of ``server``'s metrics page on loopback."""
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=server.registry)
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


class TagRoutedTarget:
    """A target whose stable policy has its own route while a canary runs (KServe Serverless's ``prev-`` tag)."""

    def __init__(self, stable_route: str) -> None:
        self.stable_route = stable_route

    async def canary_ready(self, canary: PolicyEndpoint) -> bool:
        return True

    def stable_during_canary(self, stable: PolicyEndpoint) -> PolicyEndpoint:
        return PolicyEndpoint(self.stable_route, stable.model_name, stable.model_uri, stable.version)


def test_the_stable_policy_is_scraped_where_it_is_served_during_the_canary_not_on_the_split_main_route():
    canary_server, stable_server = ModelServer(), ModelServer()
    with serving(canary_server) as canary_url, serving(stable_server) as stable_url, socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # the main route, which also reaches the canary: it must not be scraped
        main_route = f"127.0.0.1:{closed.getsockname()[1]}"
        record = RolloutRecord(
            id="r1",
            status=Status.RUNNING,
            model_uri="s3://models/policy/v4",
            version="v4",
            canary_share=0.1,
            requested_by="test",
            requested_at=0.0,
            stable=PolicyEndpoint(main_route, MODEL, "s3://models/policy/v3", "v3").to_wire(),
            canary=PolicyEndpoint(canary_url, MODEL, "s3://models/policy/v4", "v4").to_wire(),
        )
        probe = GuardrailProbe(
            ControllerConfig(bus=BusConfig(nats_url="nats://127.0.0.1:4222")), TagRoutedTarget(stable_url)
        )

        async def checks() -> tuple[list[str] | None, list[str] | None]:
            first = await probe.check(record)  # the baselines
            canary_server.serve("error", 30)
            stable_server.serve("ok", 30)
            return first, await probe.check(record)

        first, second = asyncio.run(checks())
    assert first is None
    assert second is not None and len(second) == 1
    assert second[0].startswith("the canary's error rate is 100.0% (30 of 30 requests)")
