"""Supervised fine-tuning: on a dataset's completions (`sft`, and the warm-up) or on the sampled
completions that passed verification (`rft`, rejection-sampling fine-tuning).

Loss on completion tokens only, EOS included, so the model learns where to stop.
"""

from __future__ import annotations

import math

from grpokit.batching import TokenBatch, encode_pairs, micro_batches
from grpokit.logprobs import token_logprobs
from grpokit.losses import LossNormalizers, sft_loss
from grpokit.methods.base import Method, ScoredGroups, UpdateResult, skipped_update
from grpokit.methods.verified import rft_rows


def sft_update(model, optimizer, scheduler, tokens: TokenBatch, *, backend, micro_batch_size: int,
               max_grad_norm: float, share_prompts: bool = True) -> dict:
    """One optimiser step of SFT on the batch's completions, accumulated over micro-batches."""
    w = backend.world  # with several processes the normalisers count every process's rows
    norm = LossNormalizers(num_sequences=int(w.sum(len(tokens))),
                           num_tokens=int(w.sum(int(tokens.trained_mask_BC.sum()))), max_len=0)
    total = 0.0
    chunks = micro_batches(len(tokens), micro_batch_size)
    for i, rows in enumerate(chunks):
        batch = tokens.select(rows)
        logp_BT = token_logprobs(model, batch, 1.0, share_prompts, lockstep=backend.collective(model))
        loss, _ = sft_loss(logp_BT, batch.trained_mask_BC, norm)
        backend.backward(model, loss, last=i == len(chunks) - 1)
        total += loss.item()
    grad_norm, stepped = backend.step(model, optimizer, scheduler, max_grad_norm, math.isfinite(total))
    total = w.sum(total)
    return {"loss": total, "grad_norm": grad_norm, "tokens_backpropagated": norm.num_tokens,
            "skipped_updates": int(not stepped), "trailing_skips": int(not stepped), "optimizer_steps": 1}


def sft_step(model, tokenizer, optimizer, prompts: list[str], completions: list[str], *, backend,
             micro_batch_size: int, max_grad_norm: float, scheduler=None, share_prompts: bool = True,
             context_spans=None) -> dict[str, float]:
    """One optimiser step of SFT on (prompt, completion) texts (the warm-up); `context_spans` marks what
    in a completion is an environment's (tool results: context, not trained on; see `encode_pairs`)."""
    device = next(model.parameters()).device
    tokens = encode_pairs(tokenizer, prompts, completions, context_spans).to(device)
    return sft_update(model, optimizer, scheduler, tokens, backend=backend, micro_batch_size=micro_batch_size,
                      max_grad_norm=max_grad_norm, share_prompts=share_prompts)


class SFT(Method):
    """Offline: imitate the dataset's completions (offline.completion_field)."""

    online = False
    offline_rows = "completion"

    def update(self, optimizer, scheduler, ref_model, data) -> UpdateResult:
        prompts, examples = data
        completions = [ex.fields[self.config.offline.completion_field] for ex in examples]
        return UpdateResult(sft_step(self.model, self.tokenizer, optimizer, prompts, completions, backend=self.backend,
                                     micro_batch_size=self.config.optim.micro_batch_size,
                                     max_grad_norm=self.config.optim.max_grad_norm, scheduler=scheduler,
                                     share_prompts=self.config.train.share_prompt_forward))


class RFT(Method):
    """Online: SFT on the step's sampled completions that passed verification (not truncated), deduplicated.

    The sampled token ids are trained on directly (no decode and re-encode round trip). A step
    where nothing passed has nothing to imitate: it is counted and makes no update.
    """

    trains_on_passed = True
    dynamic_sampling = False  # all-pass groups are what it learns from

    def update(self, optimizer, scheduler, ref_model, data: ScoredGroups) -> UpdateResult:
        rows = rft_rows(data.passed_B, data.rollout.completions, data.group_size, data.rollout.truncated_B)
        targets = int(self.backend.world.sum(len(rows)))
        if targets == 0:  # decided together: a process with no rows still joins the step
            return UpdateResult(skipped_update("no completion passed verification", scheduler))
        tokens = data.rollout.tokens.to(self.device).select(rows)
        metrics = sft_update(self.model, optimizer, scheduler, tokens, backend=self.backend,
                             micro_batch_size=self.config.optim.micro_batch_size,
                             max_grad_norm=self.config.optim.max_grad_norm,
                             share_prompts=self.config.train.share_prompt_forward)
        return UpdateResult({**metrics, "sft_targets": targets})
