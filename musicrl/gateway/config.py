"""The gateway's settings (flags and MUSICRL_* variables are derived from these fields)."""

import math
from dataclasses import dataclass, field

from musicrl.config import BusConfig
from musicrl.data.snapshot_config import DEFAULT_MIN_LISTENED_SHARE
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
        max_body_bytes: Largest request body accepted; larger ones get a 413 before they are parsed.
        max_inflight_generations: Generation jobs and comparisons this replica runs at once; beyond it,
            new ones get a 503 with ``Retry-After`` instead of queueing without bound.
        min_listened_share: Share of a clip's length a listener must play (or play to the end) for a
            preference to count; reported to clients as ``min_listened_ms`` with each comparison.
        session_mints_per_minute: New listening-page sessions one client address may open per minute.
        session_max_age_s: How long a listening-page session lasts; its cookie carries its issue time.
    """

    max_prompt_chars: int = 1000
    max_duration_s: float = 30.0  # MusicGen was trained on 30 s excerpts
    comparison_duration_s: float = 10.0  # long enough to judge, short enough to listen to twice
    max_clips_per_job: int = 4
    wait_timeout_s: float = 120.0  # a 30 s clip on a busy GPU; clients poll after that
    max_body_bytes: int = 64 * 1024  # the largest valid body (a routing table) is under 4 KiB
    max_inflight_generations: int = 32  # two batches of the generator's default 16 rows
    min_listened_share: float = DEFAULT_MIN_LISTENED_SHARE  # the snapshot's default: hints and filter agree
    session_mints_per_minute: int = 10  # a person opens a few tabs; a script minting cookies is refused
    session_max_age_s: int = 30 * 24 * 3600  # a listener keeps one pseudonymous id for a month

    def __post_init__(self) -> None:
        for name in ("max_duration_s", "comparison_duration_s", "wait_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidRequest(f"{name} must be a positive number of seconds, got {value}")
        if self.comparison_duration_s > self.max_duration_s:
            raise InvalidRequest("comparison_duration_s must not exceed max_duration_s")
        for name in (
            "max_prompt_chars",
            "max_clips_per_job",
            "max_body_bytes",
            "max_inflight_generations",
            "session_mints_per_minute",
            "session_max_age_s",
        ):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.min_listened_share) and 0.0 <= self.min_listened_share <= 1.0):
            raise InvalidRequest(f"min_listened_share must be between 0 and 1, got {self.min_listened_share}")


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
        stable_model_uri: Model URI of the stable policy, recorded in every event as the clips' provenance
            (required: an event that says "unknown" breaks the on-policy loop).
        generator_model_name: Model name on the generator's V2 endpoint.
        stable_version: Version label of the stable policy, recorded in events.
        environment: ``production`` or ``development`` (development accepts placeholder secrets).
        ui_sessions: Whether the listening page may open anonymous sessions (scopes generate, feedback, rate).
        ui_requests_per_minute: Rate limit of one UI session.
        forwarded_allow_ips: Comma-separated addresses of proxies (the ingress) whose ``X-Forwarded-For``
            is trusted for the client's address, which session minting is limited by; ``*`` trusts any.
        host: Bind address.
        port: HTTP port.
        access_log: One log line per request. Off by default: the ingress logs access and ``/metrics``
            counts requests by route and status, while a line per feedback request is most of the log
            volume at a few thousand requests per second (and about 3% of the gateway's CPU).
        bus: The event bus.
        limits: Request limits.
    """

    generator_url: str = field(metadata={"help": "host:port of the generator's V2 REST endpoint"})
    clip_store_url: str = field(metadata={"help": "where clips are stored (path or fsspec URL)"})
    secret_key: str = field(metadata={"help": "signs UI sessions and pseudonymises user ids"})
    stable_model_uri: str = field(metadata={"help": "model URI of the stable policy, recorded in events"})
    bus: BusConfig
    api_keys_file: str | None = None
    generator_model_name: str = "generator"
    stable_version: str = "stable"
    environment: str = "production"
    ui_sessions: bool = True
    ui_requests_per_minute: int = 120  # a listener clicks a few times a minute; scripts need an API key
    forwarded_allow_ips: str = "127.0.0.1"  # uvicorn's default; set to the ingress's addresses in a cluster
    host: str = "127.0.0.1"  # loopback locally; 0.0.0.0 inside the pod
    port: int = 8000
    access_log: bool = False
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
        if not self.stable_model_uri.strip():
            raise InvalidRequest("stable_model_uri must name the checkpoint the stable generator serves")
        if not 0 <= self.port <= 65535:
            raise InvalidRequest(f"port must be between 0 and 65535, got {self.port}")
        if self.ui_requests_per_minute < 1:
            raise InvalidRequest("ui_requests_per_minute must be >= 1")
