"""Map the platform's exceptions to KServe's, which KServe turns into HTTP and gRPC statuses.

InvalidRequest → 400 / INVALID_ARGUMENT, ModelNotReady → 503 / UNAVAILABLE, ModelNotFound → 404 / NOT_FOUND.
"""

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from musicrl.errors import InvalidRequest, ModelNotFound, ModelNotReady, MusicRLError
from musicrl.serving import metrics
from musicrl.serving.kserve_compat import kserve


logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def to_kserve_error(error: MusicRLError, model_name: str) -> Exception:
    """The KServe exception that carries ``error`` to the client with the right status."""
    if isinstance(error, InvalidRequest):
        return kserve.errors.InvalidInput(str(error))
    if isinstance(error, ModelNotReady):
        return kserve.errors.ModelNotReady(model_name, str(error))
    if isinstance(error, ModelNotFound):
        return kserve.errors.ModelNotFound(model_name)
    return kserve.errors.InferenceError(str(error))


def served(model_name_attr: str = "name") -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate an async ``predict`` so platform errors get their status and every request is counted.

    Args:
        model_name_attr: Attribute of ``self`` holding the model name used in metrics and errors.
    """

    def decorate(predict: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(predict)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            name = getattr(args[0], model_name_attr)
            with metrics.REQUEST_LATENCY.labels(model=name).time():
                try:
                    result = await predict(*args, **kwargs)
                except MusicRLError as e:
                    outcome = "invalid" if isinstance(e, InvalidRequest) else "error"
                    metrics.REQUESTS.labels(model=name, outcome=outcome).inc()
                    logger.info("request to %s refused: %s", name, e)
                    raise to_kserve_error(e, name) from e
                except Exception:
                    metrics.REQUESTS.labels(model=name, outcome="error").inc()
                    raise
            metrics.REQUESTS.labels(model=name, outcome="ok").inc()
            return result

        return wrapper

    return decorate
