"""RL on the tiny policy with analytic rewards: it must learn, stay near its reference, and checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from musicrl.config import EngineConfig, SamplingParams
from musicrl.errors import IncompatibleModel, InvalidRequest, ModelNotFound
from musicrl.models.engine import GenerationEngine, GenerationRequest
from musicrl.models.loading import load_musicgen
from musicrl.rewards.base import ClipBatch, ClipInput
from musicrl.rl import checkpoints
from musicrl.rl.config import RLConfig
from musicrl.rl.trainer import RLTrainer, train_rl
from tests.utils.processes import REPO_ROOT


pytestmark = pytest.mark.slow

TINY = "tiny://musicgen?seed=0"
LOW_CODES = "analytic://low-codes?vocab_size=128"
PROMPTS = ["rock", "jazz piano", "ambient pads", "techno beat", "folk guitar", "string quartet"]
EVAL_PROMPTS = [f"{p} number {i}" for i in range(6) for p in PROMPTS]


def _config(out: Path, **overrides) -> RLConfig:
    data = {
        "stage": "test",
        "policy_uri": TINY,
        "rewards": [{"reward": "low-codes", "uri": LOW_CODES, "weight": 1.0, "normalization": "none"}],
        "prompts": PROMPTS,
        "alpha": 0.005,
        # 0.3 s clips, 16 per step, a large learning rate: the tiny model learns the analytic reward in ~20 steps
        "sampling": {"duration_s": 0.3, "temperature": 0.99, "top_k": 0, "guidance_scale": 3.0},
        "optim": {"steps": 24, "batch_size": 16, "policy_lr": 1e-3, "value_lr": 1e-3},
        "checkpoint_every": 12,
        "out_url": str(out),
        "seed": 0,
    }
    data.update(overrides)
    return RLConfig.from_wire(data)


def _low_code_share(uri: str, prompts=EVAL_PROMPTS) -> float:
    """Mean share of low codebook-0 tokens over fresh samples with fixed seeds (the same for every policy)."""
    engine = GenerationEngine.from_uri(uri)
    params = SamplingParams(duration_s=0.3, temperature=0.99, top_k=0)
    clips = engine.generate_batch([GenerationRequest(p, params, seed=i) for i, p in enumerate(prompts)])
    return float(np.mean([(c.codes[0] < 64).float().mean().item() for c in clips]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "run"
    result = train_rl(_config(out))
    return out, result


def test_a_short_run_raises_the_reward_by_a_clear_margin(trained):
    out, result = trained
    final = result.checkpoints[-1]
    before, after = _low_code_share(TINY), _low_code_share(final)
    assert after > before + 0.15, (before, after)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 25))
    assert rows[-1]["kl"] < 8.0  # nats per step: the policy moved, but stayed near its reference
    assert {"reward/mean", "reward/low-codes/mean", "kl", "entropy", "value_loss", "advantage/std"} <= set(rows[0])
    assert {"grad_norm/policy", "grad_norm/value"} <= set(rows[0]) and "grad_norm" not in rows[0]
    assert all(r["grad_norm/policy"] > 0 and r["grad_norm/value"] > 0 for r in rows)
    assert (out / "training.png").stat().st_size > 10_000


def test_checkpoints_are_served_by_the_generator_and_differ_from_the_base(trained):
    _, result = trained
    assert [Path(c).name for c in result.checkpoints] == ["step-000012", "step-000024"]
    metadata = json.loads((Path(result.checkpoints[-1]) / "musicrl.json").read_text())
    assert metadata["kind"] == "policy" and metadata["parent_uri"] == TINY
    assert metadata["extra"]["reference_uri"] == TINY and metadata["extra"]["step"] == 24
    request = [GenerationRequest("rock", SamplingParams(duration_s=0.3), seed=5)]
    base = GenerationEngine.from_uri(TINY).generate_batch(request)[0].codes
    tuned = GenerationEngine.from_uri(f"file://{result.checkpoints[-1]}").generate_batch(request)[0].codes
    assert not torch.equal(base, tuned)


def test_alpha_one_keeps_the_policy_at_its_reference(tmp_path):
    # a realistic learning rate: Adam normalises step sizes, so even round-off becomes a step at large rates
    result = train_rl(_config(tmp_path / "run", alpha=1.0, optim={"steps": 4, "batch_size": 8, "policy_lr": 1e-4}))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # at the reference the KL's gradient is round-off, which Adam's normalised steps turn into drift of about
    # the learning rate per step: the KL stays three orders of magnitude below a trained run's (~5)
    assert max(r["kl"] for r in rows) < 1e-2
    final = load_musicgen(result.checkpoints[-1]).model.decoder.state_dict()
    start = load_musicgen(TINY).model.decoder.state_dict()
    drift = max((final[k] - start[k]).abs().max().item() for k in start)
    assert drift < 1e-3  # the KL's gradient at the reference is zero: nothing moves


def test_a_larger_alpha_gives_a_smaller_kl(tmp_path):
    kls = {}
    for alpha in (0.0, 0.5):
        train_rl(
            _config(tmp_path / f"alpha-{alpha}", alpha=alpha, optim={"steps": 8, "batch_size": 8, "policy_lr": 3e-3})
        )
        rows = [json.loads(line) for line in (tmp_path / f"alpha-{alpha}" / "metrics.jsonl").read_text().splitlines()]
        kls[alpha] = np.mean([r["kl"] for r in rows[-3:]])
    assert kls[0.5] < kls[0.0], kls


def test_ru_starts_from_r_and_measures_kl_against_it(trained, tmp_path):
    _, r_result = trained
    r_checkpoint = r_result.checkpoints[-1]
    ru = _config(tmp_path / "ru", stage="RU", policy_uri=r_checkpoint, reference_uri=r_checkpoint,
                 optim={"steps": 2, "batch_size": 8, "policy_lr": 3e-3})  # fmt: skip
    result = train_rl(ru)
    rows = [json.loads(line) for line in (tmp_path / "ru" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] < 1e-6  # step 1 samples R itself: zero KL against R, not against the base
    metadata = json.loads((Path(result.checkpoints[-1]) / "musicrl.json").read_text())
    assert metadata["parent_uri"] == r_checkpoint and metadata["extra"]["reference_uri"] == r_checkpoint
    assert metadata["extra"]["stage"] == "RU"


def test_a_run_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    train_rl(_config(out, optim={"steps": 3, "batch_size": 4, "policy_lr": 3e-3}, checkpoint_every=3))
    result = train_rl(_config(out, optim={"steps": 5, "batch_size": 4, "policy_lr": 3e-3}, checkpoint_every=3))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [Path(c).name for c in result.checkpoints] == ["step-000005"]


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"rewards": [{"reward": "happiness", "uri": "x"}]}, InvalidRequest, "unknown reward 'happiness'"),
        ({"alpha": 1.5}, InvalidRequest, "alpha must be in \\[0, 1\\]"),
        ({"alpha": -0.1}, InvalidRequest, "alpha must be in \\[0, 1\\]"),
        ({"prompts": []}, InvalidRequest, "the prompt set is empty"),
        ({"policy_uri": "/no/such/checkpoint"}, ModelNotFound, "no checkpoint directory"),
        ({"reference_uri": "tiny://musicgen?seed=0&codebook_size=64"}, IncompatibleModel, "vocab_size=64"),
        ({"reference_uri": "tiny://musicgen?seed=0&num_hidden_layers=3"}, IncompatibleModel, "num_hidden_layers"),
        ({"learning_rate": 1}, InvalidRequest, "unknown RL config keys \\['learning_rate'\\]"),
    ],
)
def test_bad_runs_stop_before_any_training(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        RLTrainer.build(_config(tmp_path / "run", **overrides))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_two_processes_under_torchrun_end_with_identical_parameters(tmp_path):
    config = tmp_path / "ddp.json"
    config.write_text(
        json.dumps(_config(tmp_path / "run", optim={"steps": 2, "batch_size": 2, "policy_lr": 3e-3}).to_wire())
    )
    script = tmp_path / "fingerprint.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
         str(config), str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    fingerprints = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert fingerprints[0]["prompts"] != fingerprints[1]["prompts"]  # each rank trained on its own shard
    assert fingerprints[0]["policy"] == fingerprints[1]["policy"]
    assert fingerprints[0]["value"] == fingerprints[1]["value"]
    assert fingerprints[0]["policy"] != fingerprints[0]["start"]  # and they did train


DDP_SCRIPT = """
import hashlib, json, sys
import torch
from musicrl.rl.config import RLConfig
from musicrl.rl.trainer import RLTrainer

def digest(module):
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode()); h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

config = RLConfig.from_file(sys.argv[1])
trainer = RLTrainer.build(config)
rank = trainer.topology.rank
start = digest(trainer.policy.model.decoder)
prompts = trainer._prompts_and_seeds(0)[0]
trainer.run()
fingerprint = {
    "start": start,
    "policy": digest(trainer.policy.model.decoder),
    "value": digest(trainer.objective.value),
    "prompts": prompts,
}
open(f"{sys.argv[2]}/rank-{rank}.json", "w").write(json.dumps(fingerprint))
"""


@pytest.mark.parametrize("action", ["stop", "keep_best"])
def test_the_over_optimisation_alarm_fires_when_a_held_out_reward_falls(tmp_path, action):
    # trained on low-codes, watched on high-codes: by construction the second falls as the first rises
    held_out = {"reward": "high-codes", "uri": "analytic://high-codes?vocab_size=128", "window": 2,
                "max_drop": 0.05, "action": action}  # fmt: skip
    result = train_rl(_config(tmp_path / "run", alpha=0.0, held_out=held_out, checkpoint_every=2))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # best names a step checkpoint (no copy), through the pointer file beside latest
    assert result.best_checkpoint is not None and result.best_checkpoint in result.checkpoints
    assert (tmp_path / "run" / "checkpoints" / "best").read_text() == Path(result.best_checkpoint).name
    assert not (tmp_path / "run" / "checkpoints" / "best").is_dir()
    best_step = json.loads((Path(result.best_checkpoint) / "musicrl.json").read_text())["extra"]["step"]
    assert best_step < rows[-1]["step"]
    if action == "stop":
        assert result.stopped_by_alarm and len(rows) < 24
    else:
        assert not result.stopped_by_alarm and len(rows) == 24
    assert rows[-1]["held_out/high-codes/mean"] < max(r["held_out/high-codes/mean"] for r in rows)


class ScriptedHeldOut:
    """A held-out reward that follows a script, one value per step: the run's checkpoints can be counted."""

    reads = ClipInput.CODES

    def __init__(self, name: str, values: list[float]) -> None:
        self.name, self._values = name, iter(values)

    def score(self, batch: ClipBatch) -> np.ndarray:
        return np.full(len(batch), next(self._values), dtype=np.float32)


def test_a_held_out_reward_that_rises_then_falls_costs_one_checkpoint_more(tmp_path, monkeypatch):
    # 30 steps, window 3, a checkpoint every 10; the held-out reward peaks at step 12 and falls for 18
    # steps. Saving on every improvement and every alarming step wrote 3 + 10 + 15 = 28 full checkpoints.
    held_out = {"reward": "high-codes", "uri": "analytic://high-codes?vocab_size=128", "window": 3,
                "max_drop": 0.1, "action": "keep_best"}  # fmt: skip
    config = _config(tmp_path / "run", held_out=held_out, checkpoint_every=10,
                     sampling={"duration_s": 0.1, "temperature": 0.99, "top_k": 0, "guidance_scale": 3.0},
                     optim={"steps": 30, "batch_size": 1, "policy_lr": 1e-4})  # fmt: skip  # tiny: count, not learn
    trainer = RLTrainer.build(config)
    trainer.held_out = ScriptedHeldOut("high-codes", [0.1 * min(s, 24 - s) for s in range(1, 31)])
    writes = []
    save = checkpoints.save
    monkeypatch.setattr(checkpoints, "save", lambda *a, **k: writes.append(a[1]) or save(*a, **k))
    result = trainer.run()

    # window means peak at step 13 (1.13) and fall past max_drop at step 15 (1.0): the alarm's one save
    assert writes == [10, 15, 20, 30]
    assert [Path(c).name for c in result.checkpoints] == ["step-000010", "step-000015", "step-000020", "step-000030"]
    marked = sorted(p.parent.name for p in (tmp_path / "run" / "checkpoints").rglob("musicrl.json"))
    assert marked == ["step-000010", "step-000015", "step-000020", "step-000030"]
    # of the saved folders, step 15's window (1.0) beats step 10's (0.9) and the later ones (0.5, -0.5)
    assert (tmp_path / "run" / "checkpoints" / "best").read_text() == "step-000015"
    assert Path(result.best_checkpoint).name == "step-000015"


def test_rewards_can_come_from_the_reward_service(tmp_path):
    from tests.utils.processes import model_server

    env = {"MUSICRL_TEXT_ADHERENCE_URI": "tiny://clap?seed=0"}
    with model_server("services.rewards", env, tmp_path, "text-adherence", timeout_s=120) as service:
        rewards = [{"reward": "text-adherence", "uri": "unused: scored by the service", "normalization": "none"}]
        config = _config(tmp_path / "run", rewards=rewards, reward_service_url=service.http_url,
                         optim={"steps": 2, "batch_size": 4, "policy_lr": 1e-4})  # fmt: skip
        train_rl(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert all(-1 <= r["reward/text-adherence/mean"] <= 1 for r in rows)
    assert rows[0]["reward/mean"] == rows[0]["reward/text-adherence/mean"]


def _one_step(config: RLConfig, value_coef: float | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """One training step from the start checkpoint: its metrics and the policy decoder's change."""
    trainer = RLTrainer.build(config)
    if value_coef is not None:
        trainer.objective.value_coef = value_coef  # scales the value loss's gradients only (a separate model)
    before = {k: v.clone() for k, v in trainer.policy.model.decoder.state_dict().items()}
    engine = GenerationEngine(trainer.policy, EngineConfig(device="cpu"))
    metrics = trainer._step(0, engine, trainer._trainable(), trainer._optimizers())
    after = trainer.policy.model.decoder.state_dict()
    return metrics, {k: after[k] - before[k] for k in before}


def test_a_huge_value_gradient_does_not_shrink_the_policy_step(tmp_path):
    # the policy's step must not depend on the value's gradient: with one joint clip, a value gradient a
    # million times larger scaled the policy's gradient down to Adam's eps, and its step with it
    config = _config(tmp_path / "run", optim={"steps": 1, "batch_size": 4, "policy_lr": 1e-3, "max_grad_norm": 1.0})
    metrics, delta = _one_step(config)
    loud_metrics, loud_delta = _one_step(config, value_coef=1e6)
    assert loud_metrics["grad_norm/value"] > 1e3 * metrics["grad_norm/value"]
    assert loud_metrics["grad_norm/policy"] == pytest.approx(metrics["grad_norm/policy"], rel=1e-6)
    assert max(d.abs().max().item() for d in delta.values()) > 1e-4  # the policy did move
    for name in delta:
        torch.testing.assert_close(loud_delta[name], delta[name], rtol=1e-5, atol=1e-9)


def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path):
    # running z-scores (their statistics carry across steps), and an alarm whose 3-step window spans the
    # interruption at step 2: both must be restored for the last steps to match
    overrides = {
        "rewards": [{"reward": "low-codes", "uri": LOW_CODES, "weight": 1.0, "normalization": "running"}],
        "held_out": {"reward": "high-codes", "uri": "analytic://high-codes?vocab_size=128", "window": 3,
                     "max_drop": 10.0},  # never fires: best is decided by the window means alone
        "checkpoint_every": 2,
    }  # fmt: skip
    optim = {"batch_size": 4, "policy_lr": 3e-3}
    whole = RLTrainer.build(_config(tmp_path / "whole", optim={"steps": 4, **optim}, **overrides))
    whole_result = whole.run()
    train_rl(_config(tmp_path / "split", optim={"steps": 2, **optim}, **overrides))
    split = RLTrainer.build(_config(tmp_path / "split", optim={"steps": 4, **optim}, **overrides))
    split_result = split.run()

    def rows(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/") and k != "trajectories_per_s"}
                for line in lines]  # fmt: skip

    assert [r["step"] for r in rows("split")] == [1, 2, 3, 4]
    for ours, theirs in zip(rows("split"), rows("whole"), strict=True):
        assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-9)
    torch.testing.assert_close(split.policy.model.decoder.state_dict(), whole.policy.model.decoder.state_dict())
    torch.testing.assert_close(split.objective.value.state_dict(), whole.objective.value.state_dict())
    assert Path(split_result.best_checkpoint).name == Path(whole_result.best_checkpoint).name == "step-000004"
    assert split.rewards.state_dict() == whole.rewards.state_dict()
