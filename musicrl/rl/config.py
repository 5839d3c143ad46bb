"""An RL run's configuration, read from a YAML or JSON file (``musicrl train rl --config FILE``).

The paper's stages are configs (``configs/rl/``): R optimises text adherence + quality, U the user-preference
model, RU runs U from R's checkpoint with R's checkpoint as the KL reference.
"""

import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from musicrl.config import SamplingParams
from musicrl.errors import InvalidRequest
from musicrl.rewards.mixture import MixtureConfig, MixtureTerm, Normalization
from musicrl.rewards.registry import REWARD_KINDS
from musicrl.rl.compute import ComputeConfig


class ValueLayout(enum.StrEnum):
    SEPARATE = "separate"  # a decoder copy with a head (the paper)
    SHARED = "shared"  # a head on the policy's trunk


class AlarmAction(enum.StrEnum):
    STOP = "stop"  # end the run when the alarm fires
    KEEP_BEST = "keep_best"  # run on; checkpoints/best names the saved checkpoint with the best held-out reward


@dataclass(frozen=True, slots=True)
class RewardSpec:
    """A reward of the run: which model, by URI, and its place in the mixture."""

    reward: str
    uri: str
    weight: float = 1.0
    normalization: Normalization = Normalization.RUNNING  # rewards on different scales, RL-stable


@dataclass(frozen=True, slots=True)
class AlarmConfig:
    """The over-optimisation alarm on a reward the run does not train on.

    Attributes:
        reward: The held-out reward's name; uri: its model.
        window: Steps averaged on each side of the comparison.
        max_drop: Fire when the window mean falls this far below the best window mean seen.
        action: What to do when it fires.
    """

    reward: str
    uri: str
    window: int = 10
    max_drop: float = 0.05
    action: AlarmAction = AlarmAction.KEEP_BEST

    def __post_init__(self) -> None:
        if self.window < 1:
            raise InvalidRequest(f"held_out.window must be >= 1 step, got {self.window}")
        if not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise InvalidRequest(f"held_out.max_drop must be a finite number >= 0, got {self.max_drop}")


@dataclass(frozen=True, slots=True)
class OptimConfig:
    """Optimisation of the policy and the value model (one AdamW each).

    Attributes:
        steps: Gradient steps of the run.
        batch_size: Prompts per step per process.
        policy_lr: The policy's learning rate; value_lr: the value model's.
        max_grad_norm: Each optimiser's parameters are clipped to this gradient norm on their own, so the
            value's large early gradients cannot shrink the policy's step.
        value_coef: Weight of the value loss in the shared-trunk layout; unused with a separate value model.
    """

    steps: int = 1000
    batch_size: int = 8  # prompts per step per process
    policy_lr: float = 1e-5
    value_lr: float = 1e-4
    max_grad_norm: float = 1.0  # L2 norm, per optimiser
    value_coef: float = 0.5  # weight of the value loss when the trunk is shared (value: shared)

    def __post_init__(self) -> None:
        for name in ("policy_lr", "value_lr", "max_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidRequest(f"optim.{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.value_coef) and self.value_coef >= 0):
            raise InvalidRequest(f"optim.value_coef must be a finite number >= 0, got {self.value_coef}")


@dataclass(frozen=True, slots=True)
class RLConfig:
    """One RL run.

    Attributes:
        stage: A label (``R``, ``U``, ``RU``, ...), recorded in checkpoints.
        policy_uri: The start checkpoint (policy and value are initialised from it).
        reference_uri: The KL reference (default: the start checkpoint).
        alpha: KL weight α of MusicRL eq. 1, in [0, 1].
        rewards: The rewards whose mixture is R.
        prompts: Training prompts (or ``prompts_file``: one prompt per line).
        sampling: Rollout sampling; the paper samples at temperature 0.99.
        optim: Optimisation.
        value: Value model layout.
        held_out: The over-optimisation alarm (optional).
        reward_service_url: ``host:port`` of the reward service to score remotely; unset scores in process.
        checkpoint_every: Steps between checkpoints.
        out_url: The run's folder.
        seed: Seed of prompt sampling and rollouts.
        device: Torch device.
        compute: Precision, activation checkpointing and chunking of the RL step's passes.
    """

    stage: str
    policy_uri: str
    rewards: tuple[RewardSpec, ...]
    prompts: tuple[str, ...]
    out_url: str
    reference_uri: str | None = None
    alpha: float = 0.1
    sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(duration_s=5.0, temperature=0.99, top_k=0, guidance_scale=3.0)
    )
    optim: OptimConfig = field(default_factory=OptimConfig)
    value: ValueLayout = ValueLayout.SEPARATE
    held_out: AlarmConfig | None = None
    reward_service_url: str | None = None
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "cpu"
    compute: ComputeConfig = field(default_factory=ComputeConfig)  # fused chunks; bf16 on CUDA only

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise InvalidRequest(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.prompts or not all(p.strip() for p in self.prompts):
            raise InvalidRequest("the prompt set is empty (or holds blank prompts); give prompts or a prompts_file")
        if not self.rewards:
            raise InvalidRequest("an RL run needs at least one reward")
        for name in [r.reward for r in self.rewards] + ([self.held_out.reward] if self.held_out else []):
            if name not in REWARD_KINDS:
                raise InvalidRequest(f"unknown reward {name!r}; known: {sorted(REWARD_KINDS)}")
        if self.held_out and self.held_out.reward in {r.reward for r in self.rewards}:
            raise InvalidRequest(f"the held-out reward {self.held_out.reward!r} must not be one the run trains on")
        if self.optim.steps < 1 or self.optim.batch_size < 1 or self.checkpoint_every < 1:
            raise InvalidRequest("steps, batch_size and checkpoint_every must be >= 1")
        if self.sampling.temperature <= 0:
            raise InvalidRequest("rollouts must be sampled (temperature > 0): REINFORCE needs exploration")

    @property
    def reference(self) -> str:
        return self.reference_uri or self.policy_uri

    def mixture(self) -> MixtureConfig:
        return MixtureConfig(tuple(MixtureTerm(r.reward, r.weight, r.normalization) for r in self.rewards))

    @classmethod
    def from_file(cls, path: str | Path) -> "RLConfig":
        """Read a YAML or JSON config; relative ``prompts_file`` paths are relative to the config file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise InvalidRequest(f"cannot read the RL config {path}: {e}") from e
        if not isinstance(data, Mapping):
            raise InvalidRequest(f"{path} must hold a mapping of settings")
        return cls.from_wire(data, base_dir=path.parent)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any], base_dir: Path = Path(".")) -> "RLConfig":
        """Build from plain data; unknown top-level keys are refused (a typo must not pass silently)."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)} | {"prompts_file"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequest(f"unknown RL config keys {unknown}; known: {sorted(known)}")
        if "prompts_file" in data:
            data["prompts"] = _read_prompts(base_dir / str(data.pop("prompts_file")))
        try:
            data["rewards"] = tuple(_reward_spec(r) for r in data.get("rewards", ()))
            data["prompts"] = tuple(str(p) for p in data.get("prompts", ()))
            if "sampling" in data:
                data["sampling"] = SamplingParams(**data["sampling"])
            if "optim" in data:
                data["optim"] = OptimConfig(**data["optim"])
            if "compute" in data:
                data["compute"] = ComputeConfig(**data["compute"])
            if "value" in data:
                data["value"] = ValueLayout(data["value"])
            if data.get("held_out"):
                held = dict(data["held_out"])
                held["action"] = AlarmAction(held.get("action", AlarmAction.KEEP_BEST))
                data["held_out"] = AlarmConfig(**held)
            return cls(**data)
        except (TypeError, ValueError) as e:
            if isinstance(e, InvalidRequest):
                raise
            raise InvalidRequest(f"malformed RL config: {e}") from e

    def to_wire(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def _reward_spec(data: Mapping[str, Any]) -> RewardSpec:
    spec = dict(data)
    spec["normalization"] = Normalization(spec.get("normalization", Normalization.RUNNING))
    return RewardSpec(**spec)


def _read_prompts(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise InvalidRequest(f"cannot read prompts from {path}: {e}") from e
