"""Turning a group's rewards into per-completion advantages (ALGORITHMS.md, "Advantages").

Every token of completion i gets A_i. Baselines are data, not branches: a name maps to a
function of the (num_groups, G) reward table.
"""

from __future__ import annotations

import torch


def _group_mean(rewards_NG: torch.Tensor) -> torch.Tensor:
    return rewards_NG.mean(dim=1, keepdim=True)


def _leave_one_out_mean(rewards_NG: torch.Tensor) -> torch.Tensor:
    """Mean of the other G-1 rewards of the same group (RLOO)."""
    G = rewards_NG.shape[1]
    return (rewards_NG.sum(dim=1, keepdim=True) - rewards_NG) / (G - 1)


BASELINES = {"mean": _group_mean, "leave_one_out": _leave_one_out_mean}


def group_advantages(
    rewards_NG: torch.Tensor,
    *,
    baseline: str = "mean",
    scale_by_std: bool = True,
    eps: float = 1e-4,
) -> torch.Tensor:
    """A_i = (r_i - baseline_i) / (std(group) + eps) if scale_by_std else r_i - baseline_i.

    rewards_NG: N groups of G rewards. std is the unbiased group std, as in TRL, and eps guards
    all-equal groups (their numerator is exactly 0, so their advantage stays exactly 0).

    >>> group_advantages(torch.tensor([[1.0, 0.0]]), scale_by_std=False)
    tensor([[ 0.5000, -0.5000]])
    """
    if rewards_NG.shape[1] < 2:
        raise ValueError("group advantages need a group size of at least 2")
    advantages_NG = rewards_NG - BASELINES[baseline](rewards_NG)
    if scale_by_std:
        advantages_NG = advantages_NG / (rewards_NG.std(dim=1, keepdim=True) + eps)
    # An all-equal group carries no signal, but its float mean need not equal its members
    # (8 x 0.1 sums to 0.8000001): r - mean would be ~1e-8, scaled by 1/eps into noise of ~1e-4.
    return torch.where(zero_variance_groups(rewards_NG)[:, None], 0.0, advantages_NG)


def zero_variance_groups(rewards_NG: torch.Tensor) -> torch.Tensor:
    """(N,) bool: groups whose rewards are all equal, which carry no policy-gradient signal."""
    return (rewards_NG == rewards_NG[:, :1]).all(dim=1)
