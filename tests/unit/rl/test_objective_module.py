"""RLObjective on the tiny MusicGen: the fused pass, checkpointing and autocast against the materialised path."""

import copy

import pytest
import torch

from musicrl.config import EngineConfig, SamplingParams
from musicrl.models.conditioning import encode_prompts
from musicrl.models.delay import delay, window_mask
from musicrl.models.engine import GenerationEngine, GenerationRequest
from musicrl.models.loading import MusicgenBundle, load_musicgen
from musicrl.rl.compute import ComputeConfig
from musicrl.rl.objective_module import RLObjective, StepInputs
from musicrl.rl.policy import guided_pass, guided_states
from musicrl.rl.value import SeparateValueModel, ValueHead
from tests.utils.tiny_models import TINY_MUSICGEN_URI


PROMPTS = ["rock", "ambient pads and piano"]
FRAMES = 9  # 9 frames + 4 codebooks: P = 12 predicted positions, so chunks of 5 leave a short last chunk
PARAMS = SamplingParams(duration_s=0.2, temperature=0.99, top_k=0, guidance_scale=3.0)


def _policy_and_reference() -> tuple[MusicgenBundle, MusicgenBundle]:
    policy = load_musicgen(TINY_MUSICGEN_URI)
    policy.model.decoder.requires_grad_(True)
    reference = load_musicgen(TINY_MUSICGEN_URI)
    with torch.no_grad():  # a reference the policy has moved away from, so the KL and its gradient are not 0
        for parameter in reference.model.decoder.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    return policy, reference


def _codes(policy: MusicgenBundle, params: SamplingParams) -> torch.Tensor:
    """Codes [B, K, T] a rollout could hold: random for the full vocabulary, sampled by the engine under top-k
    (a random code outside the top-k has probability 0, and its log-probability is −inf)."""
    if params.top_k == 0:
        vocab = policy.model.config.decoder.vocab_size
        return torch.randint(0, vocab, (len(PROMPTS), 4, FRAMES), generator=torch.Generator().manual_seed(0))
    engine = GenerationEngine(policy, EngineConfig())
    clips = engine.generate_batch([GenerationRequest(p, params, seed=i) for i, p in enumerate(PROMPTS)])
    return torch.stack([c.codes for c in clips]).clone()  # [B, K, T]: out of inference mode


def _inputs(policy: MusicgenBundle, reference: MusicgenBundle, objective: RLObjective, materialise: bool):
    vocab = policy.model.config.decoder.vocab_size
    codes = _codes(policy, objective.params)  # [B, K, T]
    frames = codes.shape[-1]
    grid = delay(codes, vocab)  # [B, K, L]
    token_mask = window_mask(torch.full((len(PROMPTS),), frames), 4, grid.shape[-1])[:, :, 1:]  # [B, K, P]
    with torch.no_grad():
        states, mask = encode_prompts(policy.model, policy.tokenizer, PROMPTS, 256)
        ref_states, ref_mask = encode_prompts(reference.model, reference.tokenizer, PROMPTS, 256)
        if materialise:
            ref = guided_pass(reference.model, grid, ref_states, ref_mask, objective.params).logits
        else:
            ref = objective.reference_states(reference.model, grid, ref_states, ref_mask)
    return StepInputs(grid, token_mask, states, mask, ref, torch.tensor([1.0, -0.5]))


def _loss_and_grads(compute: ComputeConfig, separate=False, materialise_reference=False, params=PARAMS):
    policy, reference = _policy_and_reference()
    value = SeparateValueModel(policy.model) if separate else ValueHead(policy.model.config.decoder.hidden_size)
    with torch.no_grad():  # a non-zero value head, so advantages differ per step
        for parameter in value.head.parameters() if separate else value.parameters():
            parameter.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
    objective = RLObjective(policy.model, value, params, alpha=0.3, value_coef=0.5, compute=compute)
    out = objective(_inputs(policy, reference, objective, materialise_reference))
    out.total.backward()
    grads = {name: p.grad.clone() for name, p in objective.named_parameters() if p.requires_grad}
    return out, grads


@pytest.fixture(scope="module")
def materialised():
    """The path before issue 9: full logits for the policy and the reference."""
    return _loss_and_grads(ComputeConfig(fused=False), materialise_reference=True)


@pytest.mark.parametrize("chunk", [1, 5, 12, 64])
def test_the_fused_step_equals_the_materialised_step_in_loss_and_gradient(materialised, chunk):
    expected, expected_grads = materialised
    actual, actual_grads = _loss_and_grads(ComputeConfig(chunk_positions=chunk))
    torch.testing.assert_close(actual.total, expected.total)
    torch.testing.assert_close(actual.terms.kl, expected.terms.kl)
    torch.testing.assert_close(actual.entropy, expected.entropy)
    assert expected.terms.kl > 1e-4  # the reference differs, so the KL's gradient is part of the comparison
    assert actual_grads.keys() == expected_grads.keys()
    for name, want in expected_grads.items():
        torch.testing.assert_close(actual_grads[name], want, rtol=1e-4, atol=1e-6, msg=name)
    heads = [name for name in actual_grads if "lm_heads" in name]
    assert heads and all(actual_grads[name].abs().max() > 0 for name in heads)  # the heads learn through the fusion


def test_the_fused_step_takes_either_form_of_reference_and_top_k(materialised):
    top_k = SamplingParams(duration_s=0.2, temperature=0.99, top_k=7, guidance_scale=3.0)
    fused, fused_grads = _loss_and_grads(ComputeConfig(chunk_positions=5), materialise_reference=True, params=top_k)
    assert torch.isfinite(fused.total) and all(torch.isfinite(g).all() for g in fused_grads.values())
    unfused, _ = _loss_and_grads(ComputeConfig(fused=False), materialise_reference=True, params=top_k)
    # the materialised path reads each masked start token as V − 1, whose top-7 log-probability is −inf, and
    # −inf · 0 is NaN: before the fused pass, any top-k run trained on a NaN loss
    assert torch.isnan(unfused.total)
    torch.testing.assert_close(fused.terms.kl, unfused.terms.kl)  # the KL is over the full vocabulary


def test_no_full_size_logits_are_kept_for_backward(materialised):
    """The fused pass keeps no [B, K, P, V] tensor for backward; the materialised one keeps several."""
    policy, reference = _policy_and_reference()
    full = len(PROMPTS) * 4 * (FRAMES + 3) * policy.model.config.decoder.vocab_size

    def saved_full_size(compute: ComputeConfig) -> int:
        objective = RLObjective(policy.model, ValueHead(64), PARAMS, 0.3, 0.5, compute=compute)
        inputs = _inputs(policy, reference, objective, materialise=False)
        sizes: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            objective(inputs)
        return sum(size >= full for size in sizes)

    assert saved_full_size(ComputeConfig(fused=False)) >= 4
    assert saved_full_size(ComputeConfig(chunk_positions=5)) == 0


def test_checkpointing_the_decoders_keeps_the_gradient_and_the_modules():
    expected, expected_grads = _loss_and_grads(ComputeConfig(), separate=True)
    policy, reference = _policy_and_reference()
    keys = set(policy.model.state_dict())
    value = SeparateValueModel(policy.model)
    objective = RLObjective(policy.model, value, PARAMS, 0.3, 0.5, compute=ComputeConfig(checkpoint_decoder=True))
    with torch.no_grad():
        for parameter in value.head.parameters():
            parameter.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
    inputs = _inputs(policy, reference, objective, materialise=False)
    layers = list(policy.model.decoder.model.decoder.layers)
    sizes: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        out = objective(inputs)
    out.total.backward()
    torch.testing.assert_close(out.total, expected.total)
    for name, parameter in objective.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert list(policy.model.decoder.model.decoder.layers) == layers  # the wrappers are gone after the pass
    assert set(policy.model.state_dict()) == keys  # so a saved checkpoint has the usual names
    unchecked = RLObjective(policy.model, copy.deepcopy(value), PARAMS, 0.3, 0.5, compute=ComputeConfig())
    unchecked_sizes: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: unchecked_sizes.append(t.numel()) or t, lambda t: t):
        unchecked(inputs)
    assert sum(sizes) < 0.5 * sum(unchecked_sizes)  # the layers' activations were not kept


def test_bf16_autocast_runs_the_step_close_to_fp32(materialised):
    expected, _ = materialised
    actual, grads = _loss_and_grads(ComputeConfig(autocast=True, chunk_positions=5))
    assert torch.isfinite(actual.total) and all(torch.isfinite(g).all() for g in grads.values())
    assert all(g.dtype == torch.float32 for g in grads.values())  # master weights and gradients stay fp32
    assert actual.total.dtype == torch.float32
    torch.testing.assert_close(actual.total, expected.total, rtol=0.05, atol=0.02)


def test_guided_states_give_the_logits_guided_pass_materialises():
    policy = load_musicgen(TINY_MUSICGEN_URI)
    vocab = policy.model.config.decoder.vocab_size
    grid = delay(torch.randint(0, vocab, (2, 4, FRAMES), generator=torch.Generator().manual_seed(3)), vocab)
    states, mask = encode_prompts(policy.model, policy.tokenizer, PROMPTS, 256)
    for params in (PARAMS, SamplingParams(duration_s=0.2, temperature=0.7, guidance_scale=1.0)):
        with torch.no_grad():
            expected = guided_pass(policy.model, grid, states, mask, params)
            actual = guided_states(policy.model, grid, states, mask, params)
        torch.testing.assert_close(actual.logits(0, actual.positions), expected.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(actual.logits(3, 8), expected.logits[:, :, 3:8], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(actual.cond_hidden, expected.hidden)
