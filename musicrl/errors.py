"""One exception hierarchy for the whole platform.

Every error a caller can cause derives from :class:`MusicRLError`. Servers map each subclass to one
HTTP / gRPC status (``musicrl.serving.errors``) and the CLI maps each to one exit code
(:attr:`MusicRLError.exit_code`), so the mapping is written once.
"""


class MusicRLError(Exception):
    """Root of every error the platform raises on purpose.

    Attributes:
        exit_code: The process exit code the CLI uses for this error.
    """

    exit_code = 1


class InvalidRequest(MusicRLError, ValueError):
    """The caller sent something we cannot act on (bad prompt, bad parameter, bad config value)."""

    exit_code = 2


class ModelNotFound(MusicRLError, LookupError):
    """A model URI points at nothing: no directory, no object, no repository."""

    exit_code = 3


class ModelNotReady(MusicRLError):
    """The model is still loading or has been unloaded."""

    exit_code = 4


class IncompatibleModel(MusicRLError):
    """A checkpoint exists but is not something this component can serve (wrong kind or layout)."""

    exit_code = 5


class Unauthorized(MusicRLError):
    """No credentials, or credentials we do not know (HTTP 401)."""

    exit_code = 7


class Forbidden(MusicRLError):
    """Known credentials without the scope the call needs (HTTP 403)."""

    exit_code = 7


class RateLimited(MusicRLError):
    """The caller exceeded its request rate (HTTP 429).

    Attributes:
        retry_after_s: Seconds until a request would be accepted again.
    """

    exit_code = 8

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFound(MusicRLError, LookupError):
    """A resource (clip, comparison, generation job) does not exist (HTTP 404)."""

    exit_code = 3


class Conflict(MusicRLError):
    """The request contradicts the resource's state, e.g. an idempotency key reused with another body (409)."""

    exit_code = 9


class BusUnavailable(MusicRLError):
    """The event bus did not acknowledge in time; nothing was accepted (HTTP 503, safe to retry)."""

    exit_code = 10


class UpstreamUnavailable(MusicRLError):
    """A model server the request needs is down or not ready (HTTP 503)."""

    exit_code = 10
