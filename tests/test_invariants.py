"""Settings that must agree do agree: one batch of 8 == 8 micro-batches of 1 with accumulation."""

import copy

import pytest
import torch

from grpokit.config import load_config
from grpokit.methods.grpo import grpo_update
from grpokit.sampler import sample


@pytest.fixture(scope="module")
def rollout(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in ("What is 1 + 2?", "What is 9 + 9?")]
    torch.manual_seed(0)
    return sample(model, tokenizer, prompts, group_size=4, max_new_tokens=10, temperature=1.0)


def _update(model, rollout, micro_batch_size, overrides):
    model = copy.deepcopy(model)
    ref = copy.deepcopy(model).requires_grad_(False)
    # Move the policy away from the reference so the KL term has a gradient.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    config = load_config(None, [f"optim.micro_batch_size={micro_batch_size}", "optim.max_grad_norm=0",
                                "sampling.max_new_tokens=10", *overrides])
    # Plain SGD, lr 1: the update *is* the gradient. (Adam's first step is ~lr * sign(g), which
    # would turn float rounding in near-zero gradients into full-size differences.)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75, 0.0, 2.0, -1.0, -1.0])
    metrics = grpo_update(model, optimizer, None, rollout, advantages, config, ref_model=ref)
    return model, metrics


@pytest.mark.parametrize("overrides", [
    ["grpo.aggregation=token"],
    ["grpo.aggregation=sequence"],
    ["grpo.aggregation=constant"],
    ["grpo.aggregation=token", "grpo.beta=0.1"],
    ["grpo.aggregation=sequence", "grpo.num_iterations=2"],
])
def test_one_batch_of_8_equals_8_micro_batches_of_1(tiny_model_and_tokenizer, rollout, overrides):
    model, _ = tiny_model_and_tokenizer
    torch.manual_seed(0)
    whole, m_whole = _update(model, rollout, 8, overrides)
    torch.manual_seed(0)
    pieces, m_pieces = _update(model, rollout, 1, overrides)
    for (name, a), b in zip(whole.named_parameters(), pieces.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    assert m_whole["loss"] == pytest.approx(m_pieces["loss"], abs=1e-6)
    assert m_whole["tokens_backpropagated"] == m_pieces["tokens_backpropagated"]
    # and the update did move the parameters (so the comparison above is not vacuous)
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(whole.parameters(), model.parameters()))
