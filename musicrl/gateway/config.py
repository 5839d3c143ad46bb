"""The gateway's settings (flags and MUSICRL_* variables are derived from these fields)."""

import math
from dataclasses import dataclass, field

from musicrl.config import BusConfig
from musicrl.errors import InvalidRequest


PLACEHOLDER_SECRETS = frozenset({"", "secret", "changeme", "change-me", "dev", "development", "musicrl"})
ENVIRONMENTS = ("production", "development")


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """What one caller may ask for.

    Attributes:
        max_prompt_chars: Longest prompt, in characters.
        max_duration_s: Longest clip a generation job may ask for.
        comparison_duration_s: Length of each clip of an A/B comparison.
        max_clips_per_job: Most clips one generation job may ask for.
        wait_timeout_s: Longest ``?wait=true`` blocks before answering with the job as it is.
    """

    max_prompt_chars: int = 1000
    max_duration_s: float = 30.0  # MusicGen was trained on 30 s excerpts
    comparison_duration_s: float = 10.0  # long enough to judge, short enough to listen to twice
    max_clips_per_job: int = 4
    wait_timeout_s: float = 120.0  # a 30 s clip on a busy GPU; clients poll after that

    def __post_init__(self) -> None:
        for name in ("max_duration_s", "comparison_duration_s", "wait_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidRequest(f"{name} must be a positive number of seconds, got {value}")
        if self.comparison_duration_s > self.max_duration_s:
            raise InvalidRequest("comparison_duration_s must not exceed max_duration_s")
        if self.max_prompt_chars < 1 or self.max_clips_per_job < 1:
            raise InvalidRequest("max_prompt_chars and max_clips_per_job must be >= 1")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway needs.

    Attributes:
        generator_url: ``host:port`` of the stable generator's V2 REST endpoint (until the routing table
            in NATS KV names one).
        clip_store_url: Where clips (WAV and codes) are written: a path or any fsspec URL.
        secret_key: Signs UI sessions and pseudonymises user ids; at least 32 characters in production.
        api_keys_file: JSON list of ``{"id", "sha256", "scopes", "requests_per_minute"}``; unset means
            no API keys (only UI sessions, if enabled).
        generator_model_name: Model name on the generator's V2 endpoint.
        stable_model_uri: Model URI of the stable policy, recorded in events.
        stable_version: Version label of the stable policy, recorded in events.
        environment: ``production`` or ``development`` (development accepts placeholder secrets).
        ui_sessions: Whether the listening page may open anonymous sessions (scopes generate, feedback, rate).
        ui_requests_per_minute: Rate limit of one UI session.
        host: Bind address.
        port: HTTP port.
        bus: The event bus.
        limits: Request limits.
    """

    generator_url: str = field(metadata={"help": "host:port of the generator's V2 REST endpoint"})
    clip_store_url: str = field(metadata={"help": "where clips are stored (path or fsspec URL)"})
    secret_key: str = field(metadata={"help": "signs UI sessions and pseudonymises user ids"})
    bus: BusConfig
    api_keys_file: str | None = None
    generator_model_name: str = "generator"
    stable_model_uri: str = "unknown"
    stable_version: str = "stable"
    environment: str = "production"
    ui_sessions: bool = True
    ui_requests_per_minute: int = 120  # a listener clicks a few times a minute; scripts need an API key
    host: str = "127.0.0.1"  # loopback locally; 0.0.0.0 inside the pod
    port: int = 8000
    limits: GatewayLimits = field(default_factory=GatewayLimits)

    def __post_init__(self) -> None:
        if self.environment not in ENVIRONMENTS:
            raise InvalidRequest(f"environment must be one of {ENVIRONMENTS}, got {self.environment!r}")
        if self.environment == "production" and (
            self.secret_key.lower() in PLACEHOLDER_SECRETS or len(self.secret_key) < 32
        ):
            raise InvalidRequest(
                "secret_key must be a random string of at least 32 characters in production "
                "(set MUSICRL_ENVIRONMENT=development to run with a placeholder)"
            )
        if "://" in self.generator_url:
            raise InvalidRequest(f"generator_url is host:port without a scheme, got {self.generator_url!r}")
        if not 0 <= self.port <= 65535:
            raise InvalidRequest(f"port must be between 0 and 65535, got {self.port}")
        if self.ui_requests_per_minute < 1:
            raise InvalidRequest("ui_requests_per_minute must be >= 1")
