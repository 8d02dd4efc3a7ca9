"""Supervised fine-tuning on (prompt, completion) pairs: the warm-up before GRPO.

Loss on completion tokens only, EOS included, so the model learns where to stop.
"""

from __future__ import annotations

import math

from grpokit.batching import encode_pairs, micro_batches
from grpokit.logprobs import completion_logprobs
from grpokit.losses import BatchNorm, sft_loss
from grpokit.optim import optimizer_step


def sft_step(model, tokenizer, optimizer, prompts: list[str], completions: list[str], *,
             micro_batch_size: int, max_grad_norm: float, scheduler=None) -> dict[str, float]:
    """One optimiser step of SFT on the given pairs, accumulated over micro-batches."""
    device = next(model.parameters()).device
    tokens = encode_pairs(tokenizer, prompts, completions).to(device)
    norm = BatchNorm(num_sequences=len(tokens), num_tokens=int(tokens.completion_mask_BC.sum()), max_len=0)
    total = 0.0
    for rows in micro_batches(len(tokens), micro_batch_size):
        batch = tokens.select(rows)
        logp_BT = completion_logprobs(model, batch.input_ids(), batch.attention_mask(),
                                      batch.prompt_ids_BP.shape[1], temperature=1.0)
        loss, _ = sft_loss(logp_BT, batch.completion_mask_BC, norm)
        loss.backward()
        total += loss.item()
    grad_norm, stepped = optimizer_step(model, optimizer, scheduler, max_grad_norm, math.isfinite(total))
    return {"loss": total, "grad_norm": grad_norm, "tokens_backpropagated": norm.num_tokens, "skipped": not stepped}
