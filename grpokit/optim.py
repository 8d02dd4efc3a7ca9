"""Optimiser, learning-rate schedule and the optimiser step, shared by every method."""

from __future__ import annotations

import math

import torch

from grpokit import zero
from grpokit.config import OptimConfig
from grpokit.distributed import world
from grpokit.sharding import is_sharded, sum_sharded_gradients


def build_optimizer(model, cfg: OptimConfig, lr: float | None = None) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr if lr is None else lr, weight_decay=cfg.weight_decay,
                             betas=(cfg.adam_beta1, cfg.adam_beta2))


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))  # cosine


def build_scheduler(optimizer, total_steps: int, *, warmup_steps: int, schedule: str
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, warmup_steps=warmup_steps, total_steps=total_steps, schedule=schedule),
    )


def optimizer_step(model, optimizer, scheduler, max_grad_norm: float, loss_is_finite: bool = True
                   ) -> tuple[float, bool]:
    """Clip, step, advance the schedule, clear gradients; returns (pre-clip gradient norm, stepped).

    A non-finite loss or gradient norm skips the step entirely: parameters, optimizer state and
    schedule stay exactly as they were (a NaN must never reach Adam's moment estimates).
    """
    if zero.engine_of(model) is not None:  # DeepSpeed clips, skips non-finite steps and clears the gradients
        grad_norm, stepped = zero.step(model)
        if stepped and scheduler is not None:
            scheduler.step()
        return grad_norm, stepped
    w = world()
    if is_sharded(model):  # FSDP reduce-scattered the gradients (averaged): each process holds its shard's
        sum_sharded_gradients(model, w.size)
    elif w.size > 1:  # every process sums the same tensors, also one whose rows gave it no gradient
        trainable = [p for p in model.parameters() if p.requires_grad]
        used = torch.tensor([float(p.grad is not None) for p in trainable])
        used_anywhere = w.sum_tensor(used) > 0
        for p in trainable:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        w.sum_gradients(trainable)
        for p, anywhere in zip(trainable, used_anywhere.tolist()):
            if not anywhere:  # no process used it: leave it exactly as one process would (no decay, no momentum)
                p.grad = None
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.tensor(0.0)
    if hasattr(grad_norm, "full_tensor"):  # a sharded model's norm is a DTensor, reduced over every shard
        grad_norm = grad_norm.full_tensor()
    if not (w.all_finite(0.0 if loss_is_finite else math.nan) and torch.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        return grad_norm.item(), False
    if max_grad_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.item(), True
