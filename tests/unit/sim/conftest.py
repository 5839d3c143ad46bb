"""A small clip pool from the real engine, shared by the simulated-listener tests."""

import pytest

from musicrl.sim.pool import ClipPool, PoolSpec, generate_pool


# 24 prompts x 6 clips of 1 s from the tiny random policy: ~5 s to generate, 360 within-prompt pairs
POOL_SPEC = PoolSpec("tiny://musicgen?seed=0", num_prompts=24, clips_per_prompt=6, duration_s=1.0)


@pytest.fixture(scope="session")
def tiny_pool(tmp_path_factory: pytest.TempPathFactory) -> ClipPool:
    return generate_pool(POOL_SPEC, cache_dir=tmp_path_factory.mktemp("pool-cache"))
