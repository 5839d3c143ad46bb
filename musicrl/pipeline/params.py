"""The retraining pipeline's parameters: one frozen dataclass whose defaults are the pipeline's defaults.

A run started from the Kubeflow UI with no edits takes these values and does the whole job, so every field
has a default that works on a cluster with the chart's settings. The pipeline's first step checks them
(:meth:`RetrainingParams.check`), so a malformed GPU placement or stage list fails at once with a sentence
in the UI, before any GPU pod is scheduled.
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from musicrl.errors import InvalidRequest


SERVING = "serving"  # stable_uri: the stable policy the routing table names when the run starts
STAGE_ORDER = ("R", "U", "RU")  # MusicRL §4: RU is U applied after R, with R as the KL reference
TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
TOLERATION_OPERATORS = {"Equal", "Exists"}
TOLERATION_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute", ""}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")  # a Kubernetes resource quantity


@dataclass(frozen=True, slots=True)
class RetrainingParams:
    """Every parameter of the retraining pipeline.

    Attributes:
        image: The platform's container image every step runs in.
        dataset_url: The recorded events (the recorder's dataset URL).
        artifacts_url: Root under which snapshots, reward models, RL runs, gate reports and the registry go.
        stable_uri: The policy serving now: the RL start point and the gate's baseline. ``serving`` reads it
            from the routing table over ``nats_url`` when the run starts, so that a scheduled run finetunes
            what the last promotion left (a checkpoint URI pins every run to that checkpoint).
        clap_uri: The CLAP behind text adherence and the quality head.
        stages: Comma-separated RL stages to run, from R, U, RU (RU needs R).
        rl_config_dir: Folder of the stage configs ``<prefix>-r.yaml``, ``-u.yaml``, ``-ru.yaml``.
        rl_config_prefix: Their file-name prefix.
        rl_steps: RL steps per stage (0 keeps each config's own).
        rl_workers: Processes per RL stage; above 1 the stage runs as a Kubeflow Trainer TrainJob.
        min_new_preferences: Stop early, saying so, unless the snapshot holds this many more listened
            preferences than the stable policy was trained on.
        require_learned_preference: Stop before RL when no epoch of the preference model beat its untrained
            self on validation (false lets RL run on it anyway: a plumbing run on untrained models).
        validation_fraction: Share of prompts whose preferences the reward trainers choose their epoch on.
        test_fraction: Share of prompts held out from training and choosing, which the reports score on.
        gate_prompts_file: Held-out prompts of the offline gate (one per line).
        gate_clips_per_prompt: Clips per prompt and policy in the gate.
        gate_clip_duration_s: Length of the gate's clips.
        gate_min_reward_diff: Lowest accepted lower CI bound of (candidate − stable) per reward.
        gate_max_kl: Highest accepted KL to the stable policy, nats per token.
        gate_min_win_rate: Lowest accepted win rate under the preference model and under the other rewards.
        nats_url: The event bus, for the hand-over to the canary and the failure event (empty: not published).
        canary_share: Share of comparisons that pit the canary against the stable policy, in [0, 1].
        rollout_wait_s: Seconds the last step waits for the rollout controller's decision (0: it only starts
            the canary).
        gpu_type: Accelerator resource name of the GPU steps.
        gpu_count: Accelerators per GPU step.
        gpu_cpu_request: CPU request of a GPU step.
        gpu_memory_request: Memory request of a GPU step.
        gpu_node_selector: Node labels of the GPU node pool.
        gpu_tolerations: Tolerations of the GPU node pool's taints.
        device: Torch device of the training steps.
    """

    image: str = "ghcr.io/musicrl/musicrl-pipeline:0.1.0"  # the Dockerfile's `pipeline` target
    dataset_url: str = "s3://musicrl/dataset"
    artifacts_url: str = "s3://musicrl/artifacts"
    stable_uri: str = "hf://facebook/musicgen-small"  # valid without a bus; schedules use SERVING (k8s/base)
    clap_uri: str = "hf://laion/larger_clap_music"
    stages: str = "R,U,RU"  # the paper's best model is RU
    rl_config_dir: str = "/app/configs/rl"  # where the image keeps configs/rl
    rl_config_prefix: str = "musicrl"
    rl_steps: int = 0
    rl_workers: int = 1
    min_new_preferences: int = 1000  # fewer than this and a retrained reward model has learned little new
    require_learned_preference: bool = True
    # the snapshot's defaults; a young deployment with a few hundred preferences needs a larger validation
    # share, or its epochs are ranked on a handful of pairs
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    gate_prompts_file: str = "/app/configs/rl/prompts.txt"
    gate_clips_per_prompt: int = 4
    gate_clip_duration_s: float = 10.0  # the stage configs' rollout length: the gate hears what RL optimised
    gate_min_reward_diff: float = -0.02  # no reward may drop by more than this (lower CI bound)
    gate_max_kl: float = 0.5  # nats per token: a candidate far from stable needs a person's look first
    gate_min_win_rate: float = 0.5
    nats_url: str = ""
    canary_share: float = 0.5  # half the comparisons judge the canary: fast evidence, half the page unchanged
    rollout_wait_s: float = 0.0  # a canary takes hours of listening; a run need not hold a pod that long
    gpu_type: str = "nvidia.com/gpu"
    gpu_count: int = 1
    gpu_cpu_request: str = "8"
    gpu_memory_request: str = "64Gi"
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"musicrl.io/pool": "gpu"})
    gpu_tolerations: list[dict[str, Any]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    device: str = "cuda"

    def check(self) -> None:
        """Refuse parameters that would fail later, with a sentence naming the parameter.

        Raises:
            InvalidRequest: Unknown or unordered stages, RU without R, a malformed GPU placement, or an
                out-of-range number.
        """
        selected_stages(self.stages)
        if self.stable_uri == SERVING and not self.nats_url:
            raise InvalidRequest(
                f"stable_uri {SERVING!r} reads the policy serving now from the routing table over nats_url: set "
                "nats_url, or name the stable checkpoint in stable_uri"
            )
        if self.gate_clips_per_prompt < 1 or not 0 < self.gate_clip_duration_s <= 120:
            raise InvalidRequest("gate_clips_per_prompt must be >= 1 and gate_clip_duration_s in (0, 120]")
        if self.gpu_count < 0 or self.rl_workers < 1 or self.rl_steps < 0 or self.min_new_preferences < 0:
            raise InvalidRequest("gpu_count, rl_steps and min_new_preferences must be >= 0 and rl_workers >= 1")
        for name in ("gpu_cpu_request", "gpu_memory_request"):
            if not QUANTITY.match(str(getattr(self, name))):
                raise InvalidRequest(f"{name} must be a Kubernetes quantity such as 8, 500m or 64Gi")
        check_node_selector(self.gpu_node_selector)
        check_tolerations(self.gpu_tolerations)
        if not 0.0 <= self.canary_share <= 1.0 or not 0.0 <= self.rollout_wait_s <= 7 * 24 * 3600:
            raise InvalidRequest("canary_share must be in [0, 1] and rollout_wait_s between 0 and a week of seconds")
        if not (0.0 < self.validation_fraction and 0.0 < self.test_fraction) or (
            self.validation_fraction + self.test_fraction >= 1.0
        ):
            raise InvalidRequest(
                "validation_fraction and test_fraction must be above 0 and sum to less than 1 (the reward models "
                f"need prompts to train on, choose on and report on), got {self.validation_fraction} and "
                f"{self.test_fraction}"
            )
        if not 0.0 <= self.gate_min_win_rate <= 1.0 or self.gate_max_kl < 0:
            raise InvalidRequest("gate_min_win_rate must be in [0, 1] and gate_max_kl >= 0")

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "RetrainingParams":
        """Build from pipeline parameter values; unknown names are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequest(f"unknown pipeline parameters {unknown}")
        return cls(**data)

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def selected_stages(stages: str) -> tuple[str, ...]:
    """The stages named by ``stages`` ("R,U,RU"), in the paper's order.

    Raises:
        InvalidRequest: An unknown stage, none at all, or RU without R (RU starts from R's checkpoint).
    """
    names = [s.strip().upper() for s in stages.split(",") if s.strip()]
    unknown = sorted(set(names) - set(STAGE_ORDER))
    if unknown or not names:
        raise InvalidRequest(f"stages must name some of {', '.join(STAGE_ORDER)}; got {stages!r}")
    if "RU" in names and "R" not in names:
        raise InvalidRequest("stage RU starts from R's checkpoint and uses it as the KL reference: add R")
    return tuple(s for s in STAGE_ORDER if s in names)


def candidate_stage(stages: str) -> str:
    """The stage whose checkpoint becomes the candidate: the last selected one (RU when it runs)."""
    return selected_stages(stages)[-1]


def check_node_selector(selector: object) -> None:
    """Refuse a node selector that is not a mapping of label names to label values."""
    if not isinstance(selector, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k for k, v in selector.items()
    ):
        raise InvalidRequest('gpu_node_selector must map label names to values, e.g. {"musicrl.io/pool": "gpu"}')


def check_tolerations(tolerations: object) -> None:
    """Refuse tolerations that the Kubernetes API would refuse."""
    if not isinstance(tolerations, Sequence) or isinstance(tolerations, str):
        raise InvalidRequest("gpu_tolerations must be a list of tolerations")
    for toleration in tolerations:
        if not isinstance(toleration, Mapping) or not set(toleration) <= TOLERATION_KEYS:
            raise InvalidRequest(f"a toleration may hold only {sorted(TOLERATION_KEYS)}; got {toleration!r}")
        if toleration.get("operator", "Equal") not in TOLERATION_OPERATORS:
            raise InvalidRequest(f"toleration operator must be Equal or Exists; got {toleration.get('operator')!r}")
        if toleration.get("effect", "") not in TOLERATION_EFFECTS:
            raise InvalidRequest("toleration effect must be one of NoSchedule, PreferNoSchedule, NoExecute")
