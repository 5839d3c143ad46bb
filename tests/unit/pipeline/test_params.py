"""The pipeline's parameters refuse, with a sentence, what would otherwise fail on a GPU node later."""

import pytest

from musicrl.errors import InvalidRequest
from musicrl.pipeline.params import RetrainingParams, candidate_stage, selected_stages
from musicrl.pipeline.stages import StageModels, candidate_of, stage_config


def test_the_defaults_are_valid_and_run_the_papers_three_stages():
    RetrainingParams().check()
    assert selected_stages(RetrainingParams().stages) == ("R", "U", "RU")
    assert candidate_stage("R,U,RU") == "RU" and candidate_stage("u, r") == "U"


@pytest.mark.parametrize(
    "stages, message",
    [("RU", "add R"), ("U,RU", "add R"), ("R,X", "must name some of"), ("", "must name some of")],
)
def test_stage_lists_that_cannot_run_are_refused(stages, message):
    with pytest.raises(InvalidRequest, match=message):
        RetrainingParams(stages=stages).check()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("gpu_node_selector", ["pool=gpu"], "must map label names"),
        ("gpu_node_selector", {"pool": 1}, "must map label names"),
        ("gpu_tolerations", {"key": "gpu"}, "a toleration may hold only|must be a list"),
        ("gpu_tolerations", [{"key": "gpu", "operator": "Maybe"}], "operator must be Equal or Exists"),
        ("gpu_tolerations", [{"key": "gpu", "effect": "Sometimes"}], "effect must be one of"),
        ("gpu_tolerations", [{"kee": "gpu"}], "may hold only"),
        ("gpu_memory_request", "lots", "Kubernetes quantity"),
        ("gpu_cpu_request", "-1", "Kubernetes quantity"),
        ("gpu_count", -1, "gpu_count"),
        ("rl_workers", 0, "rl_workers"),
        ("gate_min_win_rate", 1.5, "gate_min_win_rate"),
        ("validation_fraction", 0.0, "validation_fraction and test_fraction must be above 0"),
        ("test_fraction", 0.95, "sum to less than 1"),
        ("stable_uri", "serving", "set nats_url, or name the stable checkpoint"),
    ],
)
def test_malformed_gpu_placement_and_numbers_are_refused(field, value, message):
    with pytest.raises(InvalidRequest, match=message):
        RetrainingParams(**{field: value}).check()


def test_a_stage_config_takes_this_runs_models_and_keeps_the_rest(tmp_path):
    models = StageModels("runs/r/ckpt", "runs/r/ckpt", "tiny://clap?seed=1", "runs/q", "runs/p")
    config = stage_config("configs/rl/musicrl-ru.yaml", models, str(tmp_path / "ru"), steps=3, device="cpu")
    assert (config.stage, config.policy_uri, config.reference_uri) == ("RU", "runs/r/ckpt", "runs/r/ckpt")
    assert [(r.reward, r.uri) for r in config.rewards] == [("preference", "runs/p")]
    assert (config.held_out.reward, config.held_out.uri) == ("text-adherence", "tiny://clap?seed=1")
    assert config.optim.steps == 3 and config.checkpoint_every == 3 and config.device == "cpu"
    assert config.alpha == 0.1  # the paper's settings stay the config's
    assert candidate_of("R,RU", {"R": "r", "U": "u", "RU": "ru"}) == "ru"


def test_a_stage_the_run_did_not_select_hands_on_its_start_checkpoint_without_training(tmp_path, caplog):
    from musicrl.pipeline.steps import run_rl_stage

    models = StageModels("tiny://musicgen?seed=4", "tiny://musicgen?seed=4", "tiny://clap", "q", "p")
    params = RetrainingParams(stages="R", rl_config_dir=str(tmp_path / "no-configs-here"))
    with caplog.at_level("INFO"):
        assert run_rl_stage("U", params, models, str(tmp_path / "rl-u")) == "tiny://musicgen?seed=4"
    assert not (tmp_path / "rl-u").exists()
    assert "stage U is not among R: skipped" in caplog.text
