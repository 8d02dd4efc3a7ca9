"""Turning a group's rewards into per-completion advantages (ALGORITHMS.md, "Advantages").

Every token of completion i gets A_i. Baselines are data, not branches: a name maps to a
function of the (num_groups, G) reward table.

A completion whose verification failed (timeout, crash: `scored_NG` False) has no reward: it is
left out of its group's statistics and gets advantage exactly 0, rather than counting as a wrong
answer (reward 0) that pulls the baseline down.
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


# The same over the scored members only: r0_NG holds 0 where unscored, k_N1 is the number scored.
def _scored_mean(r0_NG: torch.Tensor, k_N1: torch.Tensor) -> torch.Tensor:
    return r0_NG.sum(dim=1, keepdim=True) / k_N1.clamp(min=1)


def _scored_leave_one_out_mean(r0_NG: torch.Tensor, k_N1: torch.Tensor) -> torch.Tensor:
    """Mean of the other scored rewards (meaningful for scored members of groups with k >= 2)."""
    return (r0_NG.sum(dim=1, keepdim=True) - r0_NG) / (k_N1 - 1).clamp(min=1)


SCORED_BASELINES = {"mean": _scored_mean, "leave_one_out": _scored_leave_one_out_mean}


def group_advantages(
    rewards_NG: torch.Tensor,
    *,
    baseline: str = "mean",
    scale_by_std: bool = True,
    eps: float = 1e-4,
    scored_NG: torch.Tensor | None = None,
) -> torch.Tensor:
    """A_i = (r_i - baseline_i) / (std(group) + eps) if scale_by_std else r_i - baseline_i.

    rewards_NG: N groups of G rewards. std is the unbiased group std, as in TRL, and eps guards
    all-equal groups (their numerator is exactly 0, so their advantage stays exactly 0).
    scored_NG: optional (N, G) bool, True where the completion's verification succeeded. Unscored
    members are left out of the baseline and the std (k scored members: mean over k, leave-one-out
    over k - 1, std with k - 1 in the denominator) and get exactly 0; their reward entries are never
    read, so they may hold anything (NaN included). A group with fewer than 2 scored members has no
    signal: all 0. A fully scored group gets bit for bit what it gets without `scored_NG`.

    >>> group_advantages(torch.tensor([[1.0, 0.0]]), scale_by_std=False)
    tensor([[ 0.5000, -0.5000]])
    >>> group_advantages(torch.tensor([[1.0, 5.0, 0.0]]), scale_by_std=False,
    ...                  scored_NG=torch.tensor([[True, False, True]]))
    tensor([[ 0.5000,  0.0000, -0.5000]])
    """
    if rewards_NG.shape[1] < 2:
        raise ValueError("group advantages need a group size of at least 2")
    if scored_NG is not None:
        scored_NG = scored_NG.to(torch.bool)
        if bool(scored_NG.all()):
            scored_NG = None  # everything scored: exactly the computation without a mask
    advantages_NG = rewards_NG - BASELINES[baseline](rewards_NG)
    if scale_by_std:
        advantages_NG = advantages_NG / (rewards_NG.std(dim=1, keepdim=True) + eps)
    if scored_NG is not None:
        # Fully scored groups keep the expression above (bit for bit); the others use the masked one.
        fully_scored_N1 = scored_NG.all(dim=1, keepdim=True)
        advantages_NG = torch.where(fully_scored_N1, advantages_NG,
                                    _scored_advantages(rewards_NG, scored_NG, baseline, scale_by_std, eps))
    # An all-equal group carries no signal, but its float mean need not equal its members
    # (8 x 0.1 sums to 0.8000001): r - mean would be ~1e-8, scaled by 1/eps into noise of ~1e-4.
    no_signal_N1 = zero_variance_groups(rewards_NG, scored_NG)[:, None]
    if scored_NG is None:
        return torch.where(no_signal_N1, 0.0, advantages_NG)
    return torch.where(no_signal_N1 | ~scored_NG, 0.0, advantages_NG)


def _scored_advantages(rewards_NG: torch.Tensor, scored_NG: torch.Tensor, baseline: str, scale_by_std: bool,
                       eps: float) -> torch.Tensor:
    """group_advantages over the scored members only; entries at unscored members are not meaningful."""
    r0_NG = torch.where(scored_NG, rewards_NG, 0.0)  # unscored rewards (maybe NaN) never reach a sum
    k_N1 = scored_NG.sum(dim=1, keepdim=True).to(rewards_NG.dtype)
    advantages_NG = r0_NG - SCORED_BASELINES[baseline](r0_NG, k_N1)
    if scale_by_std:
        centred_NG = torch.where(scored_NG, r0_NG - _scored_mean(r0_NG, k_N1), 0.0)
        std_N1 = ((centred_NG**2).sum(dim=1, keepdim=True) / (k_N1 - 1).clamp(min=1)).sqrt()  # unbiased
        advantages_NG = advantages_NG / (std_N1 + eps)
    return advantages_NG


def zero_variance_groups(rewards_NG: torch.Tensor, scored_NG: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) bool: groups that carry no policy-gradient signal: their (scored) rewards are all equal,
    or fewer than 2 of them are scored (`scored_NG` as in `group_advantages`; None: all scored)."""
    if scored_NG is None:
        return (rewards_NG == rewards_NG[:, :1]).all(dim=1)
    scored_NG = scored_NG.to(torch.bool)
    lowest_N = torch.where(scored_NG, rewards_NG, torch.inf).amin(dim=1)
    highest_N = torch.where(scored_NG, rewards_NG, -torch.inf).amax(dim=1)
    return (scored_NG.sum(dim=1) < 2) | (lowest_N == highest_N)
