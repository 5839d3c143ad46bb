"""Probes and metrics: ``/healthz`` (the process runs), ``/readyz`` (it can serve), ``/metrics``.

Readiness means this process can take traffic: it is connected to NATS, which every write needs. It does
not depend on the generator: when the generator is down, feedback, playback, clip downloads and the page
still work, and generation requests get a 503 of their own. Generator health is in the
``musicrl_gateway_upstream_ready`` gauge and in each generation request's reply.
"""

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from musicrl.gateway.deps import StateDep
from musicrl.gateway.schemas import HealthPublic


router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> HealthPublic:
    return HealthPublic(status="ok")


@router.get(
    "/readyz",
    responses={503: {"model": HealthPublic, "description": "Not connected to NATS."}},
    summary="Readiness: connected to NATS",
)
async def readyz(state: StateDep, response: Response) -> HealthPublic:
    checks = {"nats": state.nats.is_connected}
    ready = all(checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthPublic(status="ok" if ready else "unavailable", checks=checks)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus metrics."}},
    summary="Prometheus metrics",
)
async def metrics() -> Response:
    return Response(content=generate_latest(), media_type=CONTENT_TYPE_LATEST)
