import pytest
import torch

from musicrl.models.sampling import candidate_count, classifier_free_guidance, draw_uniforms, sample_tokens


def _logits(rows: int = 3, codebooks: int = 2, vocab: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn((rows, codebooks, vocab), generator=torch.Generator().manual_seed(seed))


def test_guidance_interpolates_between_unconditional_and_conditional():
    cond, uncond = _logits(seed=1), _logits(seed=2)
    scale = torch.tensor([1.0, 0.0, 3.0])
    guided = classifier_free_guidance(cond, uncond, scale)
    torch.testing.assert_close(guided[0], cond[0])
    torch.testing.assert_close(guided[1], uncond[1])
    torch.testing.assert_close(guided[2], uncond[2] + 3.0 * (cond[2] - uncond[2]))


def test_uniforms_depend_only_on_the_seed():
    first = draw_uniforms(7, steps=10, num_codebooks=4)
    assert first.shape == (10, 4)
    assert torch.equal(first, draw_uniforms(7, steps=10, num_codebooks=4))
    assert not torch.equal(first, draw_uniforms(8, steps=10, num_codebooks=4))
    # a longer clip with the same seed starts with the same noise
    assert torch.equal(first, draw_uniforms(7, steps=1600, num_codebooks=4)[:10])


def test_zero_temperature_is_argmax():
    logits = _logits()
    tokens = sample_tokens(logits, torch.zeros(3), torch.zeros(3, dtype=torch.long), torch.rand(3, 2).double())
    assert torch.equal(tokens, logits.argmax(dim=-1))


def test_top_k_never_samples_outside_the_k_best():
    logits = _logits(rows=2, codebooks=3, vocab=32)
    top_k = torch.tensor([1, 4])
    allowed = logits.topk(4, dim=-1).indices  # [2, 3, 4]
    for u in torch.linspace(0, 1 - 1e-12, 101, dtype=torch.float64):
        tokens = sample_tokens(logits, torch.ones(2), top_k, torch.full((2, 3), float(u), dtype=torch.float64))
        assert torch.equal(tokens[0], allowed[0, :, 0])
        assert (tokens[1][:, None] == allowed[1]).any(dim=-1).all()


def test_extreme_uniforms_never_pick_a_filtered_token():
    logits = torch.full((1, 1, 8), -1e9)
    logits[0, 0, 3] = 0.0  # one token with all the mass, neighbours filtered by top-k
    logits[0, 0, 5] = -0.5
    for u in (0.0, 1e-300, 0.5, 1 - 1e-16, 0.9999999999999999):
        token = sample_tokens(logits, torch.ones(1), torch.tensor([2]), torch.tensor([[u]], dtype=torch.float64))
        assert int(token) in (3, 5)


def test_sampling_frequencies_follow_the_tempered_softmax():
    vocab, draws = 6, 20_000
    logits = torch.linspace(-1, 1, vocab).expand(draws, 1, vocab).contiguous()
    uniforms = torch.rand((draws, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for temperature in (0.5, 1.0, 2.0):
        tokens = sample_tokens(
            logits, torch.full((draws,), temperature), torch.zeros(draws, dtype=torch.long), uniforms
        )
        observed = torch.bincount(tokens.flatten(), minlength=vocab).double() / draws
        expected = torch.softmax(torch.linspace(-1, 1, vocab).double() / temperature, dim=-1)
        assert torch.allclose(observed, expected, atol=0.015), (temperature, observed, expected)


@pytest.mark.parametrize("top_k", [0, 5, 100])
def test_top_k_of_zero_or_above_vocab_keeps_everything(top_k):
    logits = torch.zeros(1, 1, 5)  # uniform: every token reachable
    seen = set()
    for u in torch.linspace(0, 0.999, 50, dtype=torch.float64):
        seen.add(int(sample_tokens(logits, torch.ones(1), torch.tensor([top_k]), u.reshape(1, 1))))
    assert seen == set(range(5))


def test_a_row_samples_among_exactly_its_k_largest_whatever_the_candidate_bound():
    logits = _logits(rows=2, codebooks=3, vocab=32, seed=3)
    logits[:, :, 7] = logits[:, :, 9] = logits.max() + 1.0  # a tie at the top
    logits[0, 0, 20] = logits[0, 0, 21] = logits[0, 0].topk(4).values[-1]  # a tie that straddles the k-th
    top_k = torch.tensor([4, 0])
    for u in torch.linspace(0, 1 - 1e-12, 201, dtype=torch.float64):
        noise = torch.full((2, 3), float(u), dtype=torch.float64)
        alone = sample_tokens(logits, torch.ones(2), top_k, noise)
        for bound in (32, 40):  # row 1 keeps everything, so the bound is the vocabulary at least
            assert torch.equal(sample_tokens(logits, torch.ones(2), top_k, noise, candidates=bound), alone)
        assert torch.equal(sample_tokens(logits[:1], torch.ones(1), top_k[:1], noise[:1], candidates=4), alone[:1])
        assert torch.equal(sample_tokens(logits[:1], torch.ones(1), top_k[:1], noise[:1], candidates=9), alone[:1])
        # the tie at the k-th goes to the lower id: 20 may be drawn, 21 never
        assert int(alone[0, 0]) != 21


def test_top_k_frequencies_follow_the_softmax_of_the_k_largest():
    vocab, draws, k = 8, 20_000, 3
    base = torch.tensor([0.3, -1.0, 1.2, 0.0, 0.9, -0.4, 0.5, 0.1])
    logits = base.expand(draws, 1, vocab).contiguous()
    uniforms = torch.rand((draws, 1), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tokens = sample_tokens(logits, torch.ones(draws), torch.full((draws,), k), uniforms, candidates=k)
    observed = torch.bincount(tokens.flatten(), minlength=vocab).double() / draws
    expected = torch.zeros(vocab, dtype=torch.float64)
    best = base.topk(k).indices
    expected[best] = torch.softmax(base[best].double(), dim=-1)
    assert torch.allclose(observed, expected, atol=0.015), (observed, expected)


def test_sampling_reads_nothing_back_from_the_device():
    # meta tensors have shapes but no values: any host read (.item(), int(), .any(), .tolist()) raises
    meta = torch.device("meta")
    logits = torch.empty((3, 4, 64), device=meta)
    temperature = torch.empty(3, device=meta)
    top_k = torch.empty(3, dtype=torch.long, device=meta)
    uniforms = torch.empty((3, 4), dtype=torch.float64, device=meta)
    assert sample_tokens(logits, temperature, top_k, uniforms, candidates=5).shape == (3, 4)
    with pytest.raises((RuntimeError, NotImplementedError)):
        sample_tokens(logits, temperature, top_k, uniforms)  # without the bound it must read top_k


@pytest.mark.parametrize(("top_ks", "expected"), [([5, 250, 0], 2048), ([5, 250], 250), ([3000], 2048), ([], 2048)])
def test_candidate_count_is_the_largest_k_and_the_vocabulary_for_zero(top_ks, expected):
    assert candidate_count(top_ks, vocab=2048) == expected
