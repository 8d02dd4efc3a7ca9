"""Settings that must agree do agree: one batch of 8 == 8 micro-batches of 1 with accumulation."""

import copy

import pytest
import torch

from grpokit.config import load_config
from grpokit.methods.grpo import grpo_update
from grpokit.parallel import single_process
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
    metrics = grpo_update(model, optimizer, None, rollout, advantages, config, single_process(), ref_model=ref)
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


def _step(model, rollout, advantages, optimizer, overrides):
    config = load_config(None, ["optim.max_grad_norm=0", "sampling.max_new_tokens=10", *overrides])
    return grpo_update(model, optimizer, None, rollout, advantages, config, single_process())


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
def test_skipping_zero_advantage_samples_gives_the_same_update(tiny_model_and_tokenizer, rollout, aggregation):
    model, _ = tiny_model_and_tokenizer
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0])  # the second group is all-equal
    results = {}
    for skip in (True, False):
        copy_ = copy.deepcopy(model)
        metrics = _step(copy_, rollout, advantages, torch.optim.SGD(copy_.parameters(), lr=1.0),
                        [f"grpo.aggregation={aggregation}", f"grpo.skip_zero_advantage={skip}"])
        results[skip] = (copy_, metrics)
    for a, b in zip(results[True][0].parameters(), results[False][0].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    lengths = rollout.completion_lengths_B
    assert results[True][1]["tokens_backpropagated"] == int(lengths[:4].sum())  # only the first group
    assert results[False][1]["tokens_backpropagated"] == int(lengths.sum())


def test_a_step_where_every_sample_is_skipped_still_moves_adam_like_zero_gradients(tiny_model_and_tokenizer, rollout):
    model, _ = tiny_model_and_tokenizer
    finals = []
    for skip in (True, False):
        m = copy.deepcopy(model)
        optimizer = torch.optim.AdamW(m.parameters(), lr=0.01)
        overrides = [f"grpo.skip_zero_advantage={skip}"]
        # no zero advantage in step 1, so both runs compute it identically (Adam magnifies float noise)
        _step(m, rollout, torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.25, -0.25]), optimizer, overrides)
        _step(m, rollout, torch.zeros(8), optimizer, overrides)  # momentum still moves the weights
        finals.append(m)
    for a, b in zip(*(f.parameters() for f in finals)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert any(not torch.equal(a, start) for a, start in zip(finals[0].parameters(), model.parameters()))


@pytest.mark.parametrize("overrides", [
    ["grpo.aggregation=token"],
    ["grpo.aggregation=sequence", "grpo.beta=0.1"],
    ["grpo.aggregation=constant", "grpo.num_iterations=2"],
])
def test_prompt_shared_forward_gives_the_same_update(tiny_model_and_tokenizer, rollout, overrides):
    """Each group's prompt run once and read from the KV cache == every row running its own prompt."""
    model, _ = tiny_model_and_tokenizer
    torch.manual_seed(0)
    shared, m_shared = _update(model, rollout, 8, ["train.share_prompt_forward=true", *overrides])
    torch.manual_seed(0)
    plain, m_plain = _update(model, rollout, 8, ["train.share_prompt_forward=false", *overrides])
    for (name, a), b in zip(shared.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    assert m_shared["loss"] == pytest.approx(m_plain["loss"], abs=1e-6)
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(shared.parameters(), model.parameters()))


def test_prompt_shared_log_probs_equal_the_plain_forward_for_pairs_and_groups(tiny_model_and_tokenizer, rollout):
    from grpokit.batching import encode_pairs
    from grpokit.logprobs import _can_share_prompts, completion_logprobs, token_logprobs

    model, tokenizer = tiny_model_and_tokenizer
    assert _can_share_prompts(model), "the tiny Llama must take the shared path, or this test compares nothing"
    pairs = encode_pairs(tokenizer, ["Q: What is 1 + 2?\nA: ", "Q: What is 30 + 4?\nA: "] * 2,
                         ["<think>1+2=3</think><answer>3</answer>", "<think>3</think><answer>34</answer>",
                          "<answer>4</answer>", "<think>30+4=35</think><answer>35</answer>"])  # DPO-style rows
    for batch in (rollout.tokens, pairs):
        plain = completion_logprobs(model, batch.input_ids(), batch.attention_mask(), batch.prompt_ids_BP.shape[1],
                                    0.7)
        shared = token_logprobs(model, batch, 0.7, share_prompts=True)
        mask = batch.completion_mask_BC
        torch.testing.assert_close(shared * mask, plain * mask, atol=1e-5, rtol=0)
