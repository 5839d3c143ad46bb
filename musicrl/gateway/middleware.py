"""ASGI middleware of the gateway: a cap on request bodies, the request id, and request metrics.

All are plain ASGI (not ``BaseHTTPMiddleware``): the body cap must see the body before FastAPI parses it,
none should buffer replies, and ``BaseHTTPMiddleware`` runs every request through a task group and memory
streams, which cost the feedback path more than its own work did.
"""

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.responses import JSONResponse

from musicrl.logs import REQUEST_ID_HEADER, request_id_from, request_id_var


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HTTP_REQUESTS = Counter("musicrl_gateway_requests_total", "HTTP requests by route and status.", ["route", "status"])
HTTP_LATENCY = Histogram(
    "musicrl_gateway_request_seconds",
    "HTTP request latency by route.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


class BodySizeLimit:
    """Answer 413 to a request whose body is longer than ``max_bytes``, before anything parses it.

    A declared ``Content-Length`` over the cap is refused without reading the body, and one within it is
    passed through (the server never delivers more than the declared bytes); a chunked body is read up to
    the cap (at most ``max_bytes`` are ever held) and replayed to the app.

    Args:
        app: The wrapped application.
        max_bytes: The largest body accepted.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if b"transfer-encoding" not in headers:  # the server delivers exactly the declared bytes
                await self.app(scope, receive, send)
                return
        await self._capped(scope, receive, send)  # chunked (or both framings): hold at most the cap

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body: nothing to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the request body is larger than the limit of {self.max_bytes} bytes"
        await JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out the buffered body in one message, then defers to the real one."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class RequestId:
    """Give every request an id (the client's ``X-Request-ID`` if safe, else a new one) and echo it.

    The id is set in :data:`musicrl.logs.request_id_var` for the request's duration, so log records,
    events and calls to the generator made while serving it carry it.

    Args:
        app: The wrapped application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode())
        request_id = request_id_from(raw.decode("latin-1") if raw is not None else None)
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class RequestMetrics:
    """Count requests by route template and status, and time them up to the start of the reply.

    The route is the template (``/v1/clips/{clip_id}.wav``), never the raw path, so the label set stays
    bounded; the router records it in the shared scope while it dispatches. A request that fails before it
    starts a reply is counted as a 500, which is what the server's error middleware answers.

    Args:
        app: The wrapped application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(route=route, status=str(status)).inc()
            HTTP_LATENCY.labels(route=route).observe(time.perf_counter() - started)
