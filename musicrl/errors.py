"""One exception hierarchy for the whole platform, and its one map to HTTP statuses and exit codes.

Every error a caller can cause derives from :class:`MusicRLError`. Each class carries its HTTP status
(:attr:`MusicRLError.http_status`, read through :func:`http_status` by the gateway and the model servers
alike) and its CLI exit code (:attr:`MusicRLError.exit_code`), so the mapping is written once.
"""


class MusicRLError(Exception):
    """Root of every error the platform raises on purpose.

    Attributes:
        exit_code: The process exit code the CLI uses for this error.
        http_status: The HTTP status a server answers with.
        retry_after_s: Seconds after which a retry may succeed (sent as ``Retry-After``), or None when a
            retry of the same request cannot succeed.
    """

    exit_code = 1
    http_status = 500
    retry_after_s: float | None = None


class InvalidRequest(MusicRLError, ValueError):
    """The caller sent something we cannot act on (bad prompt, bad parameter, bad config value)."""

    exit_code = 2
    http_status = 400


class ModelNotFound(MusicRLError, LookupError):
    """A model URI points at nothing: no directory, no object, no repository."""

    exit_code = 3
    http_status = 404


class ModelNotReady(MusicRLError):
    """The model is still loading or has been unloaded."""

    exit_code = 4
    http_status = 503
    retry_after_s = 1.0


class IncompatibleModel(MusicRLError):
    """A checkpoint exists but is not something this component can serve (wrong kind or layout)."""

    exit_code = 5
    http_status = 400


class Unauthorized(MusicRLError):
    """No credentials, or credentials we do not know (HTTP 401)."""

    exit_code = 7
    http_status = 401


class Forbidden(MusicRLError):
    """Known credentials without the scope the call needs, or feedback on someone else's comparison (403)."""

    exit_code = 7
    http_status = 403


class RateLimited(MusicRLError):
    """The caller exceeded its request rate (HTTP 429).

    Args:
        message: The sentence for the caller.
        retry_after_s: Seconds until a request would be accepted again.
    """

    exit_code = 8
    http_status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFound(MusicRLError, LookupError):
    """A resource (clip, comparison, generation job) does not exist (HTTP 404)."""

    exit_code = 3
    http_status = 404


class Conflict(MusicRLError):
    """A request with the same Idempotency-Key is still in progress (HTTP 409): retry after ``retry_after_s``.

    Args:
        message: The sentence for the caller.
        retry_after_s: Seconds until the first request's hold on the key runs out at the latest.
    """

    exit_code = 9
    http_status = 409

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class IdempotencyKeyReused(MusicRLError):
    """An Idempotency-Key was reused with a different request (HTTP 422): final, a retry cannot succeed.

    422 is the status the IETF Idempotency-Key draft gives this case, so that clients retrying on 409
    (in progress) never loop on it.
    """

    exit_code = 9
    http_status = 422


class PayloadTooLarge(MusicRLError):
    """The request body is larger than the server accepts (HTTP 413)."""

    exit_code = 2
    http_status = 413


class MissingExtra(MusicRLError):
    """A command needs a package that this installation lacks: an image or venv built with another role's extra.

    Its own exit code, so that a script can tell "wrong image" from a failed run.
    """

    exit_code = 6
    http_status = 500


class BusUnavailable(MusicRLError):
    """The event bus did not acknowledge in time; nothing was accepted (HTTP 503, safe to retry)."""

    exit_code = 10
    http_status = 503
    retry_after_s = 1.0


class UpstreamUnavailable(MusicRLError):
    """A model server the request needs is down or not ready (HTTP 503)."""

    exit_code = 10
    http_status = 503
    retry_after_s = 1.0


class Overloaded(MusicRLError):
    """The server is at its bound of work in flight; nothing was accepted (HTTP 503, retry later).

    Args:
        message: The sentence for the caller.
        retry_after_s: Seconds after which capacity is likely to be free again.
    """

    exit_code = 10
    http_status = 503

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def http_status(error: BaseException) -> int:
    """The HTTP status for ``error``: its class's for platform errors, 500 for anything else."""
    return error.http_status if isinstance(error, MusicRLError) else 500


def retry_after_header(error: MusicRLError) -> dict[str, str]:
    """``{"Retry-After": seconds}`` for an error a retry can overcome, else ``{}`` (whole seconds, at least 1)."""
    if error.retry_after_s is None:
        return {}
    return {"Retry-After": str(max(1, round(error.retry_after_s)))}
