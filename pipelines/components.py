"""One lightweight Kubeflow component per pipeline step; each is one call into ``musicrl.pipeline.steps``.

The components run in the platform's image (set per task from the ``image`` pipeline parameter), which
holds the ``musicrl`` package, so nothing is installed at run time. Their bodies import inside the function
because Kubeflow ships each function's source to its pod on its own.
"""

from typing import NamedTuple

from kfp import dsl

from musicrl.pipeline.params import RetrainingParams


BASE_IMAGE = RetrainingParams().image  # overridden per task by the `image` pipeline parameter


@dsl.component(base_image=BASE_IMAGE)
def check_parameters(
    stable_uri: str,
    nats_url: str,
    stages: str,
    rl_workers: int,
    rl_steps: int,
    min_new_preferences: int,
    validation_fraction: float,
    test_fraction: float,
    gpu_count: int,
    gpu_cpu_request: str,
    gpu_memory_request: str,
    gpu_node_selector: dict,
    gpu_tolerations: list,
    gate_max_kl: float,
    gate_min_win_rate: float,
    canary_share: float,
    rollout_wait_s: float,
) -> str:
    """Refuse malformed parameters before any GPU pod is scheduled; returns the stable policy the run starts from."""
    from musicrl.pipeline import steps
    from musicrl.pipeline.params import RetrainingParams

    return steps.check_parameters(
        RetrainingParams(
            stable_uri=stable_uri,
            nats_url=nats_url,
            stages=stages,
            rl_workers=rl_workers,
            rl_steps=rl_steps,
            min_new_preferences=min_new_preferences,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            gpu_count=gpu_count,
            gpu_cpu_request=gpu_cpu_request,
            gpu_memory_request=gpu_memory_request,
            gpu_node_selector=gpu_node_selector,
            gpu_tolerations=gpu_tolerations,
            gate_max_kl=gate_max_kl,
            gate_min_win_rate=gate_min_win_rate,
            canary_share=canary_share,
            rollout_wait_s=rollout_wait_s,
        )
    )


@dsl.component(base_image=BASE_IMAGE)
def take_snapshot(
    dataset_url: str, artifacts_url: str, min_new_preferences: int, validation_fraction: float, test_fraction: float
) -> NamedTuple(
    "SnapshotOutputs", [("uri", str), ("digest", str), ("preferences", int), ("enough", bool), ("reason", str)]
):  # noqa: E501
    """Snapshot the dataset; say whether it holds enough new preferences to retrain."""
    from collections import namedtuple

    from musicrl.pipeline import steps

    outcome = steps.take_snapshot_for_run(
        dataset_url, artifacts_url, min_new_preferences, validation_fraction, test_fraction
    )
    outputs = namedtuple("SnapshotOutputs", ["uri", "digest", "preferences", "enough", "reason"])
    return outputs(outcome.uri, outcome.digest, outcome.preferences, outcome.enough, outcome.reason)


@dsl.component(base_image=BASE_IMAGE)
def train_quality(snapshot_uri: str, clap_uri: str, artifacts_url: str, run_id: str, device: str) -> str:
    """Train the quality head on the snapshot's ratings; returns its checkpoint URI."""
    from musicrl.pipeline import steps

    return steps.train_quality_model(
        snapshot_uri, clap_uri, steps.run_url(artifacts_url, run_id, "quality"), run_id, device
    )


@dsl.component(base_image=BASE_IMAGE)
def train_preference(
    snapshot_uri: str, init_uri: str, stages: str, require_learned: bool, artifacts_url: str, run_id: str, device: str
) -> NamedTuple("PreferenceOutputs", [("uri", str), ("usable", bool), ("reason", str)]):
    """Train the preference model from the stable policy; say whether the RL stages may optimise it."""
    from collections import namedtuple

    from musicrl.pipeline import steps

    out_url = steps.run_url(artifacts_url, run_id, "preference")
    outcome = steps.train_preference_model(snapshot_uri, init_uri, out_url, run_id, device, stages, require_learned)
    outputs = namedtuple("PreferenceOutputs", ["uri", "usable", "reason"])
    return outputs(outcome.uri, outcome.usable, outcome.reason)


@dsl.component(base_image=BASE_IMAGE)
def rl_stage(
    stage: str,
    stages: str,
    policy_uri: str,
    reference_uri: str,
    clap_uri: str,
    quality_uri: str,
    preference_uri: str,
    artifacts_url: str,
    run_id: str,
    rl_config_dir: str,
    rl_config_prefix: str,
    rl_steps: int,
    rl_workers: int,
    device: str,
    image: str,
) -> str:
    """Run one RL stage (skipped, handing on its start checkpoint, when not selected)."""
    from musicrl.pipeline import steps
    from musicrl.pipeline.params import RetrainingParams
    from musicrl.pipeline.stages import StageModels

    params = RetrainingParams(
        image=image,
        stages=stages,
        rl_config_dir=rl_config_dir,
        rl_config_prefix=rl_config_prefix,
        rl_steps=rl_steps,
        rl_workers=rl_workers,
        device=device,
    )
    models = StageModels(policy_uri, reference_uri, clap_uri, quality_uri, preference_uri)
    return steps.run_rl_stage(stage, params, models, steps.run_url(artifacts_url, run_id, f"rl-{stage.lower()}"))


@dsl.component(base_image=BASE_IMAGE)
def pick_candidate(stages: str, r_uri: str, u_uri: str, ru_uri: str) -> str:
    """The candidate policy: the last selected stage's checkpoint."""
    from musicrl.pipeline.stages import candidate_of

    return candidate_of(stages, {"R": r_uri, "U": u_uri, "RU": ru_uri})


@dsl.component(base_image=BASE_IMAGE)
def offline_gate(
    candidate_uri: str,
    stable_uri: str,
    clap_uri: str,
    quality_uri: str,
    preference_uri: str,
    prompts_file: str,
    clips_per_prompt: int,
    clip_duration_s: float,
    min_reward_diff: float,
    max_kl: float,
    min_win_rate: float,
    artifacts_url: str,
    run_id: str,
    device: str,
    report: dsl.Output[dsl.Markdown],
    metrics: dsl.Output[dsl.Metrics],
) -> NamedTuple("GateOutputs", [("passed", bool), ("reason", str), ("report_uri", str)]):
    """The candidate against the stable policy on held-out prompts: a Markdown report and metrics."""
    from collections import namedtuple

    from musicrl.pipeline import steps
    from musicrl.pipeline.params import RetrainingParams

    params = RetrainingParams(
        gate_prompts_file=prompts_file,
        gate_clips_per_prompt=clips_per_prompt,
        gate_clip_duration_s=clip_duration_s,
        gate_min_reward_diff=min_reward_diff,
        gate_max_kl=max_kl,
        gate_min_win_rate=min_win_rate,
        device=device,
    )
    rewards = {"text-adherence": clap_uri, "quality": quality_uri, "preference": preference_uri}
    outcome = steps.offline_gate(
        candidate_uri, stable_uri, rewards, params, steps.run_url(artifacts_url, run_id, "gate")
    )
    with open(report.path, "w") as file:
        file.write(outcome.markdown)
    for name, value in outcome.metrics.items():
        metrics.log_metric(name, value)
    outputs = namedtuple("GateOutputs", ["passed", "reason", "report_uri"])
    return outputs(outcome.passed, outcome.reason, outcome.report_uri)


@dsl.component(base_image=BASE_IMAGE)
def register_candidate(
    candidate_uri: str,
    stable_uri: str,
    snapshot_digest: str,
    preferences: int,
    report_uri: str,
    artifacts_url: str,
    run_id: str,
) -> str:
    """Record the candidate as a policy version in the platform's registry; returns the version."""
    from musicrl.pipeline import steps

    return steps.register_candidate(
        candidate_uri, stable_uri, snapshot_digest, preferences, report_uri, artifacts_url, run_id
    )


@dsl.component(base_image=BASE_IMAGE)
def start_canary(
    candidate_uri: str,
    version: str,
    nats_url: str,
    canary_share: float,
    rollout_wait_s: float,
    run_id: str,
    rollout: dsl.Output[dsl.Markdown],
):
    """``musicrl rollout start``, then wait for the controller's decision: the evidence as a Markdown artefact."""
    from musicrl.pipeline import steps

    report = steps.start_canary(candidate_uri, version, nats_url, canary_share, rollout_wait_s, run_id)
    with open(rollout.path, "w") as file:
        file.write(report)


@dsl.component(base_image=BASE_IMAGE)
def stop_early(reason: str):
    """End the run without a candidate, saying why (too few new preferences, a preference model that learned
    nothing, or the gate said no)."""
    from musicrl.pipeline import steps

    steps.stop_early(reason)


@dsl.component(base_image=BASE_IMAGE)
def report_outcome(status: dsl.PipelineTaskFinalStatus, nats_url: str):
    """The exit handler: publish a failure event naming the failed step (nothing when the run succeeded)."""
    from musicrl.pipeline import steps

    steps.report_outcome(
        status.state,
        status.pipeline_task_name,
        status.error_message or "",
        status.pipeline_job_resource_name,
        nats_url,
    )
