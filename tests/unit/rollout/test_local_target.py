"""The local target's process bookkeeping: a replaced generator outlives its promotion by a drain, then stops."""

import asyncio
import json
import subprocess
import sys
import time

from musicrl.rollout.config import LocalTargetConfig
from musicrl.rollout.local_target import LocalTarget, stop_canaries
from musicrl.rollout.routing import PolicyEndpoint


def _generator_stand_in(state, rollout_id: str, url: str) -> subprocess.Popen:
    """A process recorded as a canary this target started (what _spawn writes), in a session of its own."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    (state / "canaries").mkdir(parents=True, exist_ok=True)
    (state / "canaries" / f"{rollout_id}.json").write_text(json.dumps({"pid": process.pid, "url": url}))
    return process


def test_a_promotion_stops_the_replaced_generator_only_after_the_drain(tmp_path):
    old = _generator_stand_in(tmp_path, "r1", "127.0.0.1:18180")
    target = LocalTarget(LocalTargetConfig(state_dir=str(tmp_path), retire_after_s=0.5))
    stable = PolicyEndpoint("127.0.0.1:18180", "generator", "file:///v1", "v1")
    canary = PolicyEndpoint("127.0.0.1:18182", "generator", "file:///v2", "v2")

    async def promote_then_wait() -> tuple[PolicyEndpoint, bool]:
        promoted = await target.promote(canary, stable)
        serving_during_drain = old.poll() is None  # the gateway may still be sending it clips
        await asyncio.sleep(1.5)
        return promoted, serving_during_drain

    try:
        promoted, serving_during_drain = asyncio.run(promote_then_wait())
        assert promoted == canary and serving_during_drain
        assert old.wait(timeout=5) is not None and not (tmp_path / "canaries" / "r1.json").exists()
    finally:
        old.kill()


def test_stopping_the_platform_stops_every_canary_it_started(tmp_path):
    processes = [_generator_stand_in(tmp_path, f"r{i}", f"127.0.0.1:{18180 + 2 * i}") for i in range(2)]
    try:
        stopped = stop_canaries(tmp_path)
        assert sorted(stopped) == sorted(p.pid for p in processes)
        deadline = time.monotonic() + 5
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(p.poll() is not None for p in processes)
        assert list((tmp_path / "canaries").iterdir()) == [] and stop_canaries(tmp_path) == []
    finally:
        for p in processes:
            p.kill()
