"""Settings of ``musicrl triton export`` and ``musicrl serve triton``; their flags and variables derive from them."""

import math
from dataclasses import dataclass, field

from musicrl.errors import InvalidRequest


DEVICE_KINDS = {"cpu": "KIND_CPU", "cuda": "KIND_GPU"}


@dataclass(frozen=True, slots=True)
class TritonExportConfig:
    """What the exported repository serves.

    Each Triton model carries its settings as ``MUSICRL_*`` parameters of its ``config.pbtxt``, read with the
    same settings code as the KServe servers' environment, so one name means one thing in both runtimes.

    Attributes:
        out: The model repository folder to write.
        model_uri: The policy the ``generator`` model serves.
        text_adherence_uri: The CLAP of ``text-adherence``; unset leaves the model out.
        quality_uri: The checkpoint of ``quality``; unset leaves it out.
        preference_uri: The checkpoint of ``preference``; unset leaves it out.
        device: Torch device of every model (``cpu``, ``cuda``); it also sets the instance kind.
        instances: Model instances (stub processes) per model; each holds its own copy of the weights.
        clip_store_url: Where ``uri``-mode replies store clips; unset refuses ``uri`` mode.
    """

    out: str = field(metadata={"help": "the model repository folder to write"})
    model_uri: str = field(default="tiny://musicgen?seed=0", metadata={"flag": "--model"})
    text_adherence_uri: str | None = "tiny://clap?seed=0"
    quality_uri: str | None = "tiny://quality?seed=0"
    preference_uri: str | None = None
    device: str = "cpu"
    instances: int = 1
    clip_store_url: str | None = None

    def __post_init__(self) -> None:
        if not self.out:
            raise InvalidRequest("--out names the model repository folder to write")
        if self.device.split(":")[0] not in DEVICE_KINDS:
            raise InvalidRequest(f"device must be cpu or cuda[:N], got {self.device!r}")
        if self.instances < 1:
            raise InvalidRequest(f"instances must be >= 1, got {self.instances}")


@dataclass(frozen=True, slots=True)
class TritonServeConfig:
    """How ``musicrl serve triton`` runs tritonserver over a repository.

    Attributes:
        repository: The model repository (``musicrl triton export``).
        triton_home: Where ``make setup`` put the tritonserver binary and the backend's Python environment;
            unset looks in ``.triton`` beside the package's checkout.
        host: Address the HTTP and gRPC endpoints bind to.
        http_port: V2 REST port.
        grpc_port: V2 gRPC port.
        metrics_port: Prometheus port; 0 turns metrics off.
        exit_timeout_s: How long a stopping server waits for requests in flight.
    """

    repository: str = field(metadata={"help": "the model repository to serve"})
    triton_home: str | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    exit_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("http_port", "grpc_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise InvalidRequest(f"{name} must be between 0 and 65535, got {getattr(self, name)}")
        if not (math.isfinite(self.exit_timeout_s) and self.exit_timeout_s >= 0):
            raise InvalidRequest(f"exit_timeout_s must be >= 0, got {self.exit_timeout_s}")
