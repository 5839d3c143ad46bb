"""Continuous batching: a clip's codes do not depend on what joined or left the batch around it."""

from collections.abc import Hashable

import pytest
import torch

from musicrl.config import SamplingParams
from musicrl.errors import InvalidRequest
from musicrl.models.continuous import ContinuousBatch
from musicrl.models.engine import GenerationEngine, GenerationRequest


@pytest.fixture(scope="module", params=["tiny://musicgen?seed=0", "toy://musicgen"])
def engine(request: pytest.FixtureRequest) -> GenerationEngine:
    return GenerationEngine.from_uri(request.param)


GUIDED = SamplingParams(duration_s=0.5, temperature=1.0, top_k=250, guidance_scale=3.0)
PLAIN = SamplingParams(duration_s=0.3, temperature=0.8, top_k=20, guidance_scale=1.0)
# prompts of different token lengths: a later, longer one widens the cross-attention cache
REQUESTS = {
    "long-guided": GenerationRequest("a slow soft low drone", GUIDED, seed=1),
    "short-plain": GenerationRequest("a fast bright high melody with vinyl crackle and a long tail", PLAIN, seed=2),
    "greedy": GenerationRequest("hum", SamplingParams(duration_s=0.2, temperature=0.0, guidance_scale=2.0), seed=3),
    "tiny": GenerationRequest("drone", SamplingParams(duration_s=0.02, top_k=0, guidance_scale=1.0), seed=4),
    "late-guided": GenerationRequest("a high bright melody", SamplingParams(duration_s=0.4, guidance_scale=3.0), 5),
}

ARRIVAL_PATTERNS = {
    "all at once": {0: list(REQUESTS)},
    "one per step": {i: [key] for i, key in enumerate(REQUESTS)},
    "joining mid-clip": {0: ["long-guided"], 7: ["short-plain", "greedy"], 12: ["tiny"], 20: ["late-guided"]},
    # the batch empties after "tiny" (1 frame: K steps), then starts again from nothing
    "after an empty batch": {0: ["tiny"], 9: ["late-guided", "greedy"], 10: ["short-plain"], 30: ["long-guided"]},
    "two joins in one step": {0: ["greedy"], 3: ["long-guided"], 4: ["late-guided", "tiny", "short-plain"]},
}


def run(engine: GenerationEngine, arrivals: dict[int, list[str]]) -> dict[Hashable, torch.Tensor]:
    """Drive a ContinuousBatch: at step s, the requests of arrivals[s] join (one join call per request)."""
    batch = ContinuousBatch(engine)
    codes: dict[Hashable, torch.Tensor] = {}
    step, last = 0, max(arrivals)
    while step <= last or batch.size:
        for key in arrivals.get(step, []):
            batch.join([REQUESTS[key]], [key])
        codes.update((f.key, f.codes) for f in batch.step())
        step += 1
    return codes


@pytest.fixture(scope="module")
def alone(engine: GenerationEngine) -> dict[str, torch.Tensor]:
    return {key: engine.sample_codes([request])[0] for key, request in REQUESTS.items()}


@pytest.mark.parametrize("pattern", list(ARRIVAL_PATTERNS))
def test_each_clip_has_the_codes_it_has_alone_whatever_joins_and_leaves(engine, alone, pattern):
    codes = run(engine, ARRIVAL_PATTERNS[pattern])
    assert set(codes) == set(REQUESTS)
    for key, expected in alone.items():
        assert codes[key].shape == expected.shape, key
        assert torch.equal(codes[key], expected), f"{key} differs when batched {pattern!r}"


def test_requests_joining_together_in_one_call_match_alone_too(engine, alone):
    batch = ContinuousBatch(engine)
    batch.join(list(REQUESTS.values()), list(REQUESTS))
    codes = {}
    while batch.size:
        codes.update((f.key, f.codes) for f in batch.step())
    assert all(torch.equal(codes[key], alone[key]) for key in REQUESTS)


def test_a_finished_request_leaves_at_once_and_the_cache_keeps_only_what_the_rest_need(engine):
    batch = ContinuousBatch(engine)
    batch.join([REQUESTS["tiny"]], ["tiny"])  # 1 frame: K steps
    batch.join([REQUESTS["long-guided"]], ["long-guided"])
    finished = []
    for _ in range(engine.num_codebooks):
        finished += [f.key for f in batch.step()]
    assert finished == ["tiny"] and batch.keys == ["long-guided"]
    assert batch.size == 1
    # the remaining request's own columns only: it joined at column 0, so nothing was cropped, and it has
    # taken K steps
    assert batch._cache_length() == engine.num_codebooks


def test_a_clip_too_long_for_the_model_is_refused_and_the_batch_keeps_running(engine, alone):
    batch = ContinuousBatch(engine)
    batch.join([REQUESTS["greedy"]], ["greedy"])
    with pytest.raises(InvalidRequest, match="at most"):
        batch.join([GenerationRequest("x", SamplingParams(duration_s=10_000.0), seed=0)], ["too long"])
    codes = {}
    while batch.size:
        codes.update((f.key, f.codes) for f in batch.step())
    assert torch.equal(codes["greedy"], alone["greedy"])


def test_joining_requests_take_their_first_step_in_the_batch_step_not_in_a_decoder_pass_of_their_own(engine):
    passes = []
    hook = engine.model.decoder.register_forward_hook(lambda module, args, output: passes.append(1))
    try:
        batch = ContinuousBatch(engine)
        batch.join([REQUESTS["long-guided"]], ["long-guided"])
        batch.step()
        batch.join([REQUESTS["short-plain"], REQUESTS["greedy"]], ["short-plain", "greedy"])
        assert len(passes) == 1  # the step only: a join runs no decoder pass
        batch.step()
    finally:
        hook.remove()
    assert len(passes) == 2
    assert batch._cache_length() == 2  # the joiners' first column is the batch's second one
