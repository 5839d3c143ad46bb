"""Probes and metrics: ``/healthz`` (the process runs), ``/readyz`` (NATS and the generator answer), ``/metrics``."""

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
    responses={503: {"model": HealthPublic, "description": "A dependency is unavailable."}},
    summary="Readiness: NATS connected and the stable generator ready",
)
async def readyz(state: StateDep, response: Response) -> HealthPublic:
    checks = {
        "nats": state.nats.is_connected,
        "generator": await state.generator.is_ready((await state.routing.get()).stable),
    }
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
