"""The fused, chunked log-prob/KL/entropy pass against the materialised formula it replaces (issue 9)."""

import pytest
import torch

from musicrl.rl.objective import exact_kl, fused_token_terms, reinforce_loss
from musicrl.rl.policy import GuidedStates, entropy, keep_top_k, token_log_probs


# B=2, K=3, P=7 (prime, so chunk sizes 2, 3 and 5 leave a short last chunk), V=11, D=5: small enough for
# float64 gradcheck in well under a second
BATCH, CODEBOOKS, POSITIONS, VOCAB, WIDTH = 2, 3, 7, 11, 5
SCALE, TEMPERATURE = 3.0, 0.9


def _case(seed: int = 0, top_k: int = 0) -> dict[str, torch.Tensor]:
    """Random states and heads, and tokens sampled from their guided top-k distribution, as a rollout's."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    case = {
        "cond": randn(BATCH, POSITIONS, WIDTH),
        "uncond": randn(BATCH, POSITIONS, WIDTH),
        "weight": randn(CODEBOOKS, VOCAB, WIDTH),
        "reference": randn(BATCH, CODEBOOKS, POSITIONS, VOCAB) * 2,
        "values": randn(BATCH, POSITIONS),
        "rewards": randn(BATCH),
    }
    probs = torch.softmax(keep_top_k(_guided_logits(case["cond"], case["uncond"], case["weight"]), top_k), dim=-1)
    tokens = torch.multinomial(probs.reshape(-1, VOCAB), 1, generator=generator).reshape(probs.shape[:-1])
    mask = torch.ones(BATCH, CODEBOOKS, POSITIONS, dtype=torch.bool)
    for k in range(1, CODEBOOKS):
        mask[:, k, :k] = False  # the delay pattern: codebook k opens k steps late
    mask[1, :, -2:] = False  # a shorter clip
    tokens[~mask] = VOCAB  # outside the window: the start token, which has no logit
    return {**case, "tokens": tokens, "mask": mask}


def _guided_logits(cond, uncond, weight):
    cond_logits = torch.einsum("bpd,kvd->bkpv", cond, weight)  # [B, K, P, V]
    uncond_logits = torch.einsum("bpd,kvd->bkpv", uncond, weight)  # [B, K, P, V]
    return (uncond_logits + (cond_logits - uncond_logits) * SCALE) / TEMPERATURE


def _materialised_loss(case, cond, uncond, weight, top_k, alpha=0.3):
    """The formula before issue 9: guided logits of both passes, then log-softmax per term."""
    logits = _guided_logits(cond, uncond, weight)  # [B, K, P, V]
    log_probs = token_log_probs(keep_top_k(logits, top_k), case["tokens"])
    log_probs = torch.where(case["mask"], log_probs, torch.zeros_like(log_probs))  # no action outside the window
    kl = exact_kl(logits, case["reference"])
    terms = reinforce_loss(log_probs, kl, case["values"], case["rewards"], case["mask"], alpha)
    return terms, entropy(logits)


def _fused_loss(case, cond, uncond, weight, top_k, chunk, alpha=0.3):
    states = GuidedStates(hidden=torch.lerp(uncond, cond, SCALE) / TEMPERATURE, weight=weight, cond_hidden=cond)
    reference = case["reference"]
    token_terms = fused_token_terms(
        states.logits, lambda a, b: reference[:, :, a:b], case["tokens"], case["mask"], top_k, chunk
    )
    terms = reinforce_loss(token_terms.log_probs, token_terms.kl, case["values"], case["rewards"], case["mask"], alpha)
    return terms, token_terms.entropy


@pytest.mark.parametrize("top_k", [0, 4])
@pytest.mark.parametrize("chunk", [1, 3, 5, POSITIONS, 64])
def test_the_fused_loss_equals_the_materialised_formula_in_value_and_gradient(top_k, chunk):
    case = _case(top_k=top_k)
    leaves = [case[name].clone().requires_grad_(True) for name in ("cond", "uncond", "weight")]
    expected, expected_entropy = _materialised_loss(case, *leaves, top_k)
    expected_grads = torch.autograd.grad(expected.loss, leaves)
    actual, actual_entropy = _fused_loss(case, *leaves, top_k, chunk)
    actual_grads = torch.autograd.grad(actual.loss, leaves)
    torch.testing.assert_close(actual.loss, expected.loss)
    torch.testing.assert_close(actual.kl, expected.kl)
    torch.testing.assert_close(actual.policy_gradient, expected.policy_gradient)
    torch.testing.assert_close(actual_entropy, expected_entropy)
    for got, want in zip(actual_grads, expected_grads, strict=True):
        assert want.abs().max() > 1e-3  # the comparison is not between two zeros
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("top_k", [0, 4])
def test_the_fused_loss_gradient_matches_finite_differences(top_k):
    case = _case(1, top_k)
    leaves = [case[name].clone().requires_grad_(True) for name in ("cond", "uncond", "weight")]
    assert torch.autograd.gradcheck(
        lambda *xs: _fused_loss(case, *xs, top_k, chunk=3)[0].loss, leaves, eps=1e-6, atol=1e-5
    )


def test_a_start_token_outside_the_top_k_does_not_turn_the_loss_into_nan():
    """Before the fused pass, a masked position's start token (read as V − 1) outside the top-k gave
    log π = −inf, and −inf · 0 made the whole loss NaN."""
    case = _case(2)
    logits = torch.zeros(BATCH, CODEBOOKS, POSITIONS, VOCAB, dtype=torch.float64)
    logits[..., -1] = -5.0  # token V − 1 is the least likely: outside any top-k < V
    mask = case["mask"]
    tokens = torch.where(mask, 0, VOCAB)  # real tokens inside the top-k, the start token outside the window
    materialised = token_log_probs(keep_top_k(logits, 4), tokens)
    assert torch.isinf(materialised[~mask]).all()  # the trap the fused pass avoids
    fused = fused_token_terms(lambda a, b: logits[:, :, a:b], lambda a, b: logits[:, :, a:b], tokens, mask, 4, 3)
    assert torch.isfinite(fused.log_probs).all() and (fused.log_probs[~mask] == 0).all()
    loss = reinforce_loss(fused.log_probs, fused.kl, case["values"], case["rewards"], mask, 0.3).loss
    assert torch.isfinite(loss)


def test_the_kl_is_zero_at_the_reference_and_the_entropy_is_detached():
    case = _case(3)
    weight = case["weight"].clone().requires_grad_(True)
    states = GuidedStates(hidden=case["cond"], weight=weight, cond_hidden=case["cond"])
    terms = fused_token_terms(states.logits, states.logits, case["tokens"], case["mask"], 0, 4)
    assert terms.kl.abs().max() < 1e-12  # Σ p·(log p − log q) cancels exactly when p = q
    assert terms.log_probs.requires_grad and terms.kl.requires_grad and not terms.entropy.requires_grad
    assert terms.log_probs.shape == terms.kl.shape == terms.entropy.shape == (BATCH, CODEBOOKS, POSITIONS)
