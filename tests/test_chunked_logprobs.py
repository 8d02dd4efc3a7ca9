"""Log-probs computed chunk by chunk of positions (the LM head applied per chunk, recomputed in backward)
equal the whole-logits computation: values, gradients, the shared-prompt path, the LoRA reference and a
whole GRPO update. A small `max_logits_mb` forces chunks on the tiny model; chunk sizes that do not
divide the positions are used on purpose."""

import copy
import math

import pytest
import torch

from grpokit import logprobs
from grpokit.batching import encode_pairs
from grpokit.logprobs import completion_logprobs, head_logprobs, token_logprobs
from grpokit.sampler import sample

WHOLE = float("inf")


@pytest.fixture(scope="module")
def model_and_batch(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    model = copy.deepcopy(model).float()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in ("What is 1 + 2?", "What is 19 + 9?")]
    torch.manual_seed(0)
    rollout = sample(model, tokenizer, prompts, group_size=3, max_new_tokens=12, temperature=1.0)
    return model, rollout.tokens


def _budget_for(model, positions: int) -> float:
    """A max_logits_mb that gives chunks of `positions` positions."""
    return positions * model.config.vocab_size * 4 / 2**20


def _values_and_grads(model, batch, share: bool, max_logits_mb: float):
    model.zero_grad()
    logp = token_logprobs(model, batch, 0.7, share_prompts=share, max_logits_mb=max_logits_mb)
    weights = torch.linspace(-1, 1, logp.numel()).reshape(logp.shape)  # any fixed upstream gradient
    (logp * weights * batch.completion_mask_BC).sum().backward()
    return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("share", [False, True])
def test_chunked_values_and_gradients_equal_whole_logits(model_and_batch, share):
    model, batch = model_and_batch
    whole, whole_grads = _values_and_grads(model, batch, share, WHOLE)
    chunked, chunked_grads = _values_and_grads(model, batch, share, _budget_for(model, 5))
    mask = batch.completion_mask_BC
    torch.testing.assert_close(chunked * mask, whole * mask, atol=1e-5, rtol=1e-5)
    for name, g in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], g, atol=1e-5, rtol=1e-5, msg=name)
    assert max(g.abs().max() for g in whole_grads.values()) > 1e-3  # gradients are not all zero


def test_head_logprobs_by_hand():
    """A 2-token vocabulary computed by hand: logits h @ W^T, log softmax at T = 2."""
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    hidden = torch.tensor([[[2.0, 0.0], [0.0, 4.0], [1.0, 1.0]]])  # logits [2, 0], [0, 4], [1, 1]
    tokens = torch.tensor([[0, 0, 1]])
    # at T = 2: [1, 0] -> log(e / (e + 1)); [0, 2] -> log(1 / (1 + e^2)); equal logits -> log 1/2
    want = torch.tensor([[1 - math.log(math.e + 1), -math.log(1 + math.e ** 2), -math.log(2)]])
    for chunk in (1, 2, 3):
        torch.testing.assert_close(head_logprobs(head, hidden, tokens, 2.0, chunk), want, atol=1e-6, rtol=0)


def test_chunks_hold_only_a_chunk_of_logits(model_and_batch, monkeypatch):
    """The head never sees more rows than a chunk: the whole (B, C, V) logits are never built."""
    model, batch = model_and_batch
    head, seen = model.get_output_embeddings(), []
    monkeypatch.delattr(model, "_grpokit_head_is_projection", raising=False)  # so the one-time check runs here
    handle = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[:-1].numel()))
    try:
        _values_and_grads(model, batch, False, _budget_for(model, 7))
    finally:
        handle.remove()
    rows = batch.completion_ids_BC.numel()
    assert seen and max(seen) <= 7 < rows
    # every chunk is projected once forward and once more in backward (recomputed, not stored),
    # plus the one position per row that the model's own forward projects, and once that position
    # again for the one-time check that the head is a plain projection
    B = batch.prompt_ids_BP.shape[0]
    assert sum(seen) == 2 * rows + B + B


def test_grpo_update_with_chunks_equals_whole(tiny_model_and_tokenizer, model_and_batch, monkeypatch):
    from grpokit.config import load_config
    from grpokit.methods.grpo import grpo_update
    from grpokit.parallel import single_process
    from grpokit.sampler import Rollout

    model, batch = model_and_batch
    B = batch.completion_ids_BC.shape[0]
    rollout = Rollout(batch, torch.zeros(batch.completion_ids_BC.shape), torch.zeros(B, dtype=torch.bool),
                      [""] * B, group_size=3)
    config = load_config(None, ["optim.max_grad_norm=0", "grpo.beta=0.1", "sampling.temperature=0.7"])
    advantages = torch.tensor([1.0, -0.5, -0.5, 0.3, 0.2, -0.5])

    def update(budget_mb):
        monkeypatch.setattr(logprobs, "LOGITS_BUDGET_MB", budget_mb)
        policy = copy.deepcopy(model)
        ref = copy.deepcopy(model).requires_grad_(False)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
        metrics = grpo_update(policy, optimizer, None, rollout, advantages, config, single_process(), ref_model=ref)
        return policy, metrics

    whole, m_whole = update(WHOLE)
    chunked, m_chunked = update(_budget_for(model, 4))
    for (name, a), b in zip(whole.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=name)
    assert m_chunked["loss"] == pytest.approx(m_whole["loss"], abs=1e-6)
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(whole.parameters(), model.parameters()))


def test_pairs_and_lora_reference_with_chunks(tiny_model_and_tokenizer):
    pytest.importorskip("peft")
    from grpokit.config import LoRAConfig
    from grpokit.modeling import AdapterDisabledReference, apply_lora

    model, tokenizer = tiny_model_and_tokenizer
    policy = apply_lora(copy.deepcopy(model), LoRAConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():  # non-zero adapters, so the reference (adapters off) differs from the policy
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    reference = AdapterDisabledReference(policy)
    pairs = encode_pairs(tokenizer, ["Q: What is 1 + 2?\nA: "] * 2 + ["Q: What is 30 + 4?\nA: "],
                         ["<answer>3</answer>", "<answer>4</answer>", "<think>30+4=34</think><answer>34</answer>"])
    budget = _budget_for(model, 3)
    for m in (policy, reference):
        for share in (False, True):
            whole = token_logprobs(m, pairs, 1.0, share_prompts=share, max_logits_mb=WHOLE)
            chunked = token_logprobs(m, pairs, 1.0, share_prompts=share, max_logits_mb=budget)
            mask = pairs.completion_mask_BC
            torch.testing.assert_close(chunked * mask, whole * mask, atol=1e-5, rtol=1e-5)
    off = token_logprobs(reference, pairs, 1.0, max_logits_mb=budget)
    on = token_logprobs(policy, pairs, 1.0, max_logits_mb=budget)
    assert ((off - on) * pairs.completion_mask_BC).abs().max() > 1e-3  # the two really differ


def test_a_head_that_is_not_a_plain_projection_falls_back_to_whole_logits():
    """Gemma 2 soft-caps its logits after the LM head: projecting the hidden states is not enough, so
    the first call finds that out and the model keeps the whole-logits path."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, final_logit_softcapping=0.5,
                          sliding_window=8)
    model = Gemma2ForCausalLM(config).eval()
    ids = torch.randint(0, 64, (3, 10))
    mask = torch.ones_like(ids)
    whole = completion_logprobs(model, ids, mask, 4, 1.0, max_logits_mb=WHOLE)
    fallback = completion_logprobs(model, ids, mask, 4, 1.0, max_logits_mb=_budget_for(model, 2))
    torch.testing.assert_close(fallback, whole, atol=1e-6, rtol=0)
    assert model._grpokit_head_is_projection is False
    with torch.no_grad():  # and the soft-capping really matters here (so the check above compared something)
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        uncapped = torch.log_softmax(model.lm_head(hidden[:, 3:-1]).float(), -1).gather(-1, ids[:, 4:, None])[..., 0]
    assert (uncapped - whole).abs().max() > 1e-3
