"""RL checkpoints: how many a run writes, where ``best`` points, and that a failed save marks nothing."""

import dataclasses
import math
import random
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from musicrl.models.checkpoint import METADATA_FILE
from musicrl.models.loading import MusicgenBundle
from musicrl.rl import checkpoints
from musicrl.rl.alarm import OverOptimisationAlarm
from musicrl.rl.config import RLConfig


CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "rl"


def _config(out: str, **overrides) -> RLConfig:
    data = {"stage": "x", "policy_uri": "tiny://musicgen?seed=0", "prompts": ["a"], "out_url": out,
            "rewards": [{"reward": "loudness", "uri": "analytic://loudness"}]}  # fmt: skip
    return RLConfig.from_wire({**data, **overrides})


def _rises_then_falls(steps: int, peak: int) -> list[float]:
    return [0.01 * s if s <= peak else 0.01 * peak - 0.01 * (s - peak) for s in range(1, steps + 1)]


def test_a_rise_then_a_fall_costs_the_periodic_checkpoints_plus_one(tmp_path):
    # the shipped MusicRL-R alarm (window 20) and checkpoint period (100), on a 200-step run whose held-out
    # reward peaks at step 110: saving on every improvement and every alarming step wrote ~170 checkpoints
    shipped = RLConfig.from_file(CONFIGS / "musicrl-r.yaml")
    config = dataclasses.replace(shipped, optim=dataclasses.replace(shipped.optim, steps=200))
    assert config.held_out is not None and config.held_out.window == 20
    alarm = OverOptimisationAlarm(config.held_out.window, config.held_out.max_drop)
    best = checkpoints.BestCheckpoint()
    saved, pointed, fired_at = [], [], []
    for step, value in enumerate(_rises_then_falls(200, peak=110), start=1):
        fired = alarm.update(step, value)
        if fired:
            fired_at.append(step)
        if checkpoints.is_due(step, config, fired):
            saved.append(step)
            if best.offer(checkpoints.step_name(step), step, alarm.window_mean):
                pointed.append(step)
    assert len(fired_at) == 1 and fired_at[0] > 110  # once, on the transition into the drop
    assert saved == [100, fired_at[0], 200]
    # the alarm's checkpoint, a max_drop below the peak window, still beats step 100's (0.905): it is the
    # best of the folders that exist, which is what the pointer may name
    assert pointed == [100, fired_at[0]]
    assert best.name == checkpoints.step_name(fired_at[0])


def test_best_points_only_at_saved_checkpoints_with_a_full_window():
    best = checkpoints.BestCheckpoint()
    assert not best.offer("step-000001", 1, None)  # no full window yet: nothing to compare
    assert best.offer("step-000002", 2, 0.5)
    assert not best.offer("step-000003", 3, 0.5)  # a tie keeps the earlier (less trained) checkpoint
    assert best.offer("step-000004", 4, 0.7) and best.name == "step-000004"
    restored = checkpoints.BestCheckpoint()
    restored.load_state_dict(best.state_dict())
    assert restored == best


class _Crash(RuntimeError):
    pass


def _marked(root: Path) -> list[str]:
    return sorted(p.parent.name for p in root.rglob(METADATA_FILE))


def test_a_crash_mid_save_marks_no_folder_and_resumes_from_the_previous(tmp_path, tiny_musicgen_bundle, monkeypatch):
    run, value = tmp_path / "run", torch.nn.Linear(2, 1)
    optimizers = [torch.optim.AdamW(value.parameters(), lr=0.1)]
    config = _config(str(run))
    checkpoints.save(run, 1, tiny_musicgen_bundle, value, optimizers, config, {"extra": 1})

    def crash(*args, **kwargs):
        raise _Crash("disk full while writing the trainer state")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(_Crash):
        checkpoints.save(run, 2, tiny_musicgen_bundle, value, optimizers, config, {"extra": 2})
    monkeypatch.undo()

    assert _marked(run) == ["step-000001"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000001"]  # no leftovers
    assert checkpoints.read_pointer(run, checkpoints.LATEST) == "step-000001"
    state = checkpoints.resume(run, tiny_musicgen_bundle.model, value, optimizers)
    assert state is not None and state["step"] == 1 and state["extra"] == 1


def test_a_run_on_an_object_store_saves_and_resumes(
    memory_filesystem: fsspec.AbstractFileSystem, tiny_musicgen_bundle: MusicgenBundle, monkeypatch
):
    run, value = "memory://runs/rl", torch.nn.Linear(2, 1)
    optimizers = [torch.optim.AdamW(value.parameters(), lr=0.1)]
    config = _config(run)
    folder = checkpoints.save(run, 3, tiny_musicgen_bundle, value, optimizers, config, {"extra": 3})
    checkpoints.write_pointer(run, checkpoints.BEST, checkpoints.step_name(3))
    assert folder == "memory://runs/rl/checkpoints/step-000003"
    assert checkpoints.read_pointer(run, checkpoints.BEST) == "step-000003"

    put_file = type(memory_filesystem).put_file

    def failing_put_file(self, lpath, rpath, *args, **kwargs):
        if rpath.endswith("trainer_state.pt"):
            raise _Crash("connection reset")
        return put_file(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(type(memory_filesystem), "put_file", failing_put_file)
    with pytest.raises(_Crash):
        checkpoints.save(run, 4, tiny_musicgen_bundle, value, optimizers, config, {"extra": 4})
    monkeypatch.undo()
    assert not memory_filesystem.exists(f"/runs/rl/checkpoints/step-000004/{METADATA_FILE}")
    assert checkpoints.read_pointer(run, checkpoints.LATEST) == "step-000003"

    with torch.no_grad():
        value.weight.fill_(math.pi)  # resume must bring the saved weights back
    state = checkpoints.resume(run, tiny_musicgen_bundle.model, value, optimizers)
    assert state is not None and state["step"] == 3 and state["extra"] == 3
    assert not torch.any(value.weight == math.pi)


def test_rng_states_round_trip():
    saved = checkpoints.rng_states()
    expected = (torch.rand(3), np.random.rand(), random.random())
    checkpoints.restore_rng_states(saved, rank=0)
    assert torch.equal(torch.rand(3), expected[0])
    assert (np.random.rand(), random.random()) == expected[1:]


def test_a_best_folder_from_an_older_run_is_kept_aside_when_best_becomes_a_pointer(tmp_path):
    legacy = tmp_path / "run" / "checkpoints" / "best"
    legacy.mkdir(parents=True)
    (legacy / METADATA_FILE).write_text("{}")
    checkpoints.write_pointer(tmp_path / "run", checkpoints.BEST, "step-000010")
    assert checkpoints.read_pointer(tmp_path / "run", checkpoints.BEST) == "step-000010"
    kept = [p for p in legacy.parent.iterdir() if p.name.startswith("best-copy-")]
    assert len(kept) == 1 and (kept[0] / METADATA_FILE).exists()
