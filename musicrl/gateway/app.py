"""The gateway's FastAPI application: routers, error replies, middleware, request metrics, lifespan."""

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles

from musicrl.errors import MusicRLError
from musicrl.gateway.config import GatewayConfig
from musicrl.gateway.deps import document_security
from musicrl.gateway.error_replies import bus_error, platform_error, validation_error
from musicrl.gateway.limits import document_limits
from musicrl.gateway.middleware import BodySizeLimit, RequestId, RequestMetrics
from musicrl.gateway.routes import admin, clips, comparisons, generations, health, page, ratings
from musicrl.gateway.state import open_state


logger = logging.getLogger(__name__)


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
    app.add_exception_handler(MusicRLError, platform_error)  # type: ignore[arg-type]
    app.add_exception_handler(nats.errors.Error, bus_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_middleware(RequestMetrics)  # type: ignore[arg-type]
    app.add_middleware(BodySizeLimit, max_bytes=config.limits.max_body_bytes)  # type: ignore[arg-type]
    app.add_middleware(RequestId)  # type: ignore[arg-type]  # outermost: even a 413 carries the id
    _extend_document(app, config)
    return app


def _extend_document(app: FastAPI, config: GatewayConfig) -> None:
    generate_document = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_security(document_limits(generate_document(), config.limits))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document


def serve_gateway(config: GatewayConfig) -> None:
    """Serve the gateway with uvicorn until SIGINT or SIGTERM (in-flight requests get 30 s to finish)."""
    import uvicorn

    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_config=None,
        access_log=config.access_log,
        timeout_graceful_shutdown=30,
        # named, not "auto": auto falls back to asyncio and h11 without a word when these are not installed
        loop="uvloop",
        http="httptools",
        proxy_headers=True,  # the client address behind the ingress, from trusted proxies only
        forwarded_allow_ips=config.forwarded_allow_ips,
    )
