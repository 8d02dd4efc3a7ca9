"""The sampler: EOS kept in the mask, left padding correct, log-probs equal a forward pass.

Every behaviour is checked for both engines: grpokit's cached loop and `model.generate`.
"""

import pytest
import torch

from grpokit.batching import encode_prompts
from grpokit.logprobs import completion_logprobs
from grpokit.sampler import completion_mask, sample

engines = pytest.mark.parametrize("engine", ["grpokit", "transformers"])


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


@engines
def test_completion_text_never_contains_padding_decoded_as_text(engine):
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
    rollout = sample(model, tok, ["ab?"] * 4, group_size=4, max_new_tokens=12, temperature=1.0, engine=engine)
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


@engines
def test_sampling_logprobs_match_a_forward_pass_at_the_same_temperature(tiny_model_and_tokenizer, engine):
    model, tokenizer = tiny_model_and_tokenizer
    prompts = _prompts(tokenizer, ["What is 3 + 4?", "What is 37 + 48?", "What is 100 + 1?"])
    for temperature in (1.0, 0.7):
        torch.manual_seed(0)
        rollout = sample(model, tokenizer, prompts, group_size=4, max_new_tokens=12, temperature=temperature,
                         engine=engine)
        t = rollout.tokens
        logp = completion_logprobs(model, t.input_ids(), t.attention_mask(), t.prompt_ids_BP.shape[1], temperature)
        torch.testing.assert_close(logp * t.completion_mask_BC, rollout.sampling_logprobs_BC, atol=1e-4, rtol=0)
        assert rollout.sampling_logprobs_BC.shape == t.completion_ids_BC.shape


@engines
def test_eos_is_inside_the_mask_of_every_finished_completion(tiny_model_and_tokenizer, engine):
    model, tokenizer = tiny_model_and_tokenizer
    eos = tokenizer.eos_token_id
    # Make EOS likely so many completions finish: bias the output layer towards it.
    with torch.no_grad():
        saved = model.lm_head.weight[eos].clone()
        model.lm_head.weight[eos] += 0.5 * model.model.embed_tokens.weight.mean(0)
    try:
        torch.manual_seed(1)
        rollout = sample(model, tokenizer, _prompts(tokenizer, ["What is 1 + 1?"] * 4), group_size=8,
                         max_new_tokens=30, temperature=1.0, engine=engine)
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


@engines
def test_greedy_completion_does_not_depend_on_padding(tiny_model_and_tokenizer, engine):
    model, tokenizer = tiny_model_and_tokenizer
    short, long = _prompts(tokenizer, ["What is 1 + 2?", "What is 12345 + 67890 + 11?"])
    alone = sample(model, tokenizer, [short], group_size=1, max_new_tokens=10, temperature=0, engine=engine)
    padded = sample(model, tokenizer, [long, short], group_size=1, max_new_tokens=10, temperature=0, engine=engine)
    n = int(alone.tokens.completion_mask_BC[0].sum())
    assert padded.tokens.completion_ids_BC[1, :n].tolist() == alone.tokens.completion_ids_BC[0, :n].tolist()


@engines
def test_groups_are_contiguous_rows(tiny_model_and_tokenizer, engine):
    model, tokenizer = tiny_model_and_tokenizer
    prompts = _prompts(tokenizer, ["What is 1 + 2?", "What is 40 + 50?"])
    rollout = sample(model, tokenizer, prompts, group_size=3, max_new_tokens=4, temperature=1.0, engine=engine)
    p = rollout.tokens.prompt_ids_BP
    assert torch.equal(p[0], p[2]) and torch.equal(p[3], p[5]) and not torch.equal(p[0], p[3])


def test_cached_loop_matches_generate_greedily_through_compaction(monkeypatch):
    """Greedy decoding is deterministic, so the two engines must write the same tokens, also after
    the loop has dropped finished rows from its batch; log-probs agree to float precision."""
    import grpokit.decoding as decoding
    from grpokit.tiny import build_tokenizer
    from grpokit.tiny.model import build_model

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, size="test")
    torch.manual_seed(0)
    with torch.no_grad():  # large random weights: greedy outputs that differ from prompt to prompt
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    # "[" is frequent in these outputs: as a second stop token it ends rows at very different steps.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("[")]
    caches_built = []
    build = decoding._cache_from
    monkeypatch.setattr(decoding, "_cache_from", lambda *a: caches_built.append(1) or build(*a))
    prompts = _prompts(tokenizer, [f"What is {a} + {b}?" for a, b in [(1, 2), (35, 7), (100, 999), (4, 4), (61, 18),
                                                                     (7, 700), (12, 3), (9, 90)]])
    ours = sample(model, tokenizer, prompts, group_size=1, max_new_tokens=30, temperature=0, engine="grpokit")
    theirs = sample(model, tokenizer, prompts, group_size=1, max_new_tokens=30, temperature=0, engine="transformers")
    lengths = ours.completion_lengths_B
    assert lengths.min() * 2 < lengths.max(), f"test setup: lengths should differ widely, got {lengths.tolist()}"
    assert len(caches_built) > 1, "test setup: the loop should have compacted its batch"
    mask = ours.tokens.completion_mask_BC
    assert torch.equal(mask, theirs.tokens.completion_mask_BC)
    assert torch.equal(ours.tokens.completion_ids_BC * mask, theirs.tokens.completion_ids_BC * mask)
    assert (ours.tokens.completion_ids_BC[mask == 0] == tokenizer.pad_token_id).all()  # nothing after the stop
    assert ours.completions == theirs.completions
    torch.testing.assert_close(ours.sampling_logprobs_BC, theirs.sampling_logprobs_BC, atol=1e-5, rtol=0)


def test_cached_loop_falls_back_to_generate_for_sliding_window_models():
    from transformers import MistralConfig, MistralForCausalLM

    from grpokit.decoding import supports_cached_decoding

    sliding = MistralForCausalLM(MistralConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1, sliding_window=4))
    full = MistralForCausalLM(MistralConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1, sliding_window=None))
    assert not supports_cached_decoding(sliding)
    assert supports_cached_decoding(full)
