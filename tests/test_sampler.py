"""The sampler: EOS kept in the mask, left padding correct, log-probs equal a forward pass."""

import torch

from grpokit.batching import encode_prompts
from grpokit.logprobs import completion_logprobs
from grpokit.sampler import completion_mask, sample


def _prompts(tokenizer, questions):
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True) for q in questions]


def test_completion_mask_keeps_first_eos_and_flags_truncation():
    eos, pad = 2, 2  # pad == eos, as in many real tokenizers
    ids = torch.tensor([[5, 6, eos, pad, pad], [7, eos, 9, eos, pad], [5, 5, 5, 5, 5]])
    mask, truncated = completion_mask(ids, [eos])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]


def test_completion_mask_with_several_stop_tokens():
    ids = torch.tensor([[5, 8, 6, 2]])
    mask, truncated = completion_mask(ids, [2, 8])  # e.g. EOS and an end-of-turn token
    assert mask.tolist() == [[1, 1, 0, 0]] and truncated.tolist() == [False]


def test_completion_text_never_contains_padding_decoded_as_text():
    """In Qwen and GPT-2, token id 0 is "!": the tail of a short completion must not decode as "!!!"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"!": 0, "<pad>": 1, "<eos>": 2, "a": 3, "b": 4, "?": 5}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, pad_token_id=1, eos_token_id=2))
    with torch.no_grad():
        model.lm_head.weight[2] += 3 * model.model.embed_tokens.weight.mean(0)  # make EOS frequent
    rollout = sample(model, tok, ["ab?"] * 4, group_size=4, max_new_tokens=12, temperature=1.0)
    lengths = rollout.tokens.completion_mask_BC.sum(-1)
    assert (lengths < rollout.tokens.completion_ids_BC.shape[1]).any(), "test setup: some short completions"
    for text, ids, n in zip(rollout.completions, rollout.tokens.completion_ids_BC, lengths):
        characters = [i for i in ids[: int(n)].tolist() if i not in tok.all_special_ids]  # one char per token
        assert len(text) == len(characters), (text, ids.tolist())


def test_left_padding_aligns_prompts_at_the_right():
    from grpokit.tiny import build_tokenizer

    tok = build_tokenizer()
    ids, mask = encode_prompts(tok, ["ab", "abcd"])
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert ids[0, 2:].tolist() == ids[1, :2].tolist()


def test_sampling_logprobs_match_a_forward_pass_at_the_same_temperature(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    prompts = _prompts(tokenizer, ["What is 3 + 4?", "What is 37 + 48?", "What is 100 + 1?"])
    for temperature in (1.0, 0.7):
        torch.manual_seed(0)
        rollout = sample(model, tokenizer, prompts, group_size=4, max_new_tokens=12, temperature=temperature)
        t = rollout.tokens
        logp = completion_logprobs(model, t.input_ids(), t.attention_mask(), t.prompt_ids_BP.shape[1], temperature)
        torch.testing.assert_close(logp * t.completion_mask_BC, rollout.sampling_logprobs_BC, atol=1e-4, rtol=0)
        assert rollout.sampling_logprobs_BC.shape == t.completion_ids_BC.shape


def test_eos_is_inside_the_mask_of_every_finished_completion(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    eos = tokenizer.eos_token_id
    # Make EOS likely so many completions finish: bias the output layer towards it.
    with torch.no_grad():
        saved = model.lm_head.weight[eos].clone()
        model.lm_head.weight[eos] += 0.5 * model.model.embed_tokens.weight.mean(0)
    try:
        torch.manual_seed(1)
        rollout = sample(model, tokenizer, _prompts(tokenizer, ["What is 1 + 1?"] * 4), group_size=8,
                         max_new_tokens=30, temperature=1.0)
    finally:
        with torch.no_grad():
            model.lm_head.weight[eos] = saved
    t = rollout.tokens
    lengths = t.completion_mask_BC.sum(-1)
    finished = ~rollout.truncated_B
    assert finished.any(), "test setup: some completions should end with EOS"
    for i in torch.nonzero(finished).flatten().tolist():
        assert t.completion_ids_BC[i, lengths[i] - 1].item() == eos  # last trained token is the EOS
    assert (lengths[rollout.truncated_B] == t.completion_ids_BC.shape[1]).all()


def test_greedy_completion_does_not_depend_on_padding(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    short, long = _prompts(tokenizer, ["What is 1 + 2?", "What is 12345 + 67890 + 11?"])
    alone = sample(model, tokenizer, [short], group_size=1, max_new_tokens=10, temperature=0)
    padded = sample(model, tokenizer, [long, short], group_size=1, max_new_tokens=10, temperature=0)
    n = int(alone.tokens.completion_mask_BC[0].sum())
    assert padded.tokens.completion_ids_BC[1, :n].tolist() == alone.tokens.completion_ids_BC[0, :n].tolist()


def test_groups_are_contiguous_rows(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    prompts = _prompts(tokenizer, ["What is 1 + 2?", "What is 40 + 50?"])
    rollout = sample(model, tokenizer, prompts, group_size=3, max_new_tokens=4, temperature=1.0)
    p = rollout.tokens.prompt_ids_BP
    assert torch.equal(p[0], p[2]) and torch.equal(p[3], p[5]) and not torch.equal(p[0], p[3])
