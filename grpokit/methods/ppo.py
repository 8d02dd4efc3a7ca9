"""PPO with a value model (Schulman et al. 2017; the RLHF recipe of Ouyang et al. 2022).

Where GRPO's baseline is the group mean, PPO learns one: a value model V (the policy's
backbone plus a scalar head, a second trained model with its own optimiser: the memory GRPO
saves) predicts, before each completion token, the reward still to come. Per step:
1. no-grad passes: old log-probs (policy), old values (value model), reference log-probs;
2. per-token rewards: -kl_coef * (log pi_old - log pi_ref) at every token, plus the verified
   reward at the last token;
3. GAE turns rewards and values into per-token advantages and returns (`losses.gae`);
4. `ppo.epochs` times: one step of the clipped policy loss and one of the clipped value loss,
   each over the whole batch in micro-batches.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from grpokit.batching import micro_batches
from grpokit.losses import LossNormalizers, gae, ppo_policy_loss, ppo_value_loss
from grpokit.methods.base import Method, ScoredGroups, UpdateResult
from grpokit.value_model import ValueModel, parameter_bytes


def _plain_policy(model):
    """The policy as a plain transformers model. With LoRA, a merged copy (adapters folded in), so
    the critic starts from the policy's current weights without peft's adapter layers."""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model


def masked_whiten(x_BT: torch.Tensor, mask_BT: torch.Tensor, eps: float = 1e-8, total=lambda v: v) -> torch.Tensor:
    """(x - mean) / std over the valid tokens of the batch; 0 on padding. `total` sums a number over
    processes (identity in one process), so several processes whiten by the whole step's statistics."""
    mask_BT = mask_BT.to(x_BT.dtype)
    n = max(total(mask_BT.sum().item()), 1.0)
    mean = total((x_BT * mask_BT).sum().item()) / n
    var = total((((x_BT - mean) * mask_BT) ** 2).sum().item()) / n
    return (x_BT - mean) * torch.rsqrt(torch.tensor(var + eps, dtype=x_BT.dtype, device=x_BT.device)) * mask_BT


def _mean_and_var(values: torch.Tensor, total) -> tuple[float, float]:
    """Mean and (population) variance of `values` across processes."""
    n = max(total(float(values.numel())), 1.0)
    mean = total(values.sum().item()) / n
    return mean, total(((values - mean) ** 2).sum().item()) / n


def token_rewards(rewards_B: torch.Tensor, lengths_B: torch.Tensor, logp_BT: torch.Tensor,
                  ref_logp_BT: torch.Tensor | None, mask_BT: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token reward: the verified reward on each completion's last token, minus kl_coef times
    the sampled-token KL estimate log pi - log pi_ref on every token (as in InstructGPT)."""
    out_BT = torch.zeros_like(logp_BT)
    if ref_logp_BT is not None and kl_coef != 0.0:
        out_BT = -kl_coef * (logp_BT - ref_logp_BT) * mask_BT.to(logp_BT.dtype)
    last_B = (lengths_B - 1).clamp(min=0)
    out_BT[torch.arange(len(out_BT)), last_B] += rewards_B.to(out_BT.dtype)
    return out_BT


def policy_token_gae(rewards_BC: torch.Tensor, values_BC: torch.Tensor, mask_BC: torch.Tensor, *, gamma: float,
                     lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the policy's own tokens of multi-turn rollouts: environment tokens are skipped, not
    episode ends, so V(t+1) is the value at the policy's next token, after the environment's reply.
    Each row's policy tokens are packed to the left, `gae` runs on them, and the results go back in place."""
    mask_BC = mask_BC.bool()
    counts_B = mask_BC.sum(-1)
    K = max(int(counts_B.max()), 1) if len(counts_B) else 1
    # positions of each row's policy tokens first (stable: in order), then the rest
    order_BC = torch.sort((~mask_BC).to(torch.int8), dim=-1, stable=True).indices[:, :K]
    packed_mask_BK = torch.arange(K, device=mask_BC.device) < counts_B[:, None]
    advantages_BK, returns_BK = gae(rewards_BC.gather(1, order_BC), values_BC.gather(1, order_BC), packed_mask_BK,
                                    gamma=gamma, lam=lam)
    advantages_BC, returns_BC = torch.zeros_like(values_BC), torch.zeros_like(values_BC)
    advantages_BC.scatter_(1, order_BC, advantages_BK * packed_mask_BK)
    returns_BC.scatter_(1, order_BC, returns_BK * packed_mask_BK)
    return advantages_BC, returns_BC


class PPO(Method):
    trains_value_model = True

    def __init__(self, config, model, tokenizer, backend):
        super().__init__(config, model, tokenizer, backend)
        # The critic starts from the policy as PPO starts (after any warm-up): its features
        # already read the task; the head learns the values.
        self.value_model = ValueModel.from_backbone(_plain_policy(model)).to(self.device)
        self.value_optimizer = self._value_optimizer()

    def _value_optimizer(self):
        o = self.config.optim
        return torch.optim.AdamW(self.value_model.parameters(), lr=self.config.ppo.value_lr,
                                 weight_decay=o.weight_decay, betas=(o.adam_beta1, o.adam_beta2))

    @classmethod
    def needs_reference(cls, config) -> bool:
        return config.ppo.kl_coef != 0.0

    def optimizer_steps_per_step(self) -> int:
        return self.config.ppo.epochs

    # ------------------------------------------------------------------ checkpoints
    def save_extra(self, folder: Path) -> None:
        self.value_model.save(folder / "value_model")
        torch.save(self.value_optimizer.state_dict(), folder / "value_optimizer.pt")

    def load_extra(self, folder: Path) -> None:
        self.value_model = ValueModel.load(folder / "value_model", device=self.device,
                                           trust_remote_code=self.config.model.trust_remote_code)
        self.value_optimizer = self._value_optimizer()
        self.value_optimizer.load_state_dict(torch.load(folder / "value_optimizer.pt", weights_only=True))

    def extra_state_bytes(self) -> int:
        optimizer_bytes = sum(t.numel() * t.element_size() for s in self.value_optimizer.state.values()
                              for t in s.values() if torch.is_tensor(t))
        return 2 * parameter_bytes(self.value_model) + optimizer_bytes  # weights, gradients, AdamW moments

    # ------------------------------------------------------------------ the update
    def update(self, optimizer, scheduler, ref_model, data: ScoredGroups) -> UpdateResult:
        c, p, backend = self.config, self.config.ppo, self.backend
        T = c.sampling.temperature
        tokens = data.rollout.tokens.to(self.device)
        mask_BC = tokens.trained_mask_BC  # the policy's tokens (multi-turn: not the environment's)
        lengths_B = tokens.completion_mask_BC.sum(-1)
        multi_turn = tokens.policy_mask_BC is not None
        # The verified reward goes on the last policy token: with environment replies inside, not the last token.
        positions_BC = torch.arange(1, mask_BC.shape[1] + 1, device=self.device)
        ends_B = (mask_BC * positions_BC).amax(-1) if multi_turn and mask_BC.numel() else lengths_B
        rewards_B = data.rewards_B.to(self.device)
        # A completion whose verification failed has no reward: its tokens leave the loss mask, so it
        # gets no reward, no policy gradient, no value target and no place in the normalisers. Every
        # process still runs the same passes (FSDP / DeepSpeed need that).
        left_out = data.scored_B is not None and not bool(data.scored_B.all())
        if left_out:
            scored_B = data.scored_B.to(self.device, torch.bool)
            mask_BC = mask_BC * scored_B[:, None]
            rewards_B = torch.where(scored_B, rewards_B, 0.0)
        chunks = micro_batches(len(tokens), c.optim.micro_batch_size, lengths_B.cpu())
        batches = [tokens.select(rows) for rows in chunks]

        def logprobs(model, b):
            return self.logprobs(model, b, T)

        def values(b):
            return self.value_model.values(b.input_ids(), b.attention_mask(), b.prompt_ids_BP.shape[1])

        def loss_mask(rows, b):  # the micro-batch's mask, without the left-out completions
            return mask_BC[rows, : b.completion_mask_BC.shape[1]] if left_out else b.trained_mask_BC

        def full(parts):  # per-chunk (rows, width) tensors -> one (B, C) tensor, 0 on padding
            out = torch.zeros(mask_BC.shape, dtype=torch.float32, device=self.device)
            for rows, part in zip(chunks, parts):
                out[rows, : part.shape[1]] = part.float()
            return out

        # Train mode for the old passes too (as GRPO): with dropout, eval-mode old log-probs would
        # make the first ratio differ from 1 by noise alone.
        self.model.train()
        self.value_model.train()
        with torch.no_grad():
            old_logp_BC = full([logprobs(self.model, b) for b in batches])
            old_values_BC = full([values(b) for b in batches])
            ref_logp_BC = full([logprobs(ref_model, b) for b in batches]) if self.needs_reference(c) else None
        rewards_BC = token_rewards(rewards_B, ends_B, old_logp_BC, ref_logp_BC, mask_BC, p.kl_coef)
        estimate = policy_token_gae if multi_turn else gae
        advantages_BC, returns_BC = estimate(rewards_BC, old_values_BC, mask_BC, gamma=p.gamma, lam=p.lam)
        total = backend.world.sum  # several processes: statistics and normalisers of the whole step
        if p.whiten_advantages:
            advantages_BC = masked_whiten(advantages_BC, mask_BC, total=total)

        trained = len(tokens) if not left_out else int(scored_B.sum())
        norm = LossNormalizers(num_sequences=int(total(trained)), num_tokens=int(total(int(mask_BC.sum()))),
                               max_len=c.sampling.max_new_tokens)
        sums = {"loss": 0.0, "value_loss": 0.0, "clipped": 0.0, "value_clipped": 0.0, "grad_norm": 0.0,
                "value_grad_norm": 0.0, "value_skipped": 0}
        skipped = trailing = 0
        for _ in range(p.epochs):
            policy_loss = value_loss = 0.0
            for i, (rows, b) in enumerate(zip(chunks, batches)):
                w = b.completion_ids_BC.shape[1]
                loss, m = ppo_policy_loss(logprobs(self.model, b), old_logp_BC[rows, :w], advantages_BC[rows, :w],
                                          loss_mask(rows, b), norm, clip_low=p.clip, clip_high=p.clip)
                backend.backward(self.model, loss, last=i == len(chunks) - 1)
                policy_loss += loss.item()
                sums["clipped"] += m["clipped_tokens"]
            grad_norm, stepped = backend.step(self.model, optimizer, scheduler, c.optim.max_grad_norm,
                                              math.isfinite(policy_loss))
            for i, (rows, b) in enumerate(zip(chunks, batches)):
                w = b.completion_ids_BC.shape[1]
                loss, m = ppo_value_loss(values(b), old_values_BC[rows, :w], returns_BC[rows, :w],
                                         loss_mask(rows, b), norm, clip=p.value_clip)
                backend.backward(self.value_model, loss, last=i == len(chunks) - 1)
                value_loss += loss.item()
                sums["value_clipped"] += m["value_clipped_tokens"]
            value_grad_norm, value_stepped = backend.step(self.value_model, self.value_optimizer, None,
                                                          c.optim.max_grad_norm, math.isfinite(value_loss))
            sums["value_skipped"] += not value_stepped
            skipped += not stepped
            trailing = 0 if stepped else trailing + 1
            for key, v in (("loss", policy_loss), ("value_loss", value_loss), ("grad_norm", grad_norm),
                           ("value_grad_norm", value_grad_norm)):
                sums[key] += v
        tokens_seen = norm.num_tokens * p.epochs
        for key in ("loss", "value_loss", "clipped", "value_clipped"):
            sums[key] = total(sums[key])
        valid = mask_BC.bool()
        _, residual_var = _mean_and_var((returns_BC - old_values_BC)[valid], total)
        _, returns_var = _mean_and_var(returns_BC[valid], total)
        kl = _mean_and_var((old_logp_BC - ref_logp_BC)[valid], total)[0] if ref_logp_BC is not None else None
        return UpdateResult({
            "optimizer_steps": p.epochs,
            "loss": sums["loss"] / p.epochs,
            "value_loss": sums["value_loss"] / p.epochs,
            "grad_norm": sums["grad_norm"] / p.epochs,
            "value_grad_norm": sums["value_grad_norm"] / p.epochs,
            "clip_fraction": sums["clipped"] / max(tokens_seen, 1),
            "value_clip_fraction": sums["value_clipped"] / max(tokens_seen, 1),
            "kl": kl,
            "mean_value": _mean_and_var(old_values_BC[valid], total)[0],
            # 1 - Var(returns - V) / Var(returns): how much of the return the critic already predicts
            "explained_variance": 1 - residual_var / max(returns_var, 1e-8),
            "tokens_backpropagated": tokens_seen,  # policy, all epochs (as GRPO counts its iterations)
            "value_tokens_backpropagated": tokens_seen,  # the critic's backward passes, on top
            "skipped_updates": skipped,
            "value_skipped_updates": int(sums["value_skipped"]),
            "trailing_skips": trailing,
        })
