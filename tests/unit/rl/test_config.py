from pathlib import Path

import pytest

from musicrl.errors import InvalidRequest
from musicrl.rewards.mixture import Normalization
from musicrl.rl.config import AlarmAction, RLConfig, ValueLayout
from musicrl.toyworld.corpus import split_of


CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "rl"


@pytest.mark.parametrize("name", ["musicrl-r.yaml", "musicrl-u.yaml", "musicrl-ru.yaml", "tiny-r.yaml"])
def test_the_shipped_stage_configs_are_valid(name):
    config = RLConfig.from_file(CONFIGS / name)
    assert len(config.prompts) == 12  # read from prompts.txt beside the config
    assert config.sampling.temperature == 0.99  # the paper's rollout temperature
    assert config.held_out is not None


def test_r_u_and_ru_are_the_papers_stages():
    r, u, ru = (RLConfig.from_file(CONFIGS / f"musicrl-{s}.yaml") for s in ("r", "u", "ru"))
    assert [x.reward for x in r.rewards] == ["text-adherence", "quality"]
    assert [x.reward for x in u.rewards] == ["preference"]
    assert ru.policy_uri == ru.reference == "runs/musicrl-r/checkpoints/step-002000"
    assert r.reference == r.policy_uri  # R and U regularise towards the base model
    assert r.value is ValueLayout.SEPARATE and r.rewards[0].normalization is Normalization.RUNNING
    assert u.held_out.action is AlarmAction.KEEP_BEST


def test_the_toy_stage_configs_train_on_train_split_captions_with_the_toy_models():
    r, u, ru = (RLConfig.from_file(CONFIGS / f"toy-{s}.yaml") for s in ("r", "u", "ru"))
    assert [(x.reward, x.uri) for x in r.rewards] == [("text-adherence", "toy://clap"), ("quality", "toy://quality")]
    assert [x.reward for x in u.rewards] == [x.reward for x in ru.rewards] == ["preference"]
    assert r.policy_uri == u.policy_uri == "toy://musicgen" and ru.stage == "RU"
    assert r.prompts == u.prompts == ru.prompts and len(set(r.prompts)) == 256
    assert {split_of(p) for p in r.prompts} == {"train"}  # judge prompts come from the test split
    assert r.sampling.duration_s == 2.0  # the toy world's clip length


def _minimal(**overrides):
    data = {
        "stage": "x",
        "policy_uri": "tiny://musicgen?seed=0",
        "rewards": [{"reward": "loudness", "uri": "analytic://loudness"}],
        "prompts": ["a"],
        "out_url": "/tmp/x",
    }
    return {**data, **overrides}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"alpha": 2}, "alpha must be in \\[0, 1\\]"),
        ({"prompts": ["  "]}, "the prompt set is empty"),
        ({"rewards": []}, "at least one reward"),
        ({"rewards": [{"reward": "vibes", "uri": "x"}]}, "unknown reward 'vibes'"),
        (
            {"held_out": {"reward": "loudness", "uri": "analytic://loudness"}},
            "held-out reward 'loudness' must not be one the run trains on",
        ),
        ({"sampling": {"temperature": 0}}, "REINFORCE needs exploration"),
        ({"optim": {"steps": 0}}, "must be >= 1"),
        ({"optim": {"stepz": 3}}, "malformed RL config"),
        ({"optim": {"max_grad_norm": 0}}, "optim.max_grad_norm must be a finite number > 0"),
        ({"optim": {"value_coef": -1}}, "optim.value_coef must be a finite number >= 0"),
        ({"held_out": {"reward": "low-codes", "uri": "x", "window": 0}}, "held_out.window must be >= 1"),
        ({"held_out": {"reward": "low-codes", "uri": "x", "max_drop": -0.1}}, "held_out.max_drop must be"),
        ({"value": "tiny"}, "malformed RL config"),
        ({"lr": 3}, "unknown RL config keys \\['lr'\\]"),
        ({"compute": {"fuse": True}}, "malformed RL config"),
    ],
)
def test_bad_configs_are_refused_with_a_sentence(overrides, message):
    with pytest.raises(InvalidRequest, match=message):
        RLConfig.from_wire(_minimal(**overrides))


def test_a_config_round_trips_through_its_plain_form():
    config = RLConfig.from_wire(_minimal(held_out={"reward": "low-codes", "uri": "analytic://low-codes"}))
    assert RLConfig.from_wire(config.to_wire()) == config
    tuned = RLConfig.from_wire(_minimal(compute={"checkpoint_decoder": True, "chunk_positions": 16}))
    assert tuned.compute.checkpoint_decoder and tuned.compute.chunk_positions == 16
    assert RLConfig.from_wire(tuned.to_wire()) == tuned


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="cannot read the RL config"):
        RLConfig.from_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(InvalidRequest, match="must hold a mapping"):
        RLConfig.from_file(tmp_path / "list.yaml")
    (tmp_path / "bad-prompts.yaml").write_text("stage: x\nprompts_file: nope.txt\n")
    with pytest.raises(InvalidRequest, match="cannot read prompts"):
        RLConfig.from_file(tmp_path / "bad-prompts.yaml")
