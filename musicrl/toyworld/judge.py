"""Judge a finetuned toy policy against its base on held-out captions, with the world's probes and the rewards.

An RL stage is trained on rewards; whether it made the music follow its prompt better is a separate question,
asked here of probes it never saw (:mod:`musicrl.toyworld.probes`). Both policies play the same test-split
captions with the same seeds, so each difference is paired, and its interval is a bootstrap over prompts.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from musicrl.config import SamplingParams
from musicrl.models.engine import GenerationEngine
from musicrl.rewards.base import ClipBatch, RewardModel
from musicrl.rewards.registry import load_reward
from musicrl.toyworld.captions import read_prompt
from musicrl.toyworld.evaluate import PROBED, generate, held_out_prompts
from musicrl.toyworld.judge_config import JudgeConfig
from musicrl.toyworld.probes import measure
from musicrl.toyworld.world import CLIP_S


BOOTSTRAP_SAMPLES = 2_000


@dataclass(frozen=True, slots=True)
class Difference:
    """A measure of both policies and the paired difference, with a 95% bootstrap interval over prompts."""

    baseline: float
    policy: float
    low: float
    high: float
    count: int

    @property
    def delta(self) -> float:
        return self.policy - self.baseline


@dataclass(frozen=True, slots=True)
class Judgement:
    """Per measure (``probe/pitch``, ``reward/text-adherence`` …) how the policy compares with its baseline."""

    measures: dict[str, Difference] = field(default_factory=dict)

    def table(self) -> str:
        """A fixed-width table a person reads in a terminal."""
        rows = [f"{'measure':<24} {'baseline':>9} {'policy':>9} {'change':>9}   95% interval    n"]
        for name, d in self.measures.items():
            rows.append(
                f"{name:<24} {d.baseline:9.3f} {d.policy:9.3f} {d.delta:+9.3f}   "
                f"[{d.low:+.3f}, {d.high:+.3f}] {d.count:4d}"
            )
        return "\n".join(rows)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            name: {"baseline": d.baseline, "policy": d.policy, "delta": d.delta, "low": d.low, "high": d.high}
            for name, d in self.measures.items()
        }


def judge(config: JudgeConfig) -> Judgement:
    """Play the held-out captions with both policies and compare them."""
    prompts = [e.caption.text for e in held_out_prompts(config.seed, config.prompts)]
    params = SamplingParams(duration_s=CLIP_S, temperature=config.temperature, guidance_scale=config.guidance_scale)
    rewards = [load_reward("text-adherence", config.text_adherence_uri), load_reward("quality", config.quality_uri)]
    per_clip: dict[str, list[np.ndarray]] = {}
    for uri in (config.baseline_uri, config.policy_uri):
        engine = GenerationEngine.from_uri(uri)
        clips = generate(engine, prompts, params, config.seed)
        for name, values in _per_clip_measures(prompts, clips, engine.sample_rate, rewards).items():
            per_clip.setdefault(name, []).append(values)
    rng = np.random.default_rng(config.seed)
    paired = {name: _paired(base, tuned, rng) for name, (base, tuned) in per_clip.items()}
    return Judgement({name: d for name, d in paired.items() if d is not None})


def _per_clip_measures(
    prompts: Sequence[str], clips: Sequence[np.ndarray], sample_rate: int, rewards: Sequence[RewardModel]
) -> dict[str, np.ndarray]:
    # Probe agreement is 1/0 where the caption names the attribute and NaN where it does not, so that the
    # paired comparison uses only the prompts that ask for it. Audio in which the probes hear no such thing
    # (silence has no pitch) counts as a miss: a policy must not gain by going quiet.
    # ``probe/all`` is, per prompt, the share of the attributes it asks for that the probes heard.
    agreed: list[dict[str, float]] = []
    for prompt, clip in zip(prompts, clips, strict=True):
        heard = measure(clip, sample_rate).words()
        asked = {k: v for k, v in read_prompt(prompt).items() if k in PROBED}
        agreed.append({name: float(heard.get(name) == value) for name, value in asked.items()})
    measures = {f"probe/{attribute}": np.array([a.get(attribute, np.nan) for a in agreed]) for attribute in PROBED}
    measures["probe/all"] = np.array([np.mean(list(a.values())) if a else np.nan for a in agreed])
    batch = ClipBatch(prompts=list(prompts), audio=list(clips), sample_rate=sample_rate)
    for reward in rewards:
        measures[f"reward/{reward.name}"] = np.asarray(reward.score(batch), dtype=np.float64)
    return measures


def _paired(baseline: np.ndarray, policy: np.ndarray, rng: np.random.Generator) -> Difference | None:
    asked = ~np.isnan(baseline)  # the same prompts on both sides: NaN where the prompt did not ask
    if not asked.any():
        return None
    base, tuned = baseline[asked], policy[asked]
    differences = tuned - base
    draws = rng.integers(len(differences), size=(BOOTSTRAP_SAMPLES, len(differences)))
    low, high = np.quantile(differences[draws].mean(axis=1), [0.025, 0.975])
    return Difference(float(base.mean()), float(tuned.mean()), float(low), float(high), int(asked.sum()))
