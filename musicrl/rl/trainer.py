"""The RL trainer: sample with the serving engine, score with the reward mixture, step the MusicRL loss.

One step: draw prompts (this process's shard), sample one clip each at the rollouts' temperature, score
the clips (in process or through the reward service), compute the reference's likelihoods, then one
gradient step of KL-regularised REINFORCE for the policy and of regression for the value model, each clipped
on its own. Metrics go to ``metrics.jsonl`` and a plot; checkpoints are generator-loadable ``save_pretrained``
directories, written every ``checkpoint_every`` steps, at the end and once when the over-optimisation alarm
fires. Each holds what the run needs to continue exactly (reward statistics, alarm window, RNG states).
"""

import dataclasses
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
from musicrl.rl.rollout import Rollout, sample_rollouts
from musicrl.rl.value import SeparateValueModel, ValueHead


logger = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 256  # as the engine's default
ADAM_EPS = 1e-6
OPTIMIZER_NAMES = ("policy", "value")  # metrics keys grad_norm/<name>, in the order of _optimizers()


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended.

    Attributes:
        last_step: The last step done.
        checkpoints: The checkpoint folders this call wrote, in order.
        best_checkpoint: The step checkpoint ``checkpoints/best`` names (best held-out window mean among the
            saved ones), or None without a held-out reward.
        stopped_by_alarm: Whether the alarm ended the run early.
        metrics_path: The ``metrics.jsonl`` file.
    """

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
        # the resolved device (cuda:LOCAL_RANK under torchrun), so no two ranks load onto one GPU
        config = dataclasses.replace(config, device=topology.device)
        policy = load_musicgen(config.policy_uri, device=config.device)
        reference = load_musicgen(config.reference, device=config.device)
        check_compatible(policy, reference)
        policy.model.decoder.requires_grad_(True)  # the decoder learns; text encoder and codec stay frozen
        value = _build_value(policy, config)
        # value_coef weighs the value loss against the policy's where both move one trunk; a separate value
        # model has its own optimiser and clip, so a weight there would only rescale its gradients
        value_coef = config.optim.value_coef if config.value is ValueLayout.SHARED else 1.0
        objective = RLObjective(policy.model, value, config.sampling, config.alpha, value_coef, compute=config.compute)
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
        best = checkpoints.BestCheckpoint()
        start = self._resume(out, optimizers, alarm, best, log)
        engine = GenerationEngine(self.policy, EngineConfig(device=self.config.device))
        saved, stopped = [], False
        progress = tqdm(range(start, self.config.optim.steps), initial=start, total=self.config.optim.steps,
                        desc=f"RL {self.config.stage}", disable=not self.topology.is_main)  # fmt: skip
        for step in progress:
            metrics = self._step(step, engine, trainable, optimizers)
            if self.topology.is_main:
                log.write(step + 1, metrics)
                progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.3f}")
            fired = alarm.update(step + 1, metrics[_held_out_key(self.config)]) if alarm else False
            if checkpoints.is_due(step + 1, self.config, fired):
                saved.append(self._save(out, step + 1, optimizers, alarm, best))
            if fired:
                logger.warning(
                    "over-optimisation alarm at step %d: held-out reward fell; best: %s", step + 1, best.name
                )
                if self.config.held_out and self.config.held_out.action is AlarmAction.STOP:
                    stopped = True
                    break
        if self.topology.is_main:
            plot_run(log.read(), out / "training.png", f"MusicRL-{self.config.stage}: {self.config.policy_uri}")
        close_distributed()
        best_path = str(out / "checkpoints" / best.name) if best.name else None
        return RunResult(
            step + 1 if self.config.optim.steps > start else start, saved, best_path, stopped, str(log.path)
        )

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
        # one clip per optimiser: under a joint clip the value loss (V starts at 0, far from R) dominates the
        # norm early on and shrinks the policy's step with it
        for name, optimizer in zip(OPTIMIZER_NAMES, optimizers, strict=True):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.optim.max_grad_norm)
            buffer.add(f"grad_norm/{name}", norm)
            optimizer.step()
        self._record(buffer, output, total, raw, clips)
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
            # the reference's guided states, not its [B, K, P, V] logits: the fused loss makes logits per chunk
            reference = self.objective.reference_states(self.reference.model, rollout.grid, ref_states, ref_mask)
        return StepInputs(rollout.grid, rollout.token_mask, states, mask, reference, rewards.float())

    def _record(
        self,
        buffer: MetricsBuffer,
        output: StepOutput,
        total: np.ndarray,
        raw: dict[str, np.ndarray],
        clips: ClipBatch,
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
        """The policy's and the value's AdamW, in the order of ``OPTIMIZER_NAMES``."""
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
        self,
        out: Path,
        step: int,
        optimizers: Sequence[torch.optim.Optimizer],
        alarm: OverOptimisationAlarm | None,
        best: checkpoints.BestCheckpoint,
    ) -> str:
        """Checkpoint ``step`` and, if its held-out window mean is the best so far, point ``best`` at it."""
        name = checkpoints.step_name(step)
        new_best = alarm is not None and best.offer(name, step, alarm.window_mean)
        state = {
            "alarm": alarm.state_dict() if alarm else None,
            "best": best.state_dict(),
            "rewards": self.rewards.state_dict(),
            "rng": checkpoints.rng_states(),  # every rank's, gathered: a collective, before the rank check
        }
        if self.topology.is_main:
            checkpoints.save(out, step, self.policy, self.objective.value, optimizers, self.config, state)
            if new_best:
                checkpoints.write_pointer(out, checkpoints.BEST, name)
        barrier()
        return str(out / "checkpoints" / name)

    def _resume(
        self,
        out: Path,
        optimizers: Sequence[torch.optim.Optimizer],
        alarm: OverOptimisationAlarm | None,
        best: checkpoints.BestCheckpoint,
        log: MetricsLog,
    ) -> int:
        """Restore the latest checkpoint's models, optimisers and trainer state; returns its step (0 if none)."""
        state = checkpoints.resume(out, self.policy.model, self.objective.value, optimizers)
        if state is None:
            return 0
        # .get: checkpoints written before these parts were saved still resume (with fresh ones)
        if alarm is not None and state.get("alarm"):
            alarm.load_state_dict(state["alarm"])
        if state.get("best"):
            best.load_state_dict(state["best"])
        if state.get("rewards"):
            self.rewards.load_state_dict(state["rewards"])
        if state.get("rng"):
            checkpoints.restore_rng_states(state["rng"], self.topology.rank)
        if self.topology.is_main:
            log.truncate_after(state["step"])
        return int(state["step"])


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
