"""The gateway's FastAPI application: routers, error replies, request metrics, lifespan."""

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
from fastapi import FastAPI, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter, Histogram

from musicrl.errors import (
    BusUnavailable,
    Conflict,
    Forbidden,
    InvalidRequest,
    ModelNotReady,
    MusicRLError,
    NotFound,
    RateLimited,
    Unauthorized,
    UpstreamUnavailable,
)
from musicrl.gateway.config import GatewayConfig
from musicrl.gateway.routes import admin, clips, comparisons, generations, health, page, ratings
from musicrl.gateway.state import open_state


logger = logging.getLogger(__name__)

HTTP_REQUESTS = Counter("musicrl_gateway_requests_total", "HTTP requests by route and status.", ["route", "status"])
HTTP_LATENCY = Histogram(
    "musicrl_gateway_request_seconds",
    "HTTP request latency by route.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
STATUS_OF: tuple[tuple[type[MusicRLError], int], ...] = (  # first match wins: subclasses before parents
    (InvalidRequest, status.HTTP_400_BAD_REQUEST),
    (Unauthorized, status.HTTP_401_UNAUTHORIZED),
    (Forbidden, status.HTTP_403_FORBIDDEN),
    (NotFound, status.HTTP_404_NOT_FOUND),
    (Conflict, status.HTTP_409_CONFLICT),
    (RateLimited, status.HTTP_429_TOO_MANY_REQUESTS),
    (BusUnavailable, status.HTTP_503_SERVICE_UNAVAILABLE),
    (UpstreamUnavailable, status.HTTP_503_SERVICE_UNAVAILABLE),
    (ModelNotReady, status.HTTP_503_SERVICE_UNAVAILABLE),
)
RETRY_AFTER_UNAVAILABLE_S = 1


def create_app(config: GatewayConfig) -> FastAPI:
    """Build the gateway app; NATS is connected when the app starts (lifespan), not here."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.gateway = await open_state(config)
        try:
            yield
        finally:
            await app.state.gateway.close()

    app = FastAPI(
        title="MusicRL gateway",
        version="1",
        description="Generate music, serve A/B comparisons, and collect the feedback that retrains the model.",
        lifespan=lifespan,
    )
    for router in (generations.router, clips.router, comparisons.router, ratings.router, admin.router, health.router):
        app.include_router(router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.PAGE_DIR), name="static")
    app.add_exception_handler(MusicRLError, _platform_error)  # type: ignore[arg-type]
    app.add_exception_handler(nats.errors.Error, _bus_error)  # type: ignore[arg-type]
    app.middleware("http")(_count_requests)
    return app


def serve_gateway(config: GatewayConfig) -> None:
    """Serve the gateway with uvicorn until SIGINT or SIGTERM (in-flight requests get 30 s to finish)."""
    import uvicorn

    uvicorn.run(create_app(config), host=config.host, port=config.port, log_config=None, timeout_graceful_shutdown=30)


async def _platform_error(request: Request, error: MusicRLError) -> JSONResponse:
    code = next((c for kind, c in STATUS_OF if isinstance(error, kind)), status.HTTP_500_INTERNAL_SERVER_ERROR)
    headers = {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    elif isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    elif code == status.HTTP_503_SERVICE_UNAVAILABLE:
        headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE_S)
    if code >= 500:
        logger.warning("%s %s: %s", request.method, request.url.path, error)
    return JSONResponse({"detail": str(error)}, status_code=code, headers=headers)


async def _bus_error(request: Request, error: nats.errors.Error) -> JSONResponse:
    # a KV read or write that NATS could not serve: nothing was accepted, the client may retry
    return await _platform_error(request, BusUnavailable(f"the event bus is unavailable ({type(error).__name__})"))


async def _count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    name = getattr(route, "path", "unmatched")  # the template (/v1/clips/{clip_id}.wav), not the raw path
    HTTP_REQUESTS.labels(route=name, status=str(response.status_code)).inc()
    HTTP_LATENCY.labels(route=name).observe(time.perf_counter() - started)
    return response
