"""One run of the retraining pipeline under ``kfp.local``, with the demo's data, models and canary wiring.

kfp.local's SubprocessRunner runs each step in a subprocess of this interpreter, in the order and with the
branches a Kubeflow backend would. Its last step asks the rollout controller for the canary and returns
at once (``rollout_wait_s`` 0): the listeners then judge it while the demo watches the controller.
"""

import logging
from pathlib import Path

from musicrl.demo.config import DemoConfig
from musicrl.errors import MusicRLError
from musicrl.pipeline.params import SERVING


logger = logging.getLogger(__name__)


def pipeline_params(config: DemoConfig, out: Path, round_number: int, nats_url: str, gate_prompts: list[str]) -> dict:
    """The pipeline's parameters for one round (only what differs from the defaults a cluster run uses)."""
    prompts_file = out / f"round-{round_number}" / "gate-prompts.txt"
    prompts_file.parent.mkdir(parents=True, exist_ok=True)
    prompts_file.write_text("\n".join(gate_prompts) + "\n")
    return {
        "dataset_url": str(out / "state" / "dataset"),
        "artifacts_url": str(out / "artifacts"),
        "stable_uri": SERVING,  # as a schedule runs it: from what the last round's promotion left serving
        "clap_uri": config.clap_uri,
        "stages": "U",  # the hidden taste reaches the policy through the preference model only
        "rl_config_dir": str(Path(config.rl_config_dir).resolve()),
        "rl_config_prefix": config.rl_config_prefix,
        "rl_steps": config.rl_steps,
        "min_new_preferences": max(1, config.comparisons // 2),  # inattentive votes and ties do not count
        "validation_fraction": config.validation_fraction,
        "test_fraction": config.test_fraction,
        "gate_prompts_file": str(prompts_file),
        "gate_clips_per_prompt": config.gate_clips_per_prompt,
        "gate_clip_duration_s": config.clip_duration_s,
        "gate_min_reward_diff": config.gate_min_reward_diff,
        "gate_max_kl": config.gate_max_kl,
        "gate_min_win_rate": config.gate_min_win_rate,
        "nats_url": nats_url,
        "canary_share": 1.0,  # every comparison of the canary phase is stable against canary: fast evidence
        "rollout_wait_s": 0.0,
        "device": "cpu",
    }


def run_retraining(
    config: DemoConfig, out: Path, round_number: int, stable_uri: str, nats_url: str, gate_prompts: list[str]
) -> Path | None:
    """Run the pipeline once; returns the run's artefact folder (None when it stopped before training).

    The run reads the stable policy from the routing table itself; ``stable_uri``, the one the demo measured, is
    only logged.
    """
    from kfp import local

    from pipelines.retraining import retraining_pipeline

    runs = out / "artifacts" / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp-root"))
    params = pipeline_params(config, out, round_number, nats_url, gate_prompts)
    logger.info("round %d: the retraining pipeline starts from %s", round_number, stable_uri)
    try:
        retraining_pipeline(**params)
    except RuntimeError as e:  # kfp.local's way of saying a step failed; the step's own error is in the log above
        raise MusicRLError(f"round {round_number}: the retraining pipeline failed: {e}") from e
    new = sorted(set(runs.iterdir()) - before) if runs.exists() else []
    return new[-1] if new else None
