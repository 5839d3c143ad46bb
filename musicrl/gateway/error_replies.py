"""Every error reply of the gateway: ``{"detail": sentence}``, plus ``errors`` for validation failures.

The status comes from the exception's class (:func:`musicrl.errors.http_status`, the one map the model
servers use too). Nothing the client sent is echoed back: a reply that repeats a 10 MB prompt costs 10 MB,
and one that repeats a lone surrogate cannot even be encoded.
"""

import logging
from collections.abc import Sequence
from typing import Any

import nats.errors
from fastapi import Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from musicrl.errors import BusUnavailable, MusicRLError, Unauthorized, http_status, retry_after_header


logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 200  # a field name or message longer than this is cut: it came from the client


def printable(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with anything UTF-8 cannot encode written as an escape."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def platform_error(request: Request, error: MusicRLError) -> JSONResponse:
    """The reply for a platform error: its class's status, ``Retry-After`` when a retry can succeed."""
    code = http_status(error)
    headers = retry_after_header(error)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if code >= 500:
        logger.warning("%s %s: %s", request.method, request.url.path, error)
    return JSONResponse({"detail": printable(str(error), 1000)}, status_code=code, headers=headers)


async def bus_error(request: Request, error: nats.errors.Error) -> JSONResponse:
    """A KV read or write that NATS could not serve: nothing was accepted, the client may retry."""
    return await platform_error(request, BusUnavailable(f"the event bus is unavailable ({type(error).__name__})"))


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """A 422 with one sentence and the invalid fields, without their values."""
    fields = [_field_error(e) for e in error.errors()]
    first = fields[0] if fields else {"loc": [], "msg": "the request is invalid"}
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    detail = f"invalid request: {where}: {first['msg']}{more}" if where else f"invalid request: {first['msg']}"
    return JSONResponse({"detail": detail, "errors": fields}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _field_error(error: dict[str, Any]) -> dict[str, Any]:
    loc: Sequence[Any] = error.get("loc", ())
    return {
        "loc": [part if isinstance(part, int) else printable(str(part), 64) for part in loc],
        "msg": printable(str(error.get("msg", "invalid value"))),
        "type": printable(str(error.get("type", "value_error")), 64),
    }
