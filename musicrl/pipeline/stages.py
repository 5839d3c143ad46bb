"""One RL stage of the retraining pipeline: the stage's config with this run's models, trained in this pod.

The stage configs in ``configs/rl`` name the paper's rewards by kind; the pipeline swaps in the models it
just trained (quality, preference) and its CLAP, the policy and reference the stage starts from, and an
output folder of this run. The same config then runs as ``musicrl train rl --config`` here, or under torchrun
in a Kubeflow Trainer TrainJob when the stage has more than one worker.
"""

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from musicrl.errors import InvalidRequest
from musicrl.pipeline.params import selected_stages


if TYPE_CHECKING:  # it imports torch, which a skipped stage's step need not start
    from musicrl.rl.config import RLConfig


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StageModels:
    """The models a stage's rewards and start point come from.

    Attributes:
        policy_uri: The checkpoint the stage starts from.
        reference_uri: Its KL reference (RU: R's checkpoint; otherwise the start checkpoint).
        clap_uri: The CLAP of text adherence.
        quality_uri: The quality head this run trained.
        preference_uri: The preference model this run trained.
    """

    policy_uri: str
    reference_uri: str
    clap_uri: str
    quality_uri: str
    preference_uri: str

    def uri_for(self, reward: str, configured: str) -> str:
        """The model of reward kind ``reward``: this run's, where the run trained or chose one."""
        return {"text-adherence": self.clap_uri, "quality": self.quality_uri, "preference": self.preference_uri}.get(
            reward, configured
        )


def stage_config(
    config_path: str, models: StageModels, out_url: str, *, steps: int = 0, device: str | None = None
) -> "RLConfig":
    """The stage's config file with this run's models, output folder, and optionally steps and device.

    Args:
        config_path: A stage config (``configs/rl/musicrl-r.yaml``).
        models: Where the policy, reference and reward models are.
        out_url: The stage's output folder.
        steps: RL steps; 0 keeps the config's.
        device: Torch device; None keeps the config's.

    Raises:
        InvalidRequest: The config cannot be read or is invalid.
    """
    from musicrl.rl.config import RLConfig

    base = RLConfig.from_file(config_path)
    rewards = tuple(dataclasses.replace(r, uri=models.uri_for(r.reward, r.uri)) for r in base.rewards)
    held_out = base.held_out and dataclasses.replace(
        base.held_out, uri=models.uri_for(base.held_out.reward, base.held_out.uri)
    )
    optim = dataclasses.replace(base.optim, steps=steps) if steps else base.optim
    return dataclasses.replace(
        base,
        policy_uri=models.policy_uri,
        reference_uri=models.reference_uri,
        rewards=rewards,
        held_out=held_out,
        optim=optim,
        out_url=out_url,
        device=device or base.device,
        checkpoint_every=min(base.checkpoint_every, optim.steps),  # a short run still leaves a checkpoint
    )


def write_stage_config(config: "RLConfig", path: Path) -> Path:
    """Write ``config`` where ``musicrl train rl --config`` (here or in a TrainJob) reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_wire(), sort_keys=False))
    return path


def config_file(config_dir: str, prefix: str, stage: str) -> str:
    """``<dir>/<prefix>-<stage>.yaml``, e.g. ``configs/rl/musicrl-ru.yaml``."""
    path = Path(config_dir) / f"{prefix}-{stage.lower()}.yaml"
    if not path.is_file():
        raise InvalidRequest(f"no config for stage {stage}: {path} does not exist (set rl_config_dir)")
    return str(path)


def is_selected(stage: str, stages: str) -> bool:
    """Whether ``stage`` is among the run's ``stages`` (checked: RU needs R)."""
    return stage in selected_stages(stages)


def candidate_of(stages: str, checkpoints: dict[str, str]) -> str:
    """The candidate: the checkpoint of the last selected stage (RU when it ran)."""
    return checkpoints[selected_stages(stages)[-1]]
