"""Settings of the rollout controller; its flags (`musicrl serve rollout`) and MUSICRL_* variables derive from them."""

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from musicrl.config import BusConfig
from musicrl.errors import InvalidRequest
from musicrl.rollout.decision import DecisionRule
from musicrl.rollout.health import Guardrails


if TYPE_CHECKING:
    from musicrl.rollout.kserve_target import KServeTargetConfig


TARGETS = ("local", "kserve")


@dataclass(frozen=True, slots=True)
class LocalTargetConfig:
    """The ``local`` target: canary generators as processes on this machine.

    Attributes:
        state_dir: Where the canaries' logs and process files go (``musicrl up``'s state folder).
        canary_host: Address the canary generators bind to.
        canary_first_port: The first port tried for a canary's V2 REST endpoint (its gRPC port is the next one).
        retire_after_s: Seconds after a promotion before the replaced generator is stopped: the gateway moves
            to the new one and the clips in flight finish.
    """

    state_dir: str = ".musicrl"
    canary_host: str = "127.0.0.1"
    canary_first_port: int = 8180  # clear of the stable generator's 8080/8081
    retire_after_s: float = 30.0  # a 30 s clip on a CPU takes this long; the routing watch moves within 1 s

    def __post_init__(self) -> None:
        if not 1024 <= self.canary_first_port <= 65534:
            raise InvalidRequest(f"canary_first_port must be between 1024 and 65534, got {self.canary_first_port}")
        if not (math.isfinite(self.retire_after_s) and self.retire_after_s >= 0):
            raise InvalidRequest(f"retire_after_s must be a number of seconds >= 0, got {self.retire_after_s}")


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Everything the rollout controller needs.

    Attributes:
        bus: The NATS server, the event stream and the KV buckets.
        target: Where rollouts act: ``local`` (generator processes and the routing table) or ``kserve``.
        rule: When the evidence is enough.
        local: The ``local`` target's settings.
        generator_model_name: The V2 model name every generator serves (stable and canary).
        kserve_namespace: The ``kserve`` target: the generator InferenceService's namespace.
        kserve_inference_service: The ``kserve`` target: its name.
        kserve_mode: The ``kserve`` target: ``standard`` (RawDeployment, ``spec.canary``) or ``serverless``.
        durable_name: Name of the durable JetStream consumer of comparison, playback and preference events.
        warmup_s: Seconds after the canary is first ready before its comparisons count.
        ready_timeout_s: Seconds a canary may take to become ready before the rollout is rolled back.
        check_interval_s: Seconds between guardrail checks (readiness, error rate, latency, the deadline).
        max_votes_per_listener: Votes one listener may cast in one rollout; later ones do not count.
        min_listened_share: Share of each clip a listener must have played for their vote to count.
        guardrails: The canary's error rate and latency limits.
        metrics_port: Port of the controller's own Prometheus endpoint; 0 disables it.
        metrics_host: Address that endpoint binds to.
    """

    bus: BusConfig
    target: str = "local"
    rule: DecisionRule = field(default_factory=DecisionRule)
    local: LocalTargetConfig = field(default_factory=LocalTargetConfig)
    generator_model_name: str = "generator"
    kserve_namespace: str = ""
    kserve_inference_service: str = ""
    kserve_mode: str = "standard"  # KServe >= 0.20's default deployment mode
    durable_name: str = "rollout"
    warmup_s: float = 30.0  # a fresh generator's first clips are slow (lazy init): not what listeners will hear
    ready_timeout_s: float = 600.0  # a 3B checkpoint downloads and loads in minutes on a GPU node
    check_interval_s: float = 15.0  # a broken canary is rolled back within failure_limit × 15 s
    max_votes_per_listener: int = 50  # no single listener's taste decides a rollout (min_votes is 50)
    min_listened_share: float = 0.5  # the snapshot's rule: a vote on a clip nobody heard says nothing
    guardrails: Guardrails = field(default_factory=Guardrails)
    metrics_port: int = 9103  # next to the recorder's 9102
    metrics_host: str = "127.0.0.1"  # loopback locally; the chart sets 0.0.0.0 inside the pod

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise InvalidRequest(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.target == "kserve":
            self.kserve_target()  # its own checks, at start-up rather than at the first rollout
        if not self.durable_name or any(c in self.durable_name for c in ". *>"):
            raise InvalidRequest(
                f"durable_name must be a name without '.', ' ', '*' or '>', got {self.durable_name!r}"
            )
        for name in ("warmup_s", "ready_timeout_s", "check_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0 and (value > 0 or name == "warmup_s")):
                raise InvalidRequest(f"{name} must be a positive number of seconds, got {value}")
        if self.max_votes_per_listener < 1:
            raise InvalidRequest(f"max_votes_per_listener must be at least 1, got {self.max_votes_per_listener}")
        if not 0.0 <= self.min_listened_share <= 1.0:
            raise InvalidRequest(f"min_listened_share must be between 0 and 1, got {self.min_listened_share}")
        if not 0 <= self.metrics_port <= 65535:
            raise InvalidRequest(f"metrics_port must be between 0 and 65535 (0 disables it), got {self.metrics_port}")

    def kserve_target(self) -> "KServeTargetConfig":
        """The ``kserve`` target's settings. Raises InvalidRequest for a missing or malformed name."""
        from musicrl.rollout.kserve_target import KServeTargetConfig

        if not (self.kserve_namespace and self.kserve_inference_service):
            raise InvalidRequest(
                "the kserve target needs kserve_namespace and kserve_inference_service (MUSICRL_KSERVE_NAMESPACE, "
                "MUSICRL_KSERVE_INFERENCE_SERVICE): the generator InferenceService to patch"
            )
        return KServeTargetConfig(
            namespace=self.kserve_namespace,
            isvc_name=self.kserve_inference_service,
            model_name=self.generator_model_name,
            mode=self.kserve_mode,  # type: ignore[arg-type]  # checked by KServeTargetConfig
            ready_timeout_s=self.ready_timeout_s,
        )
