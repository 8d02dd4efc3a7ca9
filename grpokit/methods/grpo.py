"""GRPO and RLOO: group-relative advantages and the clipped surrogate, one rollout at a time.

RLOO differs only in its advantage: the mean of the *other* G-1 rewards as baseline, and no
division by the group's std (Ahmadian et al. 2024). Everything after the advantage is shared.

`grpo_update` takes a scored rollout and performs `num_iterations` optimiser steps on it,
accumulating gradients over micro-batches. It reads top to bottom like the formula in
ALGORITHMS.md; the tensor maths lives in `grpokit.losses` and `grpokit.advantages`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from grpokit.advantages import group_advantages, zero_variance_groups
from grpokit.batching import micro_batches
from grpokit.config import Config
from grpokit.errors import GrpokitError
from grpokit.logprobs import token_logprobs
from grpokit.losses import LossNormalizers, cispo_loss, grpo_loss, gspo_loss, sampler_importance_weights
from grpokit.methods.base import Method, ScoredGroups, UpdateResult
from grpokit.sampler import Rollout

# (logp_BT, old_logp_BT, advantages_B, mask_BT, norm, ref_logp_BT, is_weights_BT) -> (loss, metric sums)
PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def compute_advantages(rewards_B: torch.Tensor, group_size: int, cfg, *, baseline: str | None = None,
                       scale_by_std: bool | None = None, scored_B: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, float]:
    """(B,) rewards grouped by prompt -> (B,) advantages and the fraction of zero-variance groups.
    `baseline` and `scale_by_std` override the config's (RLOO fixes both). `scored_B` (bool) marks the
    completions whose verification succeeded: the others stay out of their group's baseline and std
    and get advantage 0."""
    rewards_NG = rewards_B.view(-1, group_size)
    scored_NG = None if scored_B is None else scored_B.view(-1, group_size)
    advantages_NG = group_advantages(rewards_NG, baseline=baseline or cfg.baseline,
                                     scale_by_std=cfg.scale_by_std if scale_by_std is None else scale_by_std,
                                     eps=cfg.std_eps, scored_NG=scored_NG)
    return advantages_NG.reshape(-1), zero_variance_groups(rewards_NG, scored_NG).float().mean().item()


def grpo_policy_loss(config: Config) -> PolicyLoss:
    """GRPO's per-micro-batch loss: the token-level clipped surrogate of `grpokit.losses.grpo_loss`."""
    cfg = config.grpo

    def loss(logp_BT, old_logp_BT, advantages_B, mask_BT, norm, ref_logp_BT, is_weights_BT):
        return grpo_loss(logp_BT, old_logp_BT, advantages_B, mask_BT, norm, clip_low=cfg.clip_low,
                         clip_high=cfg.clip_high, beta=cfg.beta, ref_logp_BT=ref_logp_BT, aggregation=cfg.aggregation,
                         is_weights_BT=is_weights_BT, kl_estimator=cfg.kl_estimator)
    return loss


def grpo_update(model, optimizer, scheduler, rollout: Rollout, advantages_B: torch.Tensor, config: Config,
                backend, ref_model=None, *, policy_loss: PolicyLoss | None = None,
                trained_B: torch.Tensor | None = None) -> dict[str, float]:
    """num_iterations optimiser steps on one rollout through `backend` (a `grpokit.parallel.Backend`);
    returns summed-then-averaged metrics.

    `policy_loss` is the per-micro-batch loss (default GRPO's; GSPO and CISPO bring theirs).
    `trained_B` (bool, default all) marks the completions trained on: the others (failed verifications)
    add nothing to the loss, the KL or the normalisers.
    """
    cfg, device = config.grpo, next(model.parameters()).device
    policy_loss = policy_loss or grpo_policy_loss(config)
    tokens = rollout.tokens.to(device)
    advantages_B = advantages_B.to(device)
    temperature, share = config.sampling.temperature, config.train.share_prompt_forward
    mask_BC = tokens.trained_mask_BC
    left_out_B = None if trained_B is None or bool(trained_B.all()) else ~trained_B.to(device=device, dtype=torch.bool)
    if left_out_B is not None:  # their tokens are not trained on: out of the loss mask, so out of every count
        mask_BC = mask_BC * ~left_out_B[:, None]
    w = backend.world  # with several processes the normalisers count the whole step, every process's rows
    trained = len(tokens) if left_out_B is None else int((~left_out_B).sum())
    norm = LossNormalizers(num_sequences=int(w.sum(trained)), num_tokens=int(w.sum(int(mask_BC.sum()))),
                           max_len=config.env.max_tokens if config.env.name else config.sampling.max_new_tokens)
    # With beta = 0 a completion whose advantage is exactly 0 (every member of an all-equal group)
    # has zero loss and zero gradient: leave it out of the forward and backward passes. The
    # normalisers above still count it, so the update is the same (tested to 1e-6). A completion not
    # trained on is left out too, whatever beta.
    # Not under FSDP or DeepSpeed: there every process must run the same number of forward and backward passes
    # (a left-out completion then runs with an all-zero loss mask).
    skip_zero = cfg.skip_zero_advantage and cfg.beta == 0.0 and not backend.lockstep
    skip_left_out = left_out_B is not None and not backend.lockstep
    active = [i for i in range(len(tokens)) if not (skip_zero and advantages_B[i].item() == 0.0)
              and not (skip_left_out and left_out_B[i])]
    lengths_B = rollout.completion_lengths_B[active] if active else None
    chunks = [[active[j] for j in chunk] for chunk in micro_batches(len(active), config.optim.micro_batch_size,
                                                                    lengths_B)]

    ref_logps = [None] * len(chunks)
    started = time.perf_counter()
    if cfg.beta != 0.0:
        with torch.no_grad():
            ref_logps = [token_logprobs(ref_model, tokens.select(rows), temperature, share,
                                        lockstep=backend.collective(ref_model)) for rows in chunks]
    reference_seconds = time.perf_counter() - started

    old_logps: list[torch.Tensor | None] = [None] * len(chunks)
    # Tokens drawn by another engine (vLLM): weight the surrogate by pi_old / pi_sampler, capped.
    correction = config.vllm.importance_correction if rollout.external_sampler else "none"
    is_weights: list[torch.Tensor | None] = [None] * len(chunks)
    totals = {"loss": 0.0, "clipped_tokens": 0.0, "kl_sum": 0.0, "tokens": 0.0, "grad_norm": 0.0,
              "is_weight_sum": 0.0, "is_over_cap": 0.0, "sampler_gap_sum": 0.0}
    skipped = trailing_skips = 0
    for iteration in range(cfg.num_iterations):
        iteration_loss = 0.0
        for i, rows in enumerate(chunks):
            batch = tokens.select(rows)
            logp_BT = token_logprobs(model, batch, temperature, share, lockstep=backend.collective(model))
            if iteration == 0:
                # pi_old is the policy that sampled: numerically the current one (ratio 1, with gradient).
                old_logps[i] = logp_BT.detach()
                if correction != "none":
                    is_weights[i] = _sampler_correction(old_logps[i], rollout, rows, batch, correction,
                                                        config.vllm.importance_cap, totals)
            loss_mask_BT = (batch.trained_mask_BC if left_out_B is None
                            else mask_BC[rows, : batch.trained_mask_BC.shape[1]])
            loss, metrics = policy_loss(logp_BT, old_logps[i], advantages_B[rows], loss_mask_BT, norm,
                                        ref_logps[i], is_weights[i])
            # the loss is already normalised by the whole batch: no accumulation scaling
            backend.backward(model, loss, last=i == len(chunks) - 1)
            iteration_loss += loss.item()
            for key in ("clipped_tokens", "kl_sum", "tokens"):
                totals[key] += metrics[key]
        if not chunks:  # every sample skipped: step on zero gradients, exactly as if they had been computed
            for param in model.parameters():
                if param.requires_grad:
                    param.grad = torch.zeros_like(param)
        grad_norm, stepped = backend.step(model, optimizer, scheduler, config.optim.max_grad_norm,
                                          loss_is_finite=math.isfinite(iteration_loss))
        skipped += not stepped
        trailing_skips = 0 if stepped else trailing_skips + 1
        totals["loss"] += iteration_loss
        totals["grad_norm"] += grad_norm
    iterations = cfg.num_iterations
    totals = {key: w.sum(value) if key != "grad_norm" else value for key, value in totals.items()}  # grad norm: global
    return {
        "optimizer_steps": iterations,
        "loss": totals["loss"] / iterations,
        "grad_norm": totals["grad_norm"] / iterations,
        "skipped_updates": skipped,
        "trailing_skips": trailing_skips,  # skips since the last optimiser step that went through
        "kl": totals["kl_sum"] / max(totals["tokens"], 1) if cfg.beta != 0.0 else None,  # not measured
        "clip_fraction": totals["clipped_tokens"] / max(totals["tokens"], 1),
        "tokens_backpropagated": int(totals["tokens"]),
        "time_reference": reference_seconds,  # the no-grad reference pass, part of time_training
        **({} if correction == "none" else {  # per token of the first iteration (the weights are fixed after it)
            "is_weight_mean": totals["is_weight_sum"] / max(totals["tokens"] / iterations, 1),
            "is_over_cap_fraction": totals["is_over_cap"] / max(totals["tokens"] / iterations, 1),
            "sampler_logprob_gap": totals["sampler_gap_sum"] / max(totals["tokens"] / iterations, 1),
        }),
    }


def _sampler_correction(old_logp_BT, rollout: Rollout, rows: list[int], batch, mode: str, cap: float,
                        totals: dict) -> torch.Tensor:
    """Importance weights of one micro-batch, and their sums for the metrics."""
    mask_BT = batch.trained_mask_BC.to(old_logp_BT.dtype)
    sampling_BT = rollout.sampling_logprobs_BC[rows, : mask_BT.shape[1]].to(old_logp_BT.device)
    weights_BT, over_BT = sampler_importance_weights(old_logp_BT, sampling_BT, mask_BT, mode, cap)
    totals["is_weight_sum"] += (weights_BT * mask_BT).sum().item()
    totals["is_over_cap"] += (over_BT * mask_BT).sum().item()
    gap_BT = torch.nan_to_num((old_logp_BT - sampling_BT).abs(), nan=0.0)
    totals["sampler_gap_sum"] += (gap_BT * mask_BT).sum().item()
    return weights_BT


class GRPO(Method):
    """Group-normalised advantages (grpo.baseline, grpo.scale_by_std), clipped surrogate, optional KL."""

    min_group_size = 2
    can_shard = True
    advantage_rule: dict = {}
    takes_sampler_correction = True  # vLLM's importance correction is defined on GRPO's token surrogate

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if not cls.takes_sampler_correction:
            _refuse_sampler_correction(config)

    @classmethod
    def needs_reference(cls, config) -> bool:
        return config.grpo.beta != 0.0

    def optimizer_steps_per_step(self) -> int:
        return self.config.grpo.num_iterations

    def policy_loss(self) -> PolicyLoss:
        return grpo_policy_loss(self.config)

    def update(self, optimizer, scheduler, ref_model, data: ScoredGroups) -> UpdateResult:
        advantages_B, _ = compute_advantages(data.rewards_B, data.group_size, self.config.grpo,
                                             scored_B=data.scored_B, **self.advantage_rule)
        metrics = grpo_update(self.model, optimizer, scheduler, data.rollout, advantages_B, self.config, self.backend,
                              ref_model, policy_loss=self.policy_loss(), trained_B=data.scored_B)
        return UpdateResult(metrics, advantages_B)


class RLOO(GRPO):
    """REINFORCE leave-one-out: baseline = mean of the other G-1 rewards, no std scaling."""

    advantage_rule = {"baseline": "leave_one_out", "scale_by_std": False}


class GSPO(GRPO):
    """GRPO's group advantages with a sequence-level ratio, clipped per sequence (Zheng et al. 2025)."""

    takes_sampler_correction = False

    def policy_loss(self) -> PolicyLoss:
        g, cfg = self.config.gspo, self.config.grpo

        def loss(logp_BT, old_logp_BT, advantages_B, mask_BT, norm, ref_logp_BT, is_weights_BT):
            return gspo_loss(logp_BT, old_logp_BT, advantages_B, mask_BT, norm, clip_low=g.clip_low,
                             clip_high=g.clip_high, level=g.level, beta=cfg.beta, ref_logp_BT=ref_logp_BT,
                             kl_estimator=cfg.kl_estimator, aggregation=g.aggregation)
        return loss


class CISPO(GRPO):
    """GRPO's group advantages; every token trained with a clipped, detached IS weight (MiniMax-M1)."""

    takes_sampler_correction = False

    def policy_loss(self) -> PolicyLoss:
        c, cfg = self.config.cispo, self.config.grpo

        def loss(logp_BT, old_logp_BT, advantages_B, mask_BT, norm, ref_logp_BT, is_weights_BT):
            return cispo_loss(logp_BT, old_logp_BT, advantages_B, mask_BT, norm, clip_low=c.clip_low,
                              clip_high=c.clip_high, beta=cfg.beta, ref_logp_BT=ref_logp_BT,
                              kl_estimator=cfg.kl_estimator, aggregation=cfg.aggregation)
        return loss


def _refuse_sampler_correction(config) -> None:
    """vLLM's truncated importance sampling is defined on GRPO's token surrogate; these losses have
    their own ratios, and folding a second weight in is not a formula we can cite."""
    if config.sampling.engine == "vllm" and config.vllm.importance_correction != "none":
        raise GrpokitError(f"train.method={config.train.method} with sampling.engine=vllm needs "
                           "vllm.importance_correction=none (the correction is defined for grpo's token-level "
                           "surrogate only).")
