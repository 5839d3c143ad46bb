import pytest
import torch

from musicrl.config import SamplingParams
from musicrl.models.conditioning import encode_prompts
from musicrl.models.delay import delay, window_mask
from musicrl.models.engine import GenerationEngine, GenerationRequest
from musicrl.rl.policy import guided_pass, keep_top_k, token_log_probs


PROMPTS = ["rock", "a slow, soft, low drone"]
POLICIES = ["tiny://musicgen?seed=0", "toy://musicgen"]  # random weights; trained on the toy world


def _teacher_forced(engine: GenerationEngine, params: SamplingParams, codes: torch.Tensor):
    grid = delay(codes, engine.start_token_id)
    states, mask = encode_prompts(engine.model, engine.bundle.tokenizer, PROMPTS, 256)
    with torch.no_grad():
        out = guided_pass(engine.model, grid, states, mask, params)
    frames = torch.full((len(PROMPTS),), codes.shape[-1])
    return grid, out, window_mask(frames, engine.num_codebooks, grid.shape[-1])[:, :, 1:]


@pytest.mark.parametrize("uri", POLICIES)
def test_teacher_forcing_reproduces_the_served_distribution(uri: str):
    """Greedy decoding by the serving engine picks, at every real position, the argmax of the trainer's logits."""
    engine = GenerationEngine.from_uri(uri)
    greedy = SamplingParams(duration_s=0.4, temperature=0.0, guidance_scale=3.0)
    clips = engine.generate_batch([GenerationRequest(p, greedy, seed=i) for i, p in enumerate(PROMPTS)])
    codes = torch.stack([c.codes for c in clips])  # [B, K, T]
    grid, out, real = _teacher_forced(engine, SamplingParams(duration_s=0.4, temperature=1.0, top_k=0), codes)
    assert out.logits.shape == (2, 4, grid.shape[-1] - 1, engine.vocab_size)
    assert torch.equal(out.logits.argmax(-1)[real], grid[:, :, 1:][real])


@pytest.mark.parametrize("uri", POLICIES)
def test_sampled_tokens_are_likely_under_the_served_distribution_and_never_outside_top_k(uri: str):
    engine = GenerationEngine.from_uri(uri)
    params = SamplingParams(duration_s=0.4, temperature=0.99, top_k=5, guidance_scale=3.0)
    clips = engine.generate_batch([GenerationRequest(p, params, seed=i) for i, p in enumerate(PROMPTS)])
    grid, out, real = _teacher_forced(engine, params, torch.stack([c.codes for c in clips]))
    log_probs = token_log_probs(out.sampling_logits, grid[:, :, 1:])[real]
    assert torch.isfinite(log_probs).all()  # every sampled token is inside the top-5 the trainer computes
    assert log_probs.mean() > torch.log(torch.tensor(1 / 5))  # better than uniform over the kept tokens


def test_keep_top_k_keeps_ties_and_k_zero_keeps_all():
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0]])
    assert torch.isinf(keep_top_k(logits, 2)).tolist() == [[False, False, False, True]]  # the tie stays
    assert torch.equal(keep_top_k(logits, 0), logits)
