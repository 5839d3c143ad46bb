"""The retraining pipeline's steps, as plain functions: each Kubeflow component is one call to one of these.

Every step calls the code its CLI command calls (``musicrl dataset snapshot``, ``musicrl train quality``,
``musicrl train preference``, ``musicrl train rl``, ``musicrl gate``), so a step that works from a terminal
works in the pipeline, and a component holds no logic of its own. Steps take and return plain values
(URIs, counts, sentences) because that is what crosses a Kubeflow step boundary.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec

from musicrl.data.dataset import join_url
from musicrl.errors import InvalidRequest
from musicrl.pipeline.params import SERVING, RetrainingParams, selected_stages


if TYPE_CHECKING:  # the stages import torch; the light steps (snapshot, register, canary) need not start it
    from musicrl.pipeline.stages import StageModels
    from musicrl.rewards.train_preference import PreferenceTrainResult
    from musicrl.rl.config import RLConfig


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SnapshotOutcome:
    """What the snapshot step found.

    Attributes:
        uri: The snapshot folder.
        digest: Its content hash.
        preferences: Listened preferences it holds (all splits).
        enough: Whether there are enough new ones to retrain.
        reason: Why not, in a sentence (empty when there are enough).
    """

    uri: str
    digest: str
    preferences: int
    enough: bool
    reason: str


def check_parameters(params: RetrainingParams) -> str:
    """The first step: refuse malformed parameters before any GPU pod is scheduled; returns the stable policy
    the run starts from (``stable_uri``, or the one serving now when it is ``serving``)."""
    params.check()
    stable = resolve_stable(params.stable_uri, params.nats_url)
    logger.info(
        "pipeline parameters are valid: stages %s, %d RL worker(s), from %s", params.stages, params.rl_workers, stable
    )
    return stable


def resolve_stable(stable_uri: str, nats_url: str) -> str:
    """``stable_uri`` itself, or for ``serving`` the checkpoint the routing table names now.

    Raises:
        NotFound: ``serving``, and the bus holds no routing table (no gateway has started on it).
    """
    if stable_uri != SERVING:
        return stable_uri
    import asyncio

    from musicrl.config import BusConfig
    from musicrl.rollout import levers

    serving = asyncio.run(levers.serving_policy(BusConfig(nats_url=nats_url), name="retraining-pipeline"))
    logger.info("the platform serves %s (%s): the run starts from it", serving.version, serving.model_uri)
    return serving.model_uri


def take_snapshot(
    dataset_url: str,
    artifacts_url: str,
    min_new_preferences: int,
    trained_on: int,
    validation_fraction: float,
    test_fraction: float,
) -> SnapshotOutcome:
    """Snapshot the dataset and decide whether it holds enough new preferences to retrain on.

    Args:
        dataset_url: The recorded events.
        artifacts_url: Snapshots go under ``<artifacts>/snapshots``.
        min_new_preferences: Fewest new listened preferences worth a retraining.
        trained_on: Preferences the stable policy's run was trained on (0 for the first run).
        validation_fraction: Share of prompts in the split the reward trainers choose on.
        test_fraction: Share of prompts in the split they only report on.

    Raises:
        InvalidRequest: The dataset is missing or holds no preferences at all.
    """
    from musicrl.data.snapshot import create_snapshot
    from musicrl.data.snapshot_config import SnapshotConfig

    split = SnapshotConfig(validation_fraction=validation_fraction, test_fraction=test_fraction)
    result = create_snapshot(dataset_url, join_url(artifacts_url, "snapshots"), split)
    counts = result.preferences
    kept = counts.kept_train + counts.kept_validation + counts.kept_test
    new = kept - trained_on
    enough = new >= min_new_preferences
    reason = (
        ""
        if enough
        else f"only {new} new listened preferences since the stable policy's training ({kept} in all); "
        f"retraining needs at least {min_new_preferences}"
    )
    logger.info("snapshot %s: %d listened preferences, %d new; %s", result.uri, kept, new, reason or "retraining")
    return SnapshotOutcome(result.uri, result.digest, kept, enough, reason)


def train_quality_model(snapshot_uri: str, clap_uri: str, out_url: str, run_id: str, device: str) -> str:
    """``musicrl train quality`` on the snapshot's ratings; returns the checkpoint URI."""
    from musicrl.rewards.quality_config import QualityTrainConfig
    from musicrl.rewards.train_quality import train_quality

    config = QualityTrainConfig(
        snapshot_url=snapshot_uri, out_url=out_url, embedder_uri=clap_uri, device=device, training_run=run_id
    )
    return train_quality(config).uri


@dataclass(frozen=True, slots=True)
class PreferenceOutcome:
    """The preference model as it crosses the step boundary.

    Attributes:
        uri: The checkpoint.
        usable: Whether the RL stages may go on: it learned something, or no selected stage optimises it.
        reason: Why not, in a sentence (empty when usable).
    """

    uri: str
    usable: bool
    reason: str


PREFERENCE_STAGES = ("U", "RU")  # the stages whose reward is the preference model


def train_preference_model(
    snapshot_uri: str, init_uri: str, out_url: str, run_id: str, device: str, stages: str, required: bool = True
) -> PreferenceOutcome:
    """``musicrl train preference`` from the stable policy (MusicRL: the RM starts from the generator).

    A model no epoch of which beat its untrained self on the validation split has learned nothing the
    listeners' votes hold, and its untrained head scores every clip the same: RL on it would follow noise,
    and its canary would spend listeners' time on a policy that did not change. The run stops instead,
    unless no selected stage optimises it (R alone) or ``required`` is false.
    """
    from musicrl.rewards.preference_config import PreferenceTrainConfig
    from musicrl.rewards.train_preference import train_preference

    config = PreferenceTrainConfig(
        snapshot_url=snapshot_uri, init_uri=init_uri, out_url=out_url, device=device, training_run=run_id
    )
    return preference_outcome(train_preference(config), stages, required)


def preference_outcome(result: "PreferenceTrainResult", stages: str, required: bool = True) -> PreferenceOutcome:
    """Whether the RL stages of ``stages`` may optimise the trained model, and if not, why not (``required``
    false: they may, whatever it learned)."""
    needed = set(PREFERENCE_STAGES) & set(selected_stages(stages))
    if result.best_epoch > 0 or not needed or not required:
        return PreferenceOutcome(result.uri, True, "")
    best = max((row["validation/accuracy"] for row in result.history), default=float("nan"))
    reason = (
        f"the preference model learned nothing: no epoch beat the untrained model on the "
        f"{int(result.metrics['data/validation_pairs'])} validation pairs (best accuracy {best:.3f}, untrained "
        f"{result.metrics['validation/accuracy_init']:.3f}), so stage(s) {', '.join(sorted(needed))} would "
        "optimise noise; collect more preferences, or raise validation_fraction so epochs are ranked on more pairs"
    )
    return PreferenceOutcome(result.uri, False, reason)


def run_rl_stage(stage: str, params: RetrainingParams, models: "StageModels", out_url: str) -> str:
    """Run one RL stage and return the checkpoint it hands on (its best, else its last).

    A stage the run did not select hands on its start checkpoint unchanged, so the next stage's wiring
    is the same whatever the selection.
    """
    from musicrl.pipeline.stages import config_file, is_selected, stage_config

    if not is_selected(stage, params.stages):
        logger.info("stage %s is not among %s: skipped", stage, params.stages)
        return models.policy_uri
    config = stage_config(
        config_file(params.rl_config_dir, params.rl_config_prefix, stage),
        models,
        out_url,
        steps=params.rl_steps,
        device=params.device,
    )
    if params.rl_workers > 1:
        return _run_as_trainjob(stage, config, params)
    from musicrl.rl.trainer import train_rl

    result = train_rl(config)
    if not result.checkpoints:
        raise InvalidRequest(f"stage {stage} saved no checkpoint; raise rl_steps or lower checkpoint_every")
    handed_on = result.best_checkpoint or result.checkpoints[-1]
    logger.info("stage %s ended at step %d; hands on %s", stage, result.last_step, handed_on)
    return handed_on


def _run_as_trainjob(stage: str, config: "RLConfig", params: RetrainingParams) -> str:
    from musicrl.pipeline import trainjob
    from musicrl.pipeline.stages import write_stage_config

    # the training pods read the config from the stage's folder, which must be on storage they mount
    path = write_stage_config(config, Path(config.out_url) / "stage-config.yaml")
    return trainjob.run_stage(stage, str(path), params)


def run_url(artifacts_url: str, run_id: str, name: str) -> str:
    """Where a run's artefact ``name`` goes: ``<artifacts>/runs/<run>/<name>``."""
    return join_url(artifacts_url, "runs", run_id, name)


def start_canary(
    candidate_uri: str, version: str, nats_url: str, canary_share: float, wait_s: float, run_id: str
) -> str:
    """``musicrl rollout start``: serve the registered candidate as the canary, then wait up to ``wait_s``
    for the rollout controller's decision. Returns the rollout as Markdown (evidence, statistic, decision).

    Without a bus URL nothing is started: the candidate stays registered for a person to roll out.

    Raises:
        Conflict: Another rollout is in flight (the candidate stays registered; start it once that one ends).
    """
    if not nats_url:
        logger.warning("no nats_url: policy %s (%s) is registered, but no canary was started", version, candidate_uri)
        return f"# No canary\n\nPolicy {version} (`{candidate_uri}`) is registered; no `nats_url` was given.\n"
    import asyncio

    from musicrl.config import BusConfig
    from musicrl.rollout import levers
    from musicrl.rollout.decision import DecisionRule
    from musicrl.rollout.record import Status
    from musicrl.rollout.report import markdown

    async def run() -> str:
        async with levers.open_bus(BusConfig(nats_url=nats_url), name="retraining-pipeline") as bus:
            record = await levers.start(bus, candidate_uri, version, canary_share, f"retraining pipeline run {run_id}")
            logger.info(
                "rollout %s of %s requested; waiting up to %.0f s for the decision", record.id, version, wait_s
            )
            if wait_s > 0:
                await levers.wait_until(bus, record.id, (Status.PROMOTED, Status.ROLLED_BACK), wait_s)
            rule = DecisionRule()  # the report's statistic; the controller's own rule decided
            current, tally, decision = await levers.analyse(bus, rule)
            return markdown(current, tally, decision, rule)

    report = asyncio.run(run())
    logger.info("%s", report)
    return report


def stop_early(reason: str) -> None:
    """End the run without a candidate; the reason shows in the step's log in the Kubeflow UI."""
    logger.warning("no candidate this run: %s", reason)


def report_outcome(state: str, task_name: str, error_message: str, run_name: str, nats_url: str) -> None:
    """The exit handler: publish PipelineRunFailed for a run that did not succeed (nothing otherwise)."""
    from musicrl.pipeline import notify

    if state == "SUCCEEDED":
        logger.info("run %s succeeded", run_name)
        return
    logger.error("run %s ended %s in %s: %s", run_name, state, task_name, error_message)
    if nats_url:
        notify.publish(nats_url, notify.run_failed(run_name, state, task_name, error_message))


@dataclass(frozen=True, slots=True)
class GateOutcome:
    """The gate's verdict as it crosses the step boundary.

    Attributes:
        passed: Whether the candidate may go to canary.
        reason: Why not, in sentences (empty when it passed).
        report_uri: The JSON report.
        markdown: The report for the Kubeflow UI.
        metrics: The gate's numbers, by slash-namespaced name.
    """

    passed: bool
    reason: str
    report_uri: str
    markdown: str
    metrics: dict[str, float]


def offline_gate(
    candidate_uri: str, stable_uri: str, rewards: dict[str, str], params: RetrainingParams, out_url: str
) -> GateOutcome:
    """``musicrl gate``: the candidate against the stable policy on held-out prompts.

    Args:
        candidate_uri: The candidate policy.
        stable_uri: The policy serving now.
        rewards: Model URIs of ``text-adherence`` (the CLAP), ``quality`` and ``preference`` (this run's).
        params: The gate's prompts, clips and thresholds, and the device.
        out_url: Where the report goes.

    The preference model is the judge trained on listeners; text adherence and quality are the judges
    that were not.
    """
    from musicrl.config import EngineConfig, SamplingParams
    from musicrl.pipeline.gate import run_gate
    from musicrl.pipeline.gate_config import GateConfig, GateReward, GateThresholds

    config = GateConfig(
        candidate_uri=candidate_uri,
        stable_uri=stable_uri,
        rewards=tuple(GateReward(name, uri) for name, uri in rewards.items()),
        prompts_file=params.gate_prompts_file,
        clips_per_prompt=params.gate_clips_per_prompt,
        preference_judge="preference",
        sampling=SamplingParams(duration_s=params.gate_clip_duration_s),
        engine=EngineConfig(device=params.device),
        thresholds=GateThresholds(
            min_reward_diff=params.gate_min_reward_diff,
            max_kl_to_stable=params.gate_max_kl,
            min_win_rate_preference=params.gate_min_win_rate,
            min_win_rate_independent=params.gate_min_win_rate,
        ),
    )
    report = run_gate(config)
    report_uri = report.write(out_url)
    return GateOutcome(report.passed, " ".join(report.reasons), report_uri, report.to_markdown(), dict(report.metrics))


def take_snapshot_for_run(
    dataset_url: str, artifacts_url: str, min_new_preferences: int, validation_fraction: float, test_fraction: float
) -> SnapshotOutcome:
    """:func:`take_snapshot`, counting as new only the preferences since the last registered policy's snapshot."""
    from musicrl.pipeline.registry import PolicyRegistry

    latest = PolicyRegistry(registry_url(artifacts_url)).latest()
    trained_on = int(latest.metrics.get(SNAPSHOT_PREFERENCES, 0)) if latest is not None else 0
    return take_snapshot(
        dataset_url, artifacts_url, min_new_preferences, trained_on, validation_fraction, test_fraction
    )


SNAPSHOT_PREFERENCES = "snapshot/preferences"  # the registry metric that says how much feedback a policy saw


def registry_url(artifacts_url: str) -> str:
    """The platform's policy registry under the artefact store."""
    return join_url(artifacts_url, "registry")


def register_candidate(
    candidate_uri: str,
    stable_uri: str,
    snapshot_digest: str,
    preferences: int,
    report_uri: str,
    artifacts_url: str,
    run_id: str,
) -> str:
    """Record the gated candidate as the registry's next policy version; returns the version (``v<n>``)."""
    from musicrl.pipeline.gate_report import GateReport
    from musicrl.pipeline.model_registry import model_registry_from_env
    from musicrl.pipeline.registry import PolicyRegistry

    with fsspec.open(report_uri, "rb") as file:
        report = GateReport.from_wire(json.loads(file.read()))
    # the version is also recorded in a Kubeflow Model Registry when MUSICRL_MODEL_REGISTRY_URL names one
    registry = PolicyRegistry(registry_url(artifacts_url), model_registry=model_registry_from_env())
    version = registry.register(
        candidate_uri,
        parent_uri=stable_uri,
        training_run=run_id,
        snapshot_hash=snapshot_digest,
        metrics={**report.metrics, SNAPSHOT_PREFERENCES: float(preferences)},
        gate_report_uri=report_uri,
    )
    return version.version
