"""The retraining pipeline: snapshot → reward models → RL stages → offline gate → register → canary.

It stops early, saying why, at three points: too few new preferences, a preference model that learned
nothing, and a candidate the gate refuses.

Started from the Kubeflow Pipelines UI with no edits, or on a schedule (``musicrl pipeline schedule``), it
retrains on the feedback recorded since the stable policy was trained and hands a gated candidate to the
rollout controller. Every default comes from :class:`musicrl.pipeline.params.RetrainingParams`.

``python -m pipelines.retraining`` writes the compiled ``pipelines/retraining.yaml`` that is committed.
"""

import sys
from pathlib import Path

from kfp import dsl, kubernetes

from musicrl.pipeline.params import RetrainingParams
from musicrl.pipeline.trainjob import SECRET_KEYS, STORAGE_SECRET
from pipelines import components as c


D = RetrainingParams()
COMPILED = Path(__file__).with_name("retraining.yaml")
RUN_ID = dsl.PIPELINE_JOB_NAME_PLACEHOLDER  # the run's name: folders of this run's artefacts
# every step's pod carries these: the chart's NetworkPolicies (values: pipeline.podLabels) admit them to NATS,
# the generator and the reward models, which the gate and the canary step reach
POD_LABELS = {"musicrl.io/role": "pipeline"}


def _on_gpu(task: dsl.PipelineTask, gpu_type, gpu_count, cpu, memory, node_selector, tolerations) -> None:
    """Place a training step on the GPU node pool: accelerator, requests, node selector, tolerations."""
    task.set_accelerator_type(gpu_type).set_accelerator_limit(gpu_count)
    task.set_cpu_request(cpu).set_memory_request(memory)
    # kfp 2.17 does not track parameters used only in resource fields: without this, an If/Else group
    # around the step does not pass them down, and the step's pod spec cannot be resolved
    task.register_pipeline_channels([gpu_type, gpu_count, cpu, memory])
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)


class _Steps:
    """Adds a step in the platform's image, with the object-store credentials from the chart's Secret and the
    pod labels the chart's NetworkPolicies admit."""

    def __init__(self, image) -> None:  # a pipeline parameter
        self.image = image

    def __call__(self, component, **inputs) -> dsl.PipelineTask:
        task = component(**inputs).set_container_image(self.image)
        # the same credentials a TrainJob's pods get; optional: a local store needs none
        kubernetes.use_secret_as_env(task, STORAGE_SECRET, {k: k for k in SECRET_KEYS}, optional=True)
        for key, value in POD_LABELS.items():
            kubernetes.add_pod_label(task, key, value)
        return task


def _reward_models(
    step: _Steps, gpu, snapshot, clap_uri, stable_uri, stages, require_learned, common
) -> tuple[dict, dsl.PipelineTask]:
    """Train the quality head and the preference model side by side, on the GPU pool; their URIs, and the
    preference task, whose ``usable`` output says whether the RL stages may optimise it."""
    snapshot_uri = snapshot.outputs["uri"]
    quality = step(c.train_quality, snapshot_uri=snapshot_uri, clap_uri=clap_uri, **common)
    preference = step(
        c.train_preference,
        snapshot_uri=snapshot_uri,
        init_uri=stable_uri,
        stages=stages,
        require_learned=require_learned,
        **common,
    )
    for task in (quality, preference):
        _on_gpu(task, *gpu)
    return {"quality_uri": quality.output, "preference_uri": preference.outputs["uri"]}, preference


def _rl_stages(step: _Steps, gpu, stable_uri, inputs: dict) -> dsl.PipelineTask:
    """R and U from the stable policy, RU from R with R as its KL reference (MusicRL §4); the candidate."""
    r = step(c.rl_stage, stage="R", policy_uri=stable_uri, reference_uri=stable_uri, **inputs)
    u = step(c.rl_stage, stage="U", policy_uri=stable_uri, reference_uri=stable_uri, **inputs)
    ru = step(c.rl_stage, stage="RU", policy_uri=r.output, reference_uri=r.output, **inputs)
    for task, name in ((r, "rl-r"), (u, "rl-u"), (ru, "rl-ru")):
        _on_gpu(task, *gpu)
        task.set_display_name(name)
    return step(c.pick_candidate, stages=inputs["stages"], r_uri=r.output, u_uri=u.output, ru_uri=ru.output)


def _offline_gate(step: _Steps, gpu, candidate, stable_uri, clap_uri, inputs: dict) -> dsl.PipelineTask:
    """The candidate against the stable policy on held-out prompts, on the GPU pool (``inputs``: the gate's
    settings, this run's reward models and the common step inputs)."""
    gate = step(c.offline_gate, candidate_uri=candidate.output, stable_uri=stable_uri, clap_uri=clap_uri, **inputs)
    _on_gpu(gate, *gpu)
    return gate


def _register_or_stop(step: _Steps, gate, candidate, snapshot, stable_uri, artifacts_url, rollout: dict) -> None:
    """Register the candidate and start it as the canary when the gate passed; else stop with its reason.

    ``rollout`` holds the canary step's pipeline inputs: nats_url, canary_share and rollout_wait_s.
    """
    with dsl.If(gate.outputs["passed"] == True, name="gate-passed"):  # noqa: E712
        version = step(
            c.register_candidate,
            candidate_uri=candidate.output,
            stable_uri=stable_uri,
            snapshot_digest=snapshot.outputs["digest"],
            preferences=snapshot.outputs["preferences"],
            report_uri=gate.outputs["report_uri"],
            artifacts_url=artifacts_url,
            run_id=RUN_ID,
        )
        step(
            c.start_canary,
            candidate_uri=candidate.output,
            version=version.output,
            run_id=RUN_ID,
            **rollout,
        )
    with dsl.Else(name="gate-failed"):
        step(c.stop_early, reason=gate.outputs["reason"])


@dsl.pipeline(
    name="musicrl-retraining",
    description="Retrain the reward models and the policy on recorded listener feedback (MusicRL R, U, RU), "
    "gate the candidate offline, register it and start it as the canary.",
)
def retraining_pipeline(
    image: str = D.image,
    dataset_url: str = D.dataset_url,
    artifacts_url: str = D.artifacts_url,
    stable_uri: str = D.stable_uri,
    clap_uri: str = D.clap_uri,
    stages: str = D.stages,
    rl_config_dir: str = D.rl_config_dir,
    rl_config_prefix: str = D.rl_config_prefix,
    rl_steps: int = D.rl_steps,
    rl_workers: int = D.rl_workers,
    min_new_preferences: int = D.min_new_preferences,
    require_learned_preference: bool = D.require_learned_preference,
    validation_fraction: float = D.validation_fraction,
    test_fraction: float = D.test_fraction,
    gate_prompts_file: str = D.gate_prompts_file,
    gate_clips_per_prompt: int = D.gate_clips_per_prompt,
    gate_clip_duration_s: float = D.gate_clip_duration_s,
    gate_min_reward_diff: float = D.gate_min_reward_diff,
    gate_max_kl: float = D.gate_max_kl,
    gate_min_win_rate: float = D.gate_min_win_rate,
    nats_url: str = D.nats_url,
    canary_share: float = D.canary_share,
    rollout_wait_s: float = D.rollout_wait_s,
    gpu_type: str = D.gpu_type,
    gpu_count: int = D.gpu_count,
    gpu_cpu_request: str = D.gpu_cpu_request,
    gpu_memory_request: str = D.gpu_memory_request,
    gpu_node_selector: dict = D.gpu_node_selector,
    gpu_tolerations: list = D.gpu_tolerations,
    device: str = D.device,
) -> None:
    step = _Steps(image)
    gpu = (gpu_type, gpu_count, gpu_cpu_request, gpu_memory_request, gpu_node_selector, gpu_tolerations)
    with dsl.ExitHandler(step(c.report_outcome, nats_url=nats_url), name="retraining"):
        checked = step(
            c.check_parameters,
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
        stable = checked.output  # stable_uri, or for "serving" the policy the routing table names now
        snapshot = step(
            c.take_snapshot,
            dataset_url=dataset_url,
            artifacts_url=artifacts_url,
            min_new_preferences=min_new_preferences,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
        ).after(checked)
        with dsl.If(snapshot.outputs["enough"] == True, name="enough-new-preferences"):  # noqa: E712
            common = {"artifacts_url": artifacts_url, "run_id": RUN_ID, "device": device}
            models, preference = _reward_models(
                step, gpu, snapshot, clap_uri, stable, stages, require_learned_preference, common
            )
            with dsl.If(preference.outputs["usable"] == True, name="preference-model-usable"):  # noqa: E712
                stage_inputs = {
                    "stages": stages,
                    "clap_uri": clap_uri,
                    "rl_config_dir": rl_config_dir,
                    "rl_config_prefix": rl_config_prefix,
                    "rl_steps": rl_steps,
                    "rl_workers": rl_workers,
                    "image": image,
                    **models,
                    **common,
                }
                candidate = _rl_stages(step, gpu, stable, stage_inputs)
                gate_settings = {
                    "prompts_file": gate_prompts_file,
                    "clips_per_prompt": gate_clips_per_prompt,
                    "clip_duration_s": gate_clip_duration_s,
                    "min_reward_diff": gate_min_reward_diff,
                    "max_kl": gate_max_kl,
                    "min_win_rate": gate_min_win_rate,
                }
                gate = _offline_gate(step, gpu, candidate, stable, clap_uri, {**gate_settings, **models, **common})
                rollout = {"nats_url": nats_url, "canary_share": canary_share, "rollout_wait_s": rollout_wait_s}
                _register_or_stop(step, gate, candidate, snapshot, stable, artifacts_url, rollout)
            with dsl.Else(name="preference-model-learned-nothing"):
                step(c.stop_early, reason=preference.outputs["reason"])
        with dsl.Else(name="too-few-preferences"):
            step(c.stop_early, reason=snapshot.outputs["reason"])


def compile_pipeline(path: Path = COMPILED) -> Path:
    """Compile the pipeline to ``path`` (the committed YAML by default), byte for byte the same every time."""
    from musicrl.pipeline.kfp_client import compile_pipeline as compile_package

    return Path(compile_package(retraining_pipeline, str(path)))


if __name__ == "__main__":
    sys.stdout.write(f"{compile_pipeline()}\n")
