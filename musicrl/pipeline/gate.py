"""The offline gate: the candidate policy against the stable one on held-out prompts, before a canary.

Both policies sample clip j of every prompt with the same seed (a paired comparison: the sampling noise is
shared, so the differences measure the policies), with the serving engine and the served sampling settings.
Every clip is scored by every reward; the report gives each reward's paired difference with a bootstrap
interval, the candidate's win rates under the preference judge and the independent judges, and the KL from
the candidate to the stable policy. A threshold the candidate misses fails the gate, with a sentence naming
the measured value and the threshold (issue 10, item 4).

The KL is KL(π_candidate ‖ π_stable) at every state the candidate visits on its own samples, exact over the
vocabulary, between the guided, tempered distributions the engine samples from (as the RL objective's KL,
MusicRL eq. 1): both models are teacher-forced on the candidate's codes. It is averaged per token (one
codebook's token at one step); ``kl_to_stable/per_step`` sums the codebooks per step, as the RL trainer's
``kl`` metric does.
"""

import logging
from collections.abc import Mapping, Sequence

import fsspec
import numpy as np
import torch
from tqdm import tqdm

from musicrl.config import EngineConfig, SamplingParams
from musicrl.errors import IncompatibleModel, InvalidRequest, ModelNotFound, MusicRLError
from musicrl.models.conditioning import encode_prompts
from musicrl.models.engine import GenerationEngine
from musicrl.models.loading import MusicgenBundle
from musicrl.pipeline.gate_config import MIN_PROMPTS, GateConfig
from musicrl.pipeline.gate_report import GateReport, failures, thresholds_applied
from musicrl.pipeline.gate_stats import Estimate, PromptBootstrap, standardised, wins
from musicrl.rewards.base import RewardModel
from musicrl.rewards.registry import load_reward
from musicrl.rl.objective import exact_kl
from musicrl.rl.policy import guided_pass
from musicrl.rl.rollout import Rollout, sample_rollouts


logger = logging.getLogger(__name__)

__all__ = ["GateFailed", "GateReport", "kl_per_token", "read_prompts", "run_gate"]

Tables = dict[str, np.ndarray]  # name → float [P, C]: one value per (prompt, paired clip)


class GateFailed(MusicRLError):
    """The candidate missed a threshold of the offline gate, so it must not go to canary.

    Its exit code lies outside the 1–10 block of ``musicrl.errors`` so that a script can tell a failed gate
    (a verdict) from a failed run (an error); 422: the request was well formed, the candidate is not acceptable.

    Args:
        report: The failed report.
        report_url: Where it was written, if it was.
    """

    exit_code = 20
    http_status = 422

    def __init__(self, report: GateReport, report_url: str | None = None) -> None:
        where = f" (report: {report_url})" if report_url else ""
        super().__init__(
            f"the candidate {report.candidate_uri} failed the offline gate: {'; '.join(report.reasons)}{where}"
        )
        self.report = report
        self.report_url = report_url


def run_gate(config: GateConfig) -> GateReport:
    """Run the offline gate: generate, score and teacher-force both policies, then judge the candidate.

    Args:
        config: What to compare, on which prompts, with which judges and thresholds.

    Returns:
        The report; ``report.passed`` is the verdict.

    Raises:
        InvalidRequest: An unreadable or too short prompts file.
        ModelNotFound: A policy or reward URI points at nothing (the sentence names which).
        IncompatibleModel: The policies do not share a codebook layout, so no KL can be taken.
    """
    prompts = read_prompts(config)
    candidate = _load_policy("candidate", config.candidate_uri, config.engine)
    stable = _load_policy("stable", config.stable_uri, config.engine)
    _check_comparable(candidate, stable)
    rewards = _load_rewards(config)
    clip_seeds, bootstrap_seed = np.random.SeedSequence(config.seed).spawn(2)  # independent streams
    tables = _measure(config, prompts, candidate, stable, rewards, clip_seeds)
    resamples, level = config.bootstrap.bootstrap_resamples, config.bootstrap.confidence_level
    bootstrap = PromptBootstrap(len(prompts), resamples, level, bootstrap_seed)
    metrics = _metrics(config, tables, bootstrap)
    thresholds = thresholds_applied(config, metrics)
    reasons = failures(metrics, thresholds, config.bootstrap.confidence_level)
    report = GateReport(
        candidate_uri=config.candidate_uri,
        stable_uri=config.stable_uri,
        passed=not reasons,
        reasons=tuple(reasons),
        metrics=metrics,
        thresholds=thresholds,
        rewards=config.reward_names(),
        preference_judge=config.judge(),
        independent_judges=config.independents(),
        prompts=len(prompts),
        clips_per_prompt=config.clips_per_prompt,
        confidence_level=config.bootstrap.confidence_level,
    )
    logger.info(
        "offline gate %s: KL %.4g nats/token", "passed" if report.passed else "failed", metrics["kl_to_stable"]
    )
    return report


def read_prompts(config: GateConfig) -> tuple[str, ...]:
    """The held-out prompts: ``config.prompts``, else the non-blank lines of ``config.prompts_file``.

    Raises:
        InvalidRequest: The file cannot be read or holds fewer than two prompts.
    """
    if config.prompts:
        return config.prompts
    assert config.prompts_file is not None  # GateConfig requires one of the two
    try:
        with fsspec.open(config.prompts_file, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError) as e:
        raise InvalidRequest(f"cannot read the gate's prompts file {config.prompts_file}: {e}") from e
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(prompts) < MIN_PROMPTS:
        raise InvalidRequest(
            f"the prompts file {config.prompts_file} holds {len(prompts)} prompts; the gate needs at least "
            f"{MIN_PROMPTS} (one per line)"
        )
    return prompts


@torch.inference_mode()
def kl_per_token(
    candidate: MusicgenBundle, stable: MusicgenBundle, rollout: Rollout, params: SamplingParams, max_prompt_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """KL(candidate ‖ stable) on the candidate's own clips, exact over the vocabulary, by teacher forcing both.

    An adapter over the RL code's :func:`~musicrl.rl.policy.guided_pass` and :func:`~musicrl.rl.objective.exact_kl`:
    each model encodes the prompts with its own text encoder, then both are run over the same delayed grids.

    Args:
        candidate: The policy that sampled ``rollout``; stable: the policy it is compared with.
        rollout: The candidate's clips (grids [B, K, L] and token mask [B, K, P]).
        params: The sampling settings the clips were drawn with (guidance and temperature shape the KL).
        max_prompt_tokens: Prompt truncation, as in the engine.

    Returns:
        Per clip, float64 [B]: the mean KL per real token, and the mean KL per step summed over codebooks (nats).
    """
    kl = []
    for bundle in (candidate, stable):
        states, mask = encode_prompts(bundle.model, bundle.tokenizer, rollout.prompts, max_prompt_tokens)
        kl.append(guided_pass(bundle.model, rollout.grid, states, mask, params).logits)  # [B, K, P, V]
    per_token = exact_kl(kl[0], kl[1])  # [B, K, P]
    real = rollout.token_mask.to(per_token.dtype)  # [B, K, P]
    total = (per_token * real).sum(dim=(1, 2)).double()  # [B]
    steps = rollout.token_mask.any(dim=1).sum(dim=1).double()  # [B]: steps that emit at least one token
    return (total / real.sum(dim=(1, 2))).cpu().numpy(), (total / steps).cpu().numpy()


def _load_policy(role: str, uri: str, engine: EngineConfig) -> GenerationEngine:
    try:
        return GenerationEngine.from_uri(uri, engine)
    except ModelNotFound as e:
        raise ModelNotFound(f"the {role} policy {uri} does not load: {e}") from e
    except IncompatibleModel as e:
        raise IncompatibleModel(f"the {role} policy {uri} is not a servable MusicGen: {e}") from e


def _check_comparable(candidate: GenerationEngine, stable: GenerationEngine) -> None:
    """Refuse policies whose clips cannot be compared pair by pair or teacher-forced by the other."""
    layout = ("num_codebooks", "vocab_size", "start_token_id", "frame_rate")
    for name in layout:
        ours, theirs = getattr(candidate, name), getattr(stable, name)
        if ours != theirs:
            raise IncompatibleModel(
                f"the candidate {candidate.bundle.uri} has {name}={ours}, the stable policy {stable.bundle.uri} "
                f"has {theirs}; the gate's KL teacher-forces one on the other's codes, so they must match"
            )


def _load_rewards(config: GateConfig) -> dict[str, RewardModel]:
    rewards = {}
    for spec in config.rewards:
        try:
            rewards[spec.name] = load_reward(spec.name, spec.uri, device=config.engine.device)
        except (ModelNotFound, IncompatibleModel) as e:
            raise type(e)(f"the gate's {spec.name} reward {spec.uri} does not load: {e}") from e
    return rewards


def _measure(
    config: GateConfig,
    prompts: Sequence[str],
    candidate: GenerationEngine,
    stable: GenerationEngine,
    rewards: Mapping[str, RewardModel],
    clip_seeds: np.random.SeedSequence,
) -> Tables:
    """Generate, score and teacher-force every paired clip; every table is float [P, C]."""
    pairs = [(prompt, clip) for prompt in range(len(prompts)) for clip in range(config.clips_per_prompt)]
    drawn = np.random.default_rng(clip_seeds).integers(0, 2**62, size=len(pairs))
    seeds = [int(s) for s in drawn]  # one per pair, shared by both policies
    columns: dict[str, list[float]] = {"kl": [], "kl_per_step": []}
    for name in rewards:
        columns[f"{name}/candidate"], columns[f"{name}/stable"] = [], []
    with tqdm(total=len(pairs), desc="offline gate", unit="pair") as bar:
        for start in range(0, len(pairs), config.batch_size):
            batch_prompts = [prompts[p] for p, _ in pairs[start : start + config.batch_size]]
            batch_seeds = seeds[start : start + config.batch_size]
            ours = sample_rollouts(candidate, batch_prompts, config.sampling, batch_seeds)
            theirs = sample_rollouts(stable, batch_prompts, config.sampling, batch_seeds)
            per_token, per_step = kl_per_token(
                candidate.bundle, stable.bundle, ours, config.sampling, config.engine.max_prompt_tokens
            )
            columns["kl"] += per_token.tolist()
            columns["kl_per_step"] += per_step.tolist()
            ours_batch, theirs_batch = ours.clip_batch(), theirs.clip_batch()
            for name, reward in rewards.items():
                columns[f"{name}/candidate"] += reward.score(ours_batch).tolist()
                columns[f"{name}/stable"] += reward.score(theirs_batch).tolist()
            bar.update(len(batch_prompts))
    shape = (len(prompts), config.clips_per_prompt)
    return {key: np.asarray(values, dtype=np.float64).reshape(shape) for key, values in columns.items()}


def _metrics(config: GateConfig, tables: Tables, bootstrap: PromptBootstrap) -> dict[str, float]:
    """Every measurement under its slash-namespaced key (see ``musicrl.pipeline.gate_report``)."""
    metrics: dict[str, float] = {}
    for name in config.reward_names():
        ours, theirs = tables[f"{name}/candidate"], tables[f"{name}/stable"]
        diff = bootstrap.mean(ours - theirs)
        metrics |= {
            f"reward/{name}/candidate_mean": float(ours.mean()),
            f"reward/{name}/stable_mean": float(theirs.mean()),
            f"reward/{name}/diff_mean": diff.mean,
            f"reward/{name}/diff_ci_low": diff.low,
            f"reward/{name}/diff_ci_high": diff.high,
            f"reward/{name}/win_rate": float(wins(ours, theirs).mean()),
        }
    metrics |= _with_interval("kl_to_stable", bootstrap.mean(tables["kl"]))
    metrics["kl_to_stable/per_step"] = float(tables["kl_per_step"].mean())
    judge = config.judge()
    if judge is not None:
        outcome = wins(tables[f"{judge}/candidate"], tables[f"{judge}/stable"])
        metrics |= _with_interval("win_rate/preference", bootstrap.mean(outcome))
    independents = config.independents()
    if independents:
        z = [standardised(tables[f"{n}/candidate"], tables[f"{n}/stable"]) for n in independents]
        ours_z = np.mean([pair[0] for pair in z], axis=0)  # [P, C]: mean z-score over the independent judges
        theirs_z = np.mean([pair[1] for pair in z], axis=0)
        metrics |= _with_interval("win_rate/independent", bootstrap.mean(wins(ours_z, theirs_z)))
    return metrics


def _with_interval(key: str, estimate: Estimate) -> dict[str, float]:
    return {key: estimate.mean, f"{key}/ci_low": estimate.low, f"{key}/ci_high": estimate.high}
