"""DPO on a fixed dataset of (prompt, chosen, rejected) pairs, against a frozen reference.

`dpo_update` does one optimiser step on a batch of pairs. A pair's two completions go through
the model in the same micro-batch (rows i and n + i), so the loss of each pair is whole.
"""

from __future__ import annotations

import math

import torch

from grpokit.batching import encode_pairs, micro_batches
from grpokit.logprobs import completion_logprobs
from grpokit.losses import dpo_loss, sequence_logprob
from grpokit.optim import optimizer_step


def _sequence_logprobs(model, batch) -> torch.Tensor:
    logp_BT = completion_logprobs(model, batch.input_ids(), batch.attention_mask(), batch.prompt_ids_BP.shape[1],
                                  temperature=1.0)
    return sequence_logprob(logp_BT, batch.completion_mask_BC)


def dpo_update(model, ref_model, tokenizer, optimizer, scheduler, prompts: list[str], chosen: list[str],
               rejected: list[str], *, beta: float, micro_batch_size: int, max_grad_norm: float) -> dict[str, float]:
    device = next(model.parameters()).device
    num_pairs = len(prompts)
    tokens = encode_pairs(tokenizer, prompts + prompts, chosen + rejected).to(device)  # row i pairs with row n + i
    sums = {"loss": 0.0, "reward_margin": 0.0, "accuracy": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0}
    for pair_rows in micro_batches(num_pairs, max(1, micro_batch_size // 2)):
        batch = tokens.select(pair_rows + [num_pairs + i for i in pair_rows])
        policy_B = _sequence_logprobs(model, batch)
        with torch.no_grad():
            ref_B = _sequence_logprobs(ref_model, batch)
        n = len(pair_rows)
        loss, metrics = dpo_loss(policy_B[:n], policy_B[n:], ref_B[:n], ref_B[n:], beta=beta, num_pairs=num_pairs)
        loss.backward()  # already divided by the whole batch's number of pairs
        sums["loss"] += loss.item()
        for key in ("reward_margin", "accuracy", "chosen_reward", "rejected_reward"):
            sums[key] += metrics[key]
    grad_norm, stepped = optimizer_step(model, optimizer, scheduler, max_grad_norm, math.isfinite(sums["loss"]))
    return {
        "loss": sums["loss"],
        "reward_margin": sums["reward_margin"] / num_pairs,
        "preference_accuracy": sums["accuracy"] / num_pairs,
        "chosen_reward": sums["chosen_reward"] / num_pairs,
        "rejected_reward": sums["rejected_reward"] / num_pairs,
        "grad_norm": grad_norm,
        "tokens_backpropagated": int(tokens.completion_mask_BC.sum()),
        "skipped_updates": int(not stepped),
        "trailing_skips": int(not stepped),
    }
