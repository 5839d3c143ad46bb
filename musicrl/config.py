"""Typed, frozen configuration for the core components.

Each component takes one of these. CLI flags and environment variables are derived from the fields
(``musicrl.settings``), so there is no second list of options to keep in sync.
"""

import math
from dataclasses import dataclass, field

from musicrl.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one clip is sampled. A per-call value: the engine holds no sampling state.

    Attributes:
        duration_s: Length of the clip in seconds; converted to frames with the model's frame rate.
        temperature: Softmax temperature; 0 means greedy (argmax) decoding.
        top_k: Keep only the k most likely tokens per codebook before sampling; 0 keeps all of them.
        guidance_scale: Classifier-free guidance scale; 1 disables guidance (no unconditional pass).
    """

    duration_s: float = field(default=10.0, metadata={"flag": "--duration", "help": "clip length in seconds"})
    temperature: float = 1.0  # MusicGen's default; RL rollouts use 0.99 (MusicRL §3)
    top_k: int = 250  # MusicGen's default (audiocraft), keeps sampling away from the long tail
    guidance_scale: float = 3.0  # MusicGen's default CFG scale

    def __post_init__(self) -> None:
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise InvalidRequest(f"duration_s must be a positive number of seconds, got {self.duration_s}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InvalidRequest(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise InvalidRequest(f"top_k must be >= 0 (0 keeps the whole vocabulary), got {self.top_k}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 1):
            raise InvalidRequest(
                f"guidance_scale must be >= 1 (1 disables classifier-free guidance), got {self.guidance_scale}"
            )

    @property
    def uses_guidance(self) -> bool:
        """Whether this clip needs the unconditional pass of classifier-free guidance."""
        return self.guidance_scale > 1


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Where and in which precision the generation engine runs.

    Attributes:
        device: A torch device string (``cpu``, ``cuda``, ``cuda:1``).
        dtype: Weights and activations dtype: ``float32``, ``bfloat16`` or ``float16``.
        max_prompt_tokens: Prompts are truncated to this many text tokens before encoding.
    """

    device: str = "cpu"
    dtype: str = "float32"  # bfloat16 halves memory on GPUs; CPUs run float32 fastest
    max_prompt_tokens: int = 256  # T5 uses relative positions; 256 tokens is far beyond any music prompt

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise InvalidRequest(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.max_prompt_tokens < 1:
            raise InvalidRequest(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Network settings shared by every model server.

    Attributes:
        host: Address both the REST and the gRPC listener bind to.
        http_port: REST (V2 + /metrics) port; 0 picks a free one.
        grpc_port: gRPC (V2) port; 0 picks a free one.
        enable_grpc: Whether to start the gRPC listener.
        grpc_max_message_bytes: Largest gRPC message sent or received.
        torch_threads: torch's intra-op threads; 0 takes ``OMP_NUM_THREADS`` if set, else the CPUs the
            container's quota allows (not the node's core count).
        shutdown_grace_s: After SIGTERM, how long accepted requests may take to finish while new ones are
            refused; the pod's ``terminationGracePeriodSeconds`` must be longer. Set it above the time the
            longest allowed clip takes to generate at full load.
    """

    host: str = "127.0.0.1"  # loopback locally; the chart sets 0.0.0.0 inside the pod
    http_port: int = 8080  # KServe's convention
    grpc_port: int = 8081  # KServe's convention
    enable_grpc: bool = True
    grpc_max_message_bytes: int = 8 * 1024 * 1024  # gRPC's usual client cap; larger replies return clip URIs
    torch_threads: int = 0
    shutdown_grace_s: float = 60.0  # a 30 s clip at full batch on a GPU, with room; the chart adds 15 s

    def __post_init__(self) -> None:
        if not (math.isfinite(self.shutdown_grace_s) and self.shutdown_grace_s >= 0):
            raise InvalidRequest(f"shutdown_grace_s must be >= 0 seconds, got {self.shutdown_grace_s}")
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise InvalidRequest(f"{name} must be between 0 and 65535, got {port}")
        if self.enable_grpc and self.http_port and self.http_port == self.grpc_port:
            raise InvalidRequest(f"http_port and grpc_port must differ, both are {self.http_port}")
        if self.grpc_max_message_bytes < 1024:
            raise InvalidRequest(f"grpc_max_message_bytes must be at least 1024, got {self.grpc_max_message_bytes}")
        if self.torch_threads < 0:
            raise InvalidRequest(f"torch_threads must be >= 0 (0: from the CPU quota), got {self.torch_threads}")


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """Server-side batching of concurrent requests.

    Attributes:
        max_batch_size: Most clips decoded together: in one engine call, or in flight in the generator's
            continuous batch.
        max_queue_delay_ms: Longest a request waits for others to fill a micro-batch (not used by the
            generator's continuous batching, which admits rows at every step).
        max_queued_rows: Most rows waiting for a batch; a request that would exceed it is refused with a 503
            (``Overloaded``) instead of waiting behind an unbounded queue.
    """

    max_batch_size: int = 16  # on a GPU the decode step is memory-bound well past 16 clips
    max_queue_delay_ms: float = 20.0  # ~one decode step of a small model; invisible next to a clip's generation
    max_queued_rows: int = 128  # eight full batches: beyond that a client is better off retrying elsewhere

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InvalidRequest(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queued_rows < self.max_batch_size:
            raise InvalidRequest(
                f"max_queued_rows ({self.max_queued_rows}) must be >= max_batch_size ({self.max_batch_size}), "
                "or a full request could never be queued"
            )
        if not (math.isfinite(self.max_queue_delay_ms) and self.max_queue_delay_ms >= 0):
            raise InvalidRequest(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")


@dataclass(frozen=True, slots=True)
class GenerationLimits:
    """What one generation request may ask for.

    Attributes:
        max_duration_s: Longest clip a request may ask for, in seconds.
        max_prompt_chars: Longest prompt accepted, in characters.
        max_prompts_per_request: Most prompts in one request (the batcher may still split them).
    """

    max_duration_s: float = 30.0  # MusicGen was trained on 30 s excerpts
    max_prompt_chars: int = 1000
    max_prompts_per_request: int = 64  # bounds one request's memory: 64 × 30 s × 32 kHz × 4 B ≈ 250 MB

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_duration_s) and self.max_duration_s > 0):
            raise InvalidRequest(f"max_duration_s must be positive, got {self.max_duration_s}")
        if self.max_prompt_chars < 1:
            raise InvalidRequest(f"max_prompt_chars must be >= 1, got {self.max_prompt_chars}")
        if self.max_prompts_per_request < 1:
            raise InvalidRequest(f"max_prompts_per_request must be >= 1, got {self.max_prompts_per_request}")


@dataclass(frozen=True, slots=True)
class GeneratorServiceConfig:
    """Everything the generator service needs; flags and env vars are derived from these fields.

    Attributes:
        model_uri: The policy to serve (``tiny://``, ``hf://``, ``s3://``, a path).
        model_name: Name of the model on the V2 endpoints.
        clip_store_url: fsspec URL where clips go when a reply would exceed the gRPC message cap;
            unset means such requests are refused with a 400.
        server: Bind address and ports.
        batching: Micro-batching limits.
        limits: Request limits.
        engine: Device and precision.
        defaults: Sampling parameters used when a request does not set them.
        warmup_duration_s: Length of the clip generated before the server reports ready, so that the first
            request does not pay for lazy initialisation (allocator growth, kernel selection); 0 skips it.
        continuous_batching: Whether requests join the running decode batch at every step (up to
            ``batching.max_batch_size`` rows in flight), or wait for the next micro-batch.
    """

    model_uri: str = field(metadata={"flag": "--model", "help": "model URI to serve"})
    model_name: str = "generator"
    clip_store_url: str | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    limits: GenerationLimits = field(default_factory=GenerationLimits)
    engine: EngineConfig = field(default_factory=EngineConfig)
    defaults: SamplingParams = field(default_factory=SamplingParams)
    warmup_duration_s: float = 0.5  # every layer and the codec run once; a second is a few steps on a GPU
    continuous_batching: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.warmup_duration_s) and 0 <= self.warmup_duration_s <= self.limits.max_duration_s):
            raise InvalidRequest(
                f"warmup_duration_s must lie in [0, max_duration_s={self.limits.max_duration_s}], "
                f"got {self.warmup_duration_s}"
            )
        if not self.model_uri:
            raise InvalidRequest("model_uri is required (for example tiny://musicgen?seed=0)")
        if self.defaults.duration_s > self.limits.max_duration_s:
            raise InvalidRequest(
                f"the default duration_s ({self.defaults.duration_s}) exceeds max_duration_s "
                f"({self.limits.max_duration_s}); lower one or raise the other"
            )


@dataclass(frozen=True, slots=True)
class BusConfig:
    """The NATS JetStream event bus.

    Attributes:
        nats_url: NATS server URL(s), comma-separated.
        stream_name: The JetStream stream holding every event (subjects ``musicrl.v1.>``).
        dlq_stream_name: The stream holding dead letters (subjects ``musicrl.dlq.>``).
        duplicate_window_s: JetStream drops a second publish with the same ``Nats-Msg-Id`` within this window.
        max_age_s: Events older than this leave the stream; 0 keeps them (the recorder has them in Parquet).
        replicas: Stream replicas (1 locally, 3 on a cluster).
        publish_timeout_s: Wait for one acknowledgement.
        publish_deadline_s: Give up publishing (and answer 503) after retrying this long.
    """

    nats_url: str = field(metadata={"help": "NATS server URL, e.g. nats://127.0.0.1:4222"})
    stream_name: str = "MUSICRL"
    dlq_stream_name: str = "MUSICRL_DLQ"
    duplicate_window_s: float = 600.0  # 10 min: every retry of a publish lands inside it
    max_age_s: float = 0.0  # keep forever; on a cluster, bound it once the recorder's Parquet is the record
    replicas: int = 1  # a single local server; 3 on a cluster for quorum
    publish_timeout_s: float = 2.0  # JetStream acks in milliseconds; 2 s means the server is in trouble
    publish_deadline_s: float = 30.0  # rides out a server restart, well inside the duplicate window

    def __post_init__(self) -> None:
        if not self.nats_url:
            raise InvalidRequest("nats_url is required, for example nats://127.0.0.1:4222")
        if self.replicas not in (1, 3, 5):
            raise InvalidRequest(f"replicas must be 1, 3 or 5 (a JetStream quorum), got {self.replicas}")
        if not 0 < self.publish_timeout_s <= self.publish_deadline_s:
            raise InvalidRequest("publish_timeout_s must be positive and at most publish_deadline_s")
        if self.publish_deadline_s * 2 > self.duplicate_window_s:
            raise InvalidRequest(
                f"publish_deadline_s ({self.publish_deadline_s}) must be at most half of duplicate_window_s "
                f"({self.duplicate_window_s}), so that a retried publish is always recognised as a duplicate"
            )
        if self.max_age_s < 0:
            raise InvalidRequest(f"max_age_s must be >= 0 (0 keeps events forever), got {self.max_age_s}")


@dataclass(frozen=True, slots=True)
class RewardServiceConfig:
    """The reward service: which reward models it serves, and the server conventions of the generator.

    Attributes:
        text_adherence_uri: CLAP checkpoint of the ``text-adherence`` model (unset: not served).
        quality_uri: Checkpoint of the ``quality`` model (unset: not served).
        preference_uri: Checkpoint of the ``preference`` model (unset: not served).
        device: Torch device of every model.
        max_clips_per_request: Most clips one request may carry.
        server: Bind address and ports.
        batching: Micro-batching limits (each model batches on its own).
    """

    text_adherence_uri: str | None = None
    quality_uri: str | None = None
    preference_uri: str | None = None
    device: str = "cpu"
    max_clips_per_request: int = 64
    server: ServerConfig = field(default_factory=ServerConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)

    def __post_init__(self) -> None:
        if not (self.text_adherence_uri or self.quality_uri or self.preference_uri):
            raise InvalidRequest(
                "serve at least one reward: set text_adherence_uri, quality_uri or preference_uri "
                "(for example tiny://clap?seed=0 for text adherence)"
            )
        if self.max_clips_per_request < 1:
            raise InvalidRequest(f"max_clips_per_request must be >= 1, got {self.max_clips_per_request}")

    def models(self) -> dict[str, str]:
        """Reward name → model URI, for the rewards this service serves."""
        named = {
            "text-adherence": self.text_adherence_uri,
            "quality": self.quality_uri,
            "preference": self.preference_uri,
        }
        return {name: uri for name, uri in named.items() if uri}
