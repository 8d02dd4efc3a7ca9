"""Preference pairs: DPO (against a frozen reference) and ORPO (no reference), offline or online.

Offline (`dpo`, `orpo`) the pairs are dataset rows (prompt, chosen, rejected). Online
(`online_dpo`, `online_orpo`) they are built each step from the sampled groups: a completion
that passed verification against one of the same prompt that failed (`verified.preference_pairs`).

`pair_update` does one optimiser step. A pair's two completions go through the model in the same
micro-batch (rows i and n + i of `tokens`), so the loss of each pair is whole.
"""

from __future__ import annotations

import math
import random

import torch

from grpokit.batching import TokenBatch, encode_pairs, micro_batches
from grpokit.logprobs import token_logprobs
from grpokit.losses import dpo_loss, orpo_loss, sequence_logprob
from grpokit.methods.base import Method, ScoredGroups, UpdateResult, skipped_update
from grpokit.methods.verified import preference_pairs


def pair_update(model, ref_model, optimizer, scheduler, tokens: TokenBatch, *, backend, loss: str, beta: float = 0.1,
                lam: float = 0.1, micro_batch_size: int, max_grad_norm: float, share_prompts: bool = True) -> dict:
    """One optimiser step of `loss` ("dpo" or "orpo") on the pairs (row i, row n + i) of `tokens`.
    With several processes the loss is normalised by every process's pairs and chosen tokens."""
    w = backend.world
    local_pairs = len(tokens) // 2
    num_pairs = int(w.sum(local_pairs))
    chosen_tokens = int(w.sum(int(tokens.trained_mask_BC[:local_pairs].sum())))
    sums: dict[str, float] = {"loss": 0.0}
    chunks = micro_batches(local_pairs, max(1, micro_batch_size // 2))
    for k, pair_rows in enumerate(chunks):
        batch = tokens.select(pair_rows + [local_pairs + i for i in pair_rows])
        n = len(pair_rows)
        logp_BT = token_logprobs(model, batch, 1.0, share_prompts, lockstep=backend.collective(model))
        if loss == "dpo":
            policy_B = sequence_logprob(logp_BT, batch.trained_mask_BC)
            with torch.no_grad():
                ref_logp_BT = token_logprobs(ref_model, batch, 1.0, share_prompts,
                                             lockstep=backend.collective(ref_model))
                ref_B = sequence_logprob(ref_logp_BT, batch.trained_mask_BC)
            value, metrics = dpo_loss(policy_B[:n], policy_B[n:], ref_B[:n], ref_B[n:], beta=beta,
                                      num_pairs=num_pairs)
        else:
            mask_BT = batch.trained_mask_BC
            value, metrics = orpo_loss(logp_BT[:n], mask_BT[:n], logp_BT[n:], mask_BT[n:], chosen_tokens,
                                       num_pairs, lam=lam)
        backend.backward(model, value, last=k == len(chunks) - 1)  # already divided by the whole batch's pairs / tokens
        sums["loss"] += value.item()
        for key, v in metrics.items():
            sums[key] = sums.get(key, 0.0) + v
    grad_norm, stepped = backend.step(model, optimizer, scheduler, max_grad_norm, math.isfinite(sums["loss"]))
    keys = ("loss", "reward_margin", "accuracy", "chosen_reward", "rejected_reward", "nll", "or_loss", "log_odds_ratio")
    sums = {key: w.sum(sums.get(key, 0.0)) for key in keys}  # every process's pairs
    out = {"loss": sums["loss"], "grad_norm": grad_norm, "pairs": num_pairs,
           "tokens_backpropagated": int(w.sum(int(tokens.trained_mask_BC.sum()))),
           "skipped_updates": int(not stepped), "trailing_skips": int(not stepped), "optimizer_steps": 1}
    if loss == "dpo":
        out.update({"reward_margin": sums["reward_margin"] / num_pairs,
                    "preference_accuracy": sums["accuracy"] / num_pairs,
                    "chosen_reward": sums["chosen_reward"] / num_pairs,
                    "rejected_reward": sums["rejected_reward"] / num_pairs})
    else:
        out.update({"nll": sums["nll"] / max(chosen_tokens, 1), "or_loss": sums["or_loss"] / num_pairs,
                    "log_odds_ratio": sums["log_odds_ratio"] / num_pairs})
    return out


class _PairMethod(Method):
    loss = "dpo"

    @classmethod
    def needs_reference(cls, config) -> bool:
        return cls.loss == "dpo"

    def _update_pairs(self, optimizer, scheduler, ref_model, tokens: TokenBatch) -> UpdateResult:
        c = self.config
        return UpdateResult(pair_update(
            self.model, ref_model, optimizer, scheduler, tokens, backend=self.backend, loss=self.loss,
            beta=c.dpo.beta, lam=c.orpo.lam, micro_batch_size=c.optim.micro_batch_size,
            max_grad_norm=c.optim.max_grad_norm, share_prompts=c.train.share_prompt_forward))


class OfflinePairs(_PairMethod):
    """dpo / orpo on the dataset's (prompt, chosen, rejected) rows."""

    online = False
    offline_rows = "pairs"

    def update(self, optimizer, scheduler, ref_model, data) -> UpdateResult:
        prompts, examples = data
        o = self.config.offline
        chosen = [ex.fields[o.chosen_field] for ex in examples]
        rejected = [ex.fields[o.rejected_field] for ex in examples]
        tokens = encode_pairs(self.tokenizer, prompts + prompts, chosen + rejected).to(self.device)
        return self._update_pairs(optimizer, scheduler, ref_model, tokens)


class OnlinePairs(_PairMethod):
    """online_dpo / online_orpo: pairs of a passing and a failing sampled completion of the same prompt.

    A step whose groups hold no such pair (every group all-pass or all-fail) is counted in the
    metrics (`no_data_reason`) and makes no update: never a silent zero loss.
    """

    trains_on_passed = True
    min_group_size = 2

    def update(self, optimizer, scheduler, ref_model, data: ScoredGroups) -> UpdateResult:
        o = self.config.online
        # One generator per step, from the seed and the step: a resumed run builds the same pairs.
        rng = random.Random(self.config.train.seed * 1_000_003 + self.step)
        pairs = preference_pairs(data.passed_B, data.rewards_B, data.rollout.completions, data.group_size,
                                 rule=o.pair_rule, pairs_per_prompt=o.pairs_per_prompt, rng=rng,
                                 scored_B=data.scored_B)
        if self.backend.world.sum(len(pairs)) == 0:  # decided together: a process with no pairs still joins the step
            return UpdateResult({**skipped_update("no group had both a passing and a failing completion", scheduler),
                                 "pairs": 0})
        rows = [w for w, _ in pairs] + [r for _, r in pairs]
        tokens = data.rollout.tokens.to(self.device).select(rows)
        return self._update_pairs(optimizer, scheduler, ref_model, tokens)


class DPO(OfflinePairs):
    loss = "dpo"


class ORPO(OfflinePairs):
    loss = "orpo"


class OnlineDPO(OnlinePairs):
    loss = "dpo"


class OnlineORPO(OnlinePairs):
    loss = "orpo"
