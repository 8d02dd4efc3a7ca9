"""Deterministic builder for the embedded tiny model: a character-level tokenizer and a small
Llama-architecture `transformers` model, both saved with `save_pretrained`.

The saved folder is an ordinary Hugging Face model directory: `AutoModelForCausalLM` and
`AutoTokenizer` load it with no grpokit code, so every command that works on it works on a
real model too. The tag tokens are single tokens (so the format costs 4 tokens, not 34) but
decode back to their text, so rewards see exactly the strings a real model would write.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"

# A minimal chat template, so conversational prompts and the chat-template path are exercised
# by the embedded default just as they are by real instruct models.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}Q: {{ m['content'] }}\n"
    "{% else %}A: {{ m['content'] }}" + EOS + "\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}A: {% endif %}"
)

# Sizes: "demo" is the default task model (~0.8M parameters); "test" is what unit tests use.
SIZES = {
    "demo": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    "test": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: one token per character, plus special and tag tokens."""
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, *TAG_TOKENS, *CHARACTERS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    # Split into single characters; tag tokens are matched first as added tokens.
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=PAD
    )
    fast.add_tokens(TAG_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(tokenizer: PreTrainedTokenizerFast, size: str = "demo", seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama model sized for `tokenizer`, seeded for reproducibility."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **SIZES[size],
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def build_tiny(out_dir: str | Path, size: str = "demo", seed: int = 0) -> Path:
    """Build and save tokenizer + model into out_dir (a Hugging Face model folder)."""
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, size=size, seed=seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
