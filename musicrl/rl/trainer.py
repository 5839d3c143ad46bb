"""The RL trainer: sample with the serving engine, score with the reward mixture, step the MusicRL loss.

One step: draw prompts (this process's shard), sample one clip each at the rollouts' temperature, score
the clips (in process or through the reward service), compute the reference's likelihoods, then one
gradient step of KL-regularised REINFORCE for the policy and of regression for the value model. Metrics go
to ``metrics.jsonl`` and a plot; checkpoints are generator-loadable ``save_pretrained`` directories.
"""

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from musicrl.config import EngineConfig
from musicrl.errors import IncompatibleModel
from musicrl.models.conditioning import encode_prompts
from musicrl.models.engine import GenerationEngine
from musicrl.models.loading import MusicgenBundle, load_musicgen
from musicrl.rewards.base import ClipBatch, RewardModel
from musicrl.rewards.mixture import RewardMixture
from musicrl.rewards.registry import load_reward, reads
from musicrl.rewards.remote import RemoteReward
from musicrl.rl import checkpoints
from musicrl.rl.alarm import OverOptimisationAlarm
from musicrl.rl.config import AlarmAction, RLConfig, ValueLayout
from musicrl.rl.distributed import Topology, barrier, close_distributed, init_distributed
from musicrl.rl.metrics import MetricsBuffer, MetricsLog
from musicrl.rl.objective_module import RLObjective, StepInputs, StepOutput
from musicrl.rl.plots import plot_run
from musicrl.rl.policy import guided_pass
from musicrl.rl.rollout import Rollout, sample_rollouts
from musicrl.rl.value import SeparateValueModel, ValueHead


logger = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 256  # as the engine's default
ADAM_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: its last step, where its checkpoints are, and whether the alarm stopped it."""

    last_step: int
    checkpoints: list[str]
    best_checkpoint: str | None
    stopped_by_alarm: bool
    metrics_path: str


class RLTrainer:
    """Runs one RL stage. Build it with :meth:`build`, which loads and checks everything before training.

    Args:
        config: The run.
        topology: This process's rank among ``torchrun``'s processes.
        policy: The policy being trained; reference: the frozen KL reference.
        objective: Policy and value with the loss (DDP-wrapped when distributed).
        rewards: The reward mixture; held_out: the alarm's reward, if any.
    """

    def __init__(
        self,
        config: RLConfig,
        topology: Topology,
        policy: MusicgenBundle,
        reference: MusicgenBundle,
        objective: RLObjective,
        rewards: RewardMixture,
        held_out: RewardModel | None,
    ) -> None:
        self.config = config
        self.topology = topology
        self.policy = policy
        self.reference = reference
        self.objective = objective
        self.rewards = rewards
        self.held_out = held_out

    @classmethod
    def build(cls, config: RLConfig) -> "RLTrainer":
        """Load the policy, the reference, the value model and the rewards; refuse mismatches up front."""
        topology = init_distributed(config.device)
        policy = load_musicgen(config.policy_uri, device=config.device)
        reference = load_musicgen(config.reference, device=config.device)
        check_compatible(policy, reference)
        policy.model.decoder.requires_grad_(True)  # the decoder learns; text encoder and codec stay frozen
        value = _build_value(policy, config)
        objective = RLObjective(policy.model, value, config.sampling, config.alpha, config.optim.value_coef)
        rewards = RewardMixture(
            {r.reward: _build_reward(r.reward, r.uri, config) for r in config.rewards}, config.mixture()
        )
        held_out = _build_reward(config.held_out.reward, config.held_out.uri, config) if config.held_out else None
        return cls(config, topology, policy, reference, objective, rewards, held_out)

    def run(self) -> RunResult:
        """Train for ``optim.steps`` steps (resuming from the run folder's last checkpoint if there is one)."""
        out = Path(self.config.out_url)
        trainable = self._trainable()
        optimizers = self._optimizers()
        log = MetricsLog(out / "metrics.jsonl")
        alarm = _alarm(self.config)
        start = checkpoints.resume(out, self.policy.model, self.objective.value, optimizers, alarm, log)
        engine = GenerationEngine(self.policy, EngineConfig(device=self.config.device))
        saved, best, stopped = [], None, False
        progress = tqdm(range(start, self.config.optim.steps), initial=start, total=self.config.optim.steps,
                        desc=f"RL {self.config.stage}", disable=not self.topology.is_main)  # fmt: skip
        for step in progress:
            metrics = self._step(step, engine, trainable, optimizers)
            if self.topology.is_main:
                log.write(step + 1, metrics)
                progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.3f}")
            fired = alarm.update(step + 1, metrics[_held_out_key(self.config)]) if alarm else False
            if alarm and alarm.improved_at == step + 1:
                best = self._save(out, step + 1, optimizers, alarm, tag="best")
            if (step + 1) % self.config.checkpoint_every == 0 or step + 1 == self.config.optim.steps or fired:
                saved.append(self._save(out, step + 1, optimizers, alarm))
            if fired:
                logger.warning("over-optimisation alarm at step %d: held-out reward fell; see %s", step + 1, best)
                if self.config.held_out and self.config.held_out.action is AlarmAction.STOP:
                    stopped = True
                    break
        if self.topology.is_main:
            plot_run(log.read(), out / "training.png", f"MusicRL-{self.config.stage}: {self.config.policy_uri}")
        close_distributed()
        return RunResult(step + 1 if self.config.optim.steps > start else start, saved, best, stopped, str(log.path))

    def _step(
        self, step: int, engine: GenerationEngine, trainable: torch.nn.Module, optimizers: list[torch.optim.Optimizer]
    ) -> dict[str, float]:
        buffer = MetricsBuffer()
        started = time.monotonic()
        prompts, seeds = self._prompts_and_seeds(step)
        rollout = sample_rollouts(engine, prompts, self.config.sampling, seeds)
        sampled = time.monotonic()
        clips = rollout.clip_batch()  # built once: the mixture and the held-out reward score the same clips
        total, raw = self.rewards.score(clips)
        inputs = self._inputs(rollout, torch.as_tensor(total, device=rollout.codes.device))
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        output = trainable(inputs)
        output.total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.objective.parameters() if p.requires_grad], self.config.optim.max_grad_norm
        )
        for optimizer in optimizers:
            optimizer.step()
        self._record(buffer, output, total, raw, clips, float(grad_norm))
        buffer.add("time/rollout_s", sampled - started)
        buffer.add("time/step_s", time.monotonic() - started)
        buffer.add("trajectories_per_s", len(prompts) / (time.monotonic() - started))
        return buffer.reduce()

    def _inputs(self, rollout: Rollout, rewards: torch.Tensor) -> StepInputs:
        with torch.no_grad():
            states, mask = encode_prompts(self.policy.model, self.policy.tokenizer, rollout.prompts, MAX_PROMPT_TOKENS)
            ref_states, ref_mask = encode_prompts(
                self.reference.model, self.reference.tokenizer, rollout.prompts, MAX_PROMPT_TOKENS
            )
            reference = guided_pass(self.reference.model, rollout.grid, ref_states, ref_mask, self.config.sampling)
        return StepInputs(rollout.grid, rollout.token_mask, states, mask, reference.logits, rewards.float())

    def _record(
        self,
        buffer: MetricsBuffer,
        output: StepOutput,
        total: np.ndarray,
        raw: dict[str, np.ndarray],
        clips: ClipBatch,
        grad_norm: float,
    ) -> None:
        terms = output.terms
        buffer.add("reward/mean", float(total.mean()))
        for name, scores in raw.items():
            buffer.add(f"reward/{name}/mean", float(scores.mean()))
        if self.held_out is not None:
            held = self.held_out.score(clips)
            buffer.add(f"held_out/{self.held_out.name}/mean", float(held.mean()))
        buffer.add("kl", terms.kl)
        buffer.add("entropy", output.entropy)
        buffer.add("policy_gradient", terms.policy_gradient)
        buffer.add("value_loss", terms.value_loss)
        buffer.add("advantage/mean", terms.advantage.mean())
        buffer.add("advantage/std", terms.advantage.std())
        buffer.add("grad_norm", grad_norm)

    def _prompts_and_seeds(self, step: int) -> tuple[list[str], list[int]]:
        """This process's prompts and rollout seeds for ``step``: fixed by (seed, step, rank), so a resumed run
        replays the same draws, and processes draw different prompts (the prompt set is sharded by rank)."""
        rng = random.Random(hash((self.config.seed, step, self.topology.rank)) & 0xFFFFFFFF)
        shard = self.config.prompts[self.topology.rank :: self.topology.world_size] or self.config.prompts
        prompts = [rng.choice(shard) for _ in range(self.config.optim.batch_size)]
        return prompts, [rng.getrandbits(62) for _ in prompts]

    def _trainable(self) -> torch.nn.Module:
        if self.topology.world_size > 1:
            return DistributedDataParallel(self.objective)  # broadcasts rank 0's weights, averages gradients
        return self.objective

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        optim = self.config.optim
        policy_params = [p for p in self.policy.model.decoder.parameters() if p.requires_grad]
        value_params = [p for p in self.objective.value.parameters() if p.requires_grad]
        # eps 1e-6, not Adam's 1e-8: at the reference the KL's gradient is pure round-off (~1e-9), which a
        # smaller eps would scale up into full-size steps away from the reference
        return [
            torch.optim.AdamW(policy_params, lr=optim.policy_lr, weight_decay=0.0, eps=ADAM_EPS),
            torch.optim.AdamW(value_params, lr=optim.value_lr, weight_decay=0.0, eps=ADAM_EPS),
        ]

    def _save(
        self, out: Path, step: int, optimizers: Sequence[torch.optim.Optimizer], alarm: OverOptimisationAlarm | None,
        tag: str | None = None,
    ) -> str:  # fmt: skip
        path = ""
        if self.topology.is_main:
            path = checkpoints.save(out, step, self.policy, self.objective.value, optimizers, alarm, self.config, tag)
        barrier()
        return path


def check_compatible(policy: MusicgenBundle, reference: MusicgenBundle) -> None:
    """Refuse a reference whose architecture or vocabulary differs from the policy's (the KL would be meaningless)."""
    ours, theirs = policy.model.config.decoder, reference.model.config.decoder
    for name in ("vocab_size", "num_codebooks", "hidden_size", "num_hidden_layers", "audio_channels"):
        if getattr(ours, name) != getattr(theirs, name):
            raise IncompatibleModel(
                f"the reference {reference.uri} has {name}={getattr(theirs, name)}, the policy {policy.uri} has "
                f"{getattr(ours, name)}; the KL needs the same architecture and vocabulary"
            )
    if policy.tokenizer.get_vocab() != reference.tokenizer.get_vocab():
        raise IncompatibleModel(f"the reference {reference.uri} and the policy {policy.uri} use different tokenizers")


def _build_value(policy: MusicgenBundle, config: RLConfig) -> SeparateValueModel | ValueHead:
    if config.value is ValueLayout.SHARED:
        return ValueHead(policy.model.config.decoder.hidden_size).to(config.device)
    return SeparateValueModel(policy.model).to(config.device)


def _build_reward(name: str, uri: str, config: RLConfig) -> RewardModel:
    if config.reward_service_url:
        return RemoteReward(config.reward_service_url, name, reads(name))
    return load_reward(name, uri, device=config.device)


def _alarm(config: RLConfig) -> OverOptimisationAlarm | None:
    return OverOptimisationAlarm(config.held_out.window, config.held_out.max_drop) if config.held_out else None


def _held_out_key(config: RLConfig) -> str:
    assert config.held_out is not None
    return f"held_out/{config.held_out.reward}/mean"


def train_rl(config: RLConfig) -> RunResult:
    """Build and run the trainer (the entry point of ``musicrl train rl``)."""
    Path(config.out_url).mkdir(parents=True, exist_ok=True)
    trainer = RLTrainer.build(config)
    logger.info("RL %s: %s against %s, alpha %.3f", config.stage, config.policy_uri, config.reference, config.alpha)
    return trainer.run()
