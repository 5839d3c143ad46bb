"""The retraining pipeline run for real with kfp.local (SubprocessRunner): every step, on tiny models.

kfp.local runs each component in a subprocess of this interpreter, in the order and with the branches
(``dsl.If``, ``dsl.ExitHandler``) a Kubeflow backend would; it ignores GPU placement, which
``test_pipeline_compile.py`` checks in the compiled YAML instead, with the branch a failed gate takes
(the gate's own tests fail it with reasons; a second trained run here would cost ~80 s for that wiring).
"""

import asyncio
import json
from pathlib import Path

import pytest
from kfp import local

from musicrl.bus.local_server import LocalNatsServer
from musicrl.config import BusConfig
from musicrl.models.loading import load_musicgen
from musicrl.pipeline.registry import PolicyRegistry
from musicrl.rollout import levers
from musicrl.rollout.record import Status
from musicrl.v1 import events_pb2
from pipelines.retraining import retraining_pipeline
from tests.utils.feedback_world import write_feedback_world
from tests.utils.stream import stream_events


pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["a calm piano piece", "a fast techno loop", "a jazz trio ballad"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_feedback_world(tmp_path_factory.mktemp("world"), comparisons=40, seed=3)


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory):
    with LocalNatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server.url


def _run(tmp_path: Path, world, **overrides) -> Path:
    """Run the whole pipeline with tiny settings; returns the artefact store."""
    prompts = tmp_path / "gate-prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    artifacts = tmp_path / "artifacts"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    params = {
        "dataset_url": world.dataset_url,
        "artifacts_url": str(artifacts),
        "stable_uri": "tiny://musicgen?seed=0",
        "clap_uri": "tiny://clap?seed=0",
        "rl_config_dir": str(REPO / "configs" / "rl"),
        "rl_config_prefix": "tiny",  # configs/rl/tiny-{r,u,ru}.yaml: 1 s clips, the tiny CLAP
        "rl_steps": 2,  # the plumbing, not the science: two steps leave a checkpoint per stage
        "min_new_preferences": 10,
        # the tiny preference model learns the world's random votes or not, run to run; the plumbing must run
        "require_learned_preference": False,
        "gate_prompts_file": str(prompts),
        "gate_clips_per_prompt": 2,
        "gate_clip_duration_s": 0.5,
        "gate_min_reward_diff": -1.0e6,  # untrained tiny models: gate on nothing but the plumbing ...
        "gate_max_kl": 1.0e6,
        "gate_min_win_rate": 0.0,
        "device": "cpu",
        **overrides,
    }
    retraining_pipeline(**params)
    return artifacts


def test_a_run_retrains_gates_registers_and_requests_a_canary(tmp_path, world, nats_url):
    artifacts = _run(tmp_path, world, nats_url=nats_url)
    (version,) = PolicyRegistry(str(artifacts / "registry")).list()
    assert version.version == "v1" and version.parent_uri == "tiny://musicgen?seed=0"
    assert "/rl-ru/" in version.model_uri  # the candidate is RU's checkpoint (MusicRL's best stage)
    assert version.metrics["snapshot/preferences"] == 40
    assert {"kl_to_stable", "win_rate/preference"} <= set(version.metrics)
    report = json.loads(Path(version.gate_report_uri).read_text())
    assert report["passed"] is True
    assert Path(version.gate_report_uri).with_name("gate_report.md").read_text().count("|") > 10
    bundle = load_musicgen(version.model_uri)  # the registered checkpoint loads as a policy
    assert bundle.model.config.decoder.num_codebooks == 4
    runs = list((artifacts / "runs").iterdir())
    assert len(runs) == 1 and {p.name for p in runs[0].iterdir()} >= {"quality", "preference", "rl-r", "rl-u", "rl-ru"}
    (request,) = [
        e
        for e in stream_events(nats_url, "musicrl.v1.policy_rollout")
        if e.action == events_pb2.ROLLOUT_ACTION_CANARY_REQUESTED
    ]
    assert request.canary_model_uri == version.model_uri and "v1" in request.reason
    # the last step started the rollout: the controller (not running here) finds the request in its record
    record, _ = asyncio.run(_current_rollout(nats_url))
    assert (record.status, record.model_uri, record.version) == (Status.REQUESTED, version.model_uri, "v1")
    assert record.id == request.rollout_id and record.requested_by.startswith("retraining pipeline run ")
    (report,) = (tmp_path / "kfp-root").rglob("rollout")  # the step's Markdown artefact
    assert f"Rollout {record.id}: v1" in report.read_text() and "requested" in report.read_text()


async def _current_rollout(nats_url: str):
    async with levers.open_bus(BusConfig(nats_url=nats_url)) as bus:
        return await bus.store.get()


def test_too_few_new_preferences_stop_before_any_training(tmp_path, world):
    artifacts = _run(tmp_path, world, min_new_preferences=1000)
    assert not (artifacts / "runs").exists()
    assert PolicyRegistry(str(artifacts / "registry")).list() == []
    assert list((artifacts / "snapshots").iterdir())  # the snapshot was taken, then the run stopped


def test_malformed_gpu_placement_fails_first_and_the_exit_handler_says_so(tmp_path, world, nats_url):
    with pytest.raises(RuntimeError, match="check-parameters"):
        _run(tmp_path, world, gpu_tolerations=[{"key": "gpu", "operator": "Maybe"}], nats_url=nats_url)
    assert not (tmp_path / "artifacts" / "snapshots").exists()  # nothing ran after the check
    (failed,) = stream_events(nats_url, "musicrl.v1.pipeline_run_failed")
    assert failed.state == "FAILED" and failed.run_name
