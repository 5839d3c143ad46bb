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
