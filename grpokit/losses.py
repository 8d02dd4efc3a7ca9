"""Loss functions: pure functions of tensors, no model, config or I/O (ALGORITHMS.md).

Shapes: B sequences in a micro-batch, T completion tokens. `mask_BT` is 1 on completion tokens
(EOS included). Every loss returns (loss, metrics) where the loss is already divided by the
normaliser of the *whole* batch, so summing micro-batch losses and calling backward on each
gives exactly the gradient of the full batch (gradient accumulation needs no extra scaling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchNorm:
    """Sizes of the whole optimisation batch, which normalisers are computed from."""

    num_sequences: int  # sequences in the batch (all micro-batches together)
    num_tokens: int  # completion tokens in the batch
    max_len: int  # the constant L of Dr. GRPO (usually max_new_tokens)


def _sequence_mean(loss_BT, mask_BT, norm: BatchNorm):
    """Original GRPO: mean over each sequence's tokens, then over sequences."""
    per_sequence_B = (loss_BT * mask_BT).sum(-1) / mask_BT.sum(-1).clamp(min=1)
    return per_sequence_B.sum() / norm.num_sequences


def _token_mean(loss_BT, mask_BT, norm: BatchNorm):
    """DAPO: every completion token of the batch weighs the same."""
    return (loss_BT * mask_BT).sum() / max(norm.num_tokens, 1)


def _constant(loss_BT, mask_BT, norm: BatchNorm):
    """Dr. GRPO: a constant normaliser (sequences x max length), free of length bias."""
    return (loss_BT * mask_BT).sum() / (norm.num_sequences * norm.max_len)


AGGREGATIONS = {"sequence": _sequence_mean, "token": _token_mean, "constant": _constant}


def k3_kl(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per token: exp(x) - x - 1, x = ref - logp."""
    x = ref_logp_BT - logp_BT
    # expm1(x) - x == exp(x) - 1 - x without the cancellation that rounds small KLs to 0 in float32
    return torch.expm1(x) - x


def grpo_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    norm: BatchNorm,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    beta: float = 0.0,
    ref_logp_BT: torch.Tensor | None = None,
    aggregation: str = "token",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate minus beta * k3 KL, aggregated by `aggregation`; returned as a loss.

    Per token: s = min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A), rho = exp(logp - old).
    With one update per rollout, pass old_logp_BT = logp_BT.detach(): rho == 1 with gradient.
    Metrics are sums over this micro-batch (the trainer adds them up and divides at the end).
    """
    mask_BT = mask_BT.to(logp_BT.dtype)
    ratio_BT = torch.exp(logp_BT - old_logp_BT)
    adv_BT = advantages_B[:, None]
    unclipped_BT = ratio_BT * adv_BT
    clipped_BT = torch.clamp(ratio_BT, 1 - clip_low, 1 + clip_high) * adv_BT
    per_token_BT = -torch.minimum(unclipped_BT, clipped_BT)
    kl_BT = None
    if beta != 0.0:
        if ref_logp_BT is None:
            raise ValueError("beta != 0 needs reference log-probs")
        kl_BT = k3_kl(logp_BT, ref_logp_BT)
        per_token_BT = per_token_BT + beta * kl_BT
    loss = AGGREGATIONS[aggregation](per_token_BT, mask_BT, norm)
    with torch.no_grad():
        is_clipped_BT = (clipped_BT < unclipped_BT).to(mask_BT.dtype)  # the min took the clipped term
        metrics = {
            "clipped_tokens": (is_clipped_BT * mask_BT).sum().item(),
            "kl_sum": 0.0 if kl_BT is None else (kl_BT * mask_BT).sum().item(),
            "tokens": mask_BT.sum().item(),
        }
    return loss, metrics


def sft_loss(logp_BT: torch.Tensor, mask_BT: torch.Tensor, norm: BatchNorm) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on target completion tokens only (prompt tokens are not in mask_BT),
    averaged over all target tokens of the batch."""
    mask_BT = mask_BT.to(logp_BT.dtype)
    loss = -(logp_BT * mask_BT).sum() / max(norm.num_tokens, 1)
    return loss, {"tokens": mask_BT.sum().item()}
