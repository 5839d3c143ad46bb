import pytest
import torch

from musicrl.rl.objective import exact_kl, reinforce_loss


def test_exact_kl_equals_torch_kl_divergence_on_random_logits():
    generator = torch.Generator().manual_seed(0)
    policy = torch.randn(3, 4, 7, 32, generator=generator, dtype=torch.float64) * 3
    reference = torch.randn(3, 4, 7, 32, generator=generator, dtype=torch.float64) * 3
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=policy), torch.distributions.Categorical(logits=reference)
    )
    torch.testing.assert_close(exact_kl(policy, reference), expected)
    assert (exact_kl(policy, policy).abs() < 1e-12).all()


def test_exact_kl_ignores_tokens_the_policy_cannot_emit():
    policy = torch.tensor([[0.0, float("-inf"), 1.0]])  # top-k removed token 1
    reference = torch.tensor([[0.5, 0.5, 0.5]])
    kl = exact_kl(policy, reference)
    assert torch.isfinite(kl).all() and kl.item() > 0


def _case(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batch, codebooks, positions, vocab = 2, 2, 4, 5
    logits = torch.randn(batch, codebooks, positions, vocab, generator=generator, dtype=torch.float64)
    reference = torch.randn(batch, codebooks, positions, vocab, generator=generator, dtype=torch.float64)
    tokens = torch.randint(0, vocab, (batch, codebooks, positions), generator=generator)
    values = torch.randn(batch, positions, generator=generator, dtype=torch.float64)
    rewards = torch.randn(batch, generator=generator, dtype=torch.float64)
    mask = torch.ones(batch, codebooks, positions, dtype=torch.bool)
    mask[:, 1, 0] = False  # the delay pattern: codebook 1 starts one step late
    mask[1, :, -1] = False  # a shorter clip
    return logits, reference, tokens, values, rewards, mask


def _loss(logits, reference, tokens, values, rewards, mask, alpha):
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    return reinforce_loss(log_probs, exact_kl(logits, reference), values, rewards, mask, alpha).loss


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_the_loss_gradient_matches_finite_differences(alpha):
    logits, reference, tokens, values, rewards, mask = _case()
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: _loss(x, reference, tokens, values, rewards, mask, alpha), (logits,), eps=1e-6, atol=1e-5
    )


def test_the_value_gets_gradient_only_from_its_own_loss():
    logits, reference, tokens, values, rewards, mask = _case()
    logits.requires_grad_(True)
    values.requires_grad_(True)
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    terms = reinforce_loss(log_probs, exact_kl(logits, reference), values, rewards, mask, 0.1)
    assert not torch.autograd.grad(terms.loss, values, retain_graph=True, allow_unused=True, materialize_grads=True)[
        0
    ].any()
    (grad,) = torch.autograd.grad(terms.value_loss, values)
    step_mask = mask.any(dim=1)
    assert (grad[~step_mask] == 0).all() and (grad[step_mask] != 0).all()


def test_masked_positions_contribute_nothing():
    logits, reference, tokens, values, rewards, mask = _case()
    changed = logits.clone()
    changed[~mask] += 100.0  # garbage outside the delay window
    first = _loss(logits, reference, tokens, values, rewards, mask, 0.5)
    second = _loss(changed, reference, tokens, values, rewards, mask, 0.5)
    torch.testing.assert_close(first, second)


def test_alpha_one_is_pure_kl_and_alpha_zero_is_pure_reinforce():
    logits, reference, tokens, values, rewards, mask = _case()
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    kl = exact_kl(logits, reference)
    only_kl = reinforce_loss(log_probs, kl, values, rewards, mask, 1.0)
    only_pg = reinforce_loss(log_probs, kl, values, rewards, mask, 0.0)
    torch.testing.assert_close(only_kl.loss, only_kl.kl)
    torch.testing.assert_close(only_pg.loss, -only_pg.policy_gradient)
