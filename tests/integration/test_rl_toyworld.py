"""The RL trainer on the toy world's trained policy, whose word-level T5 and 16 kHz codec the tiny one lacks.

The shipped stage config (configs/rl/toy-r.yaml) is read and run with its rewards swapped for the analytic
share of low codebook-0 codes, which a few steps can move. Whether a full MusicRL-R run makes the music follow
its prompts better is measured by ``musicrl toyworld judge`` (README, "The toy music world"), not in CI.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from musicrl.config import SamplingParams
from musicrl.models.engine import GenerationEngine, GenerationRequest
from musicrl.rewards.mixture import Normalization
from musicrl.rl.config import RewardSpec, RLConfig
from musicrl.rl.trainer import train_rl
from musicrl.toyworld.evaluate import held_out_prompts
from tests.utils.processes import REPO_ROOT


pytestmark = pytest.mark.slow

TOY_R = REPO_ROOT / "configs" / "rl" / "toy-r.yaml"
PROMPTS = [e.caption.text for e in held_out_prompts(0, 24)]


def _low_code_share(uri: str) -> np.ndarray:
    engine = GenerationEngine.from_uri(uri)
    params = SamplingParams(duration_s=0.5, temperature=0.99, top_k=0)
    clips = engine.generate_batch([GenerationRequest(p, params, seed=100 + i) for i, p in enumerate(PROMPTS)])
    return np.array([(c.codes[0] < engine.vocab_size // 2).float().mean().item() for c in clips])


def test_a_short_run_of_the_toy_stage_config_raises_its_reward_on_held_out_captions(tmp_path: Path) -> None:
    shipped = RLConfig.from_file(TOY_R)
    config = dataclasses.replace(
        shipped,
        rewards=(RewardSpec("low-codes", "analytic://low-codes?vocab_size=256", 1.0, Normalization.NONE),),
        sampling=dataclasses.replace(shipped.sampling, duration_s=0.5),
        optim=dataclasses.replace(shipped.optim, steps=24, batch_size=16, policy_lr=1e-3),
        checkpoint_every=24,
        out_url=str(tmp_path / "run"),
    )

    result = train_rl(config)

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 25)) and rows[-1]["kl"] < 8.0
    before, after = _low_code_share(shipped.policy_uri), _low_code_share(result.checkpoints[-1])
    assert after.mean() > before.mean() + 0.15, (before.mean(), after.mean())
    metadata = json.loads((Path(result.checkpoints[-1]) / "musicrl.json").read_text())
    assert metadata["parent_uri"] == "toy://musicgen" and metadata["extra"]["stage"] == "R"
