"""Carry the platform's exceptions to clients through KServe's, which KServe turns into HTTP and gRPC statuses.

The status comes from the one map in :mod:`musicrl.errors`; this module only picks the KServe exception that
KServe renders with that status: 4xx → ``InvalidInput`` (400 / INVALID_ARGUMENT), 404 → ``ModelNotFound``,
503 → :class:`RetryLater`, KServe's ``ServerNotReady`` (503 / UNAVAILABLE) with the error's ``Retry-After``,
anything else → ``InferenceError`` (500).
"""

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from fastapi.responses import JSONResponse

from musicrl.errors import ModelNotFound, MusicRLError, http_status, retry_after_header
from musicrl.logs import REQUEST_ID_HEADER, request_id_from, request_id_var
from musicrl.serving import metrics
from musicrl.serving.kserve_compat import ServerNotReady, kserve


logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class RetryLater(ServerNotReady):
    """A 503 that tells the client when to retry: KServe's own answers no ``Retry-After``.

    A subclass, so that KServe's gRPC interceptor still maps it to UNAVAILABLE; :func:`retry_later_handler`
    renders it over REST with the same header the gateway sends for the same error.
    """

    def __init__(self, error: MusicRLError) -> None:
        super().__init__(str(error))
        self.headers = retry_after_header(error) or {"Retry-After": "1"}


async def retry_later_handler(_request: object, error: Exception) -> JSONResponse:
    """KServe's 503 body (``{"error": ...}``) with the error's ``Retry-After``."""
    return JSONResponse(status_code=503, content={"error": str(error)}, headers=getattr(error, "headers", None))


def to_kserve_error(error: MusicRLError, model_name: str) -> Exception:
    """The KServe exception that carries ``error`` to the client with the status :func:`http_status` gives."""
    code = http_status(error)
    if isinstance(error, ModelNotFound):
        return kserve.errors.ModelNotFound(model_name)
    if code == 503:
        return RetryLater(error)
    if 400 <= code < 500:  # V2 has one client-error status per protocol: 400 / INVALID_ARGUMENT
        return kserve.errors.InvalidInput(str(error))
    return kserve.errors.InferenceError(str(error))


def served(model_name_attr: str = "name") -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate an async ``predict(payload, headers)`` so platform errors get their status, every request is
    counted, and its logs carry the caller's ``X-Request-ID`` (the gateway's, when the gateway calls).

    Args:
        model_name_attr: Attribute of ``self`` holding the model name used in metrics and errors.
    """

    def decorate(predict: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(predict)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            name = getattr(args[0], model_name_attr)
            headers = kwargs.get("headers", args[2] if len(args) > 2 else None)
            token = request_id_var.set(request_id_from(_header(headers, REQUEST_ID_HEADER)))
            try:
                result = await _counted(predict, name, *args, **kwargs)
            finally:
                request_id_var.reset(token)
            return result

        return wrapper

    return decorate


async def _counted(predict: Callable[P, Awaitable[R]], name: str, *args: P.args, **kwargs: P.kwargs) -> R:
    started = time.perf_counter()
    with metrics.REQUEST_LATENCY.labels(model=name).time():
        try:
            result = await predict(*args, **kwargs)
        except MusicRLError as e:
            outcome = "invalid" if http_status(e) < 500 else "error"
            metrics.REQUESTS.labels(model=name, outcome=outcome).inc()
            logger.info("request to %s refused: %s", name, e)
            raise to_kserve_error(e, name) from e
        except Exception:
            metrics.REQUESTS.labels(model=name, outcome="error").inc()
            raise
    metrics.REQUESTS.labels(model=name, outcome="ok").inc()
    logger.info("request to %s served in %.0f ms", name, (time.perf_counter() - started) * 1000)
    return result


def _header(headers: object, name: str) -> str | None:
    """A header's value from KServe's headers (a dict, any key case), or None."""
    if not isinstance(headers, dict):
        return None
    wanted = name.lower()
    return next((str(v) for k, v in headers.items() if str(k).lower() == wanted), None)
