"""Loss functions: pure functions of tensors, no model, config or I/O (ALGORITHMS.md).

Shapes: B sequences in a micro-batch, T completion tokens. `mask_BT` is 1 on completion tokens
(EOS included). Every loss returns (loss, metrics) where the loss is already divided by the
normaliser of the *whole* batch, so summing micro-batch losses and calling backward on each
gives exactly the gradient of the full batch (gradient accumulation needs no extra scaling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossNormalizers:
    """Sizes of the whole optimisation batch, which normalisers are computed from."""

    num_sequences: int  # sequences in the batch (all micro-batches together)
    num_tokens: int  # completion tokens in the batch
    max_len: int  # the constant L of Dr. GRPO (usually max_new_tokens)


def _sequence_mean(loss_BT, mask_BT, norm: LossNormalizers):
    """Original GRPO: mean over each sequence's tokens, then over sequences."""
    per_sequence_B = (loss_BT * mask_BT).sum(-1) / mask_BT.sum(-1).clamp(min=1)
    return per_sequence_B.sum() / norm.num_sequences


def _token_mean(loss_BT, mask_BT, norm: LossNormalizers):
    """DAPO: every completion token of the batch weighs the same."""
    return (loss_BT * mask_BT).sum() / max(norm.num_tokens, 1)


def _constant(loss_BT, mask_BT, norm: LossNormalizers):
    """Dr. GRPO: a constant normaliser (sequences x max length), free of length bias."""
    return (loss_BT * mask_BT).sum() / (norm.num_sequences * norm.max_len)


AGGREGATIONS = {"sequence": _sequence_mean, "token": _token_mean, "constant": _constant}


def k3_kl(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per token: exp(x) - x - 1, x = ref - logp.

    On tokens sampled from pi_theta its *value* is unbiased for KL(pi_theta || pi_ref), but its expected
    *gradient* (samples held fixed, as in the loss) is that of the other direction, KL(pi_ref || pi_theta):
    E_y~pi[grad k3] = sum_y pi (1 - pi_ref / pi) grad log pi = -sum_y pi_ref grad log pi
    (Schulman, "Approximating KL Divergence", 2020; tests/test_losses_gspo_cispo.py checks it exactly).
    """
    x = ref_logp_BT - logp_BT
    # expm1(x) - x == exp(x) - 1 - x without the cancellation that rounds small KLs to 0 in float32
    return torch.expm1(x) - x


def k2_kl(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """Schulman's k2 estimator per token: 0.5 (logp - ref)^2.

    Its value is biased for KL(pi_theta || pi_ref) (right to second order in logp - ref only), but its
    expected gradient with samples held fixed is exactly that of the reverse KL(pi_theta || pi_ref):
    E_y~pi[(log pi - log pi_ref) grad log pi] = grad sum_y pi (log pi - log pi_ref), since E_pi[grad log pi] = 0.
    """
    return 0.5 * (logp_BT - ref_logp_BT) ** 2


KL_ESTIMATORS = {"k3": k3_kl, "k2": k2_kl}


def _add_kl_and_aggregate(
    per_token_BT: torch.Tensor,
    logp_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    norm: LossNormalizers,
    aggregation: str,
    beta: float,
    ref_logp_BT: torch.Tensor | None,
    kl_estimator: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """loss = aggregation(per-token loss + beta * KL): the tail shared by the policy losses.

    Returns (loss, kl_BT), kl_BT None when beta == 0 (no reference model needed then).
    """
    kl_BT = None
    if beta != 0.0:
        if ref_logp_BT is None:
            raise ValueError("beta != 0 needs reference log-probs")
        kl_BT = KL_ESTIMATORS[kl_estimator](logp_BT, ref_logp_BT)
        per_token_BT = per_token_BT + beta * kl_BT
    return AGGREGATIONS[aggregation](per_token_BT, mask_BT, norm), kl_BT


def _clipped_surrogate(
    ratio_BT: torch.Tensor, adv_BT: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token -min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A), shared by GRPO and PPO.

    Also returns where the min took the clipped term (as 0/1 in ratio's dtype), for the metrics.
    adv_BT may be (B, 1): GRPO gives every token of a sequence the same advantage.
    """
    unclipped_BT = ratio_BT * adv_BT
    clipped_BT = torch.clamp(ratio_BT, 1 - clip_low, 1 + clip_high) * adv_BT
    is_clipped_BT = (clipped_BT < unclipped_BT).to(ratio_BT.dtype)  # the min took the clipped term
    return -torch.minimum(unclipped_BT, clipped_BT), is_clipped_BT


def sampler_importance_weights(old_logp_BT: torch.Tensor, sampling_logp_BT: torch.Tensor, mask_BT: torch.Tensor,
                               mode: str, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance sampling for a sampler that is not the trainer (Yao et al. 2025, "Your
    efficient RL framework secretly brings you off-policy RL training").

    vLLM draws tokens from pi_sampler, which differs from the trainer's pi_old (other kernels,
    precision, weights one sync behind); the policy-gradient estimate needs the ratio
    w = pi_old / pi_sampler, which is capped at `cap` to bound its variance:
      token_truncate     w_t = min(exp(old_t - sampler_t), cap)
      token_mask         w_t = exp(old_t - sampler_t), or 0 where it exceeds cap
      sequence_truncate  w = min(exp(sum_t (old_t - sampler_t)), cap), for every token of the sequence
      sequence_mask      w = exp(sum_t ...), or 0 where it exceeds cap
    A NaN sampler log-prob (not reported by the sampler) counts as agreement (weight factor 1).
    Returns (weights_BT, exceeded_BT): the detached weights, and 0/1 where the ratio went over the cap.
    """
    with torch.no_grad():
        mask_BT = mask_BT.to(old_logp_BT.dtype)
        diff_BT = torch.nan_to_num(old_logp_BT.float() - sampling_logp_BT.float(), nan=0.0) * mask_BT
        if mode.startswith("sequence"):
            diff_BT = diff_BT.sum(-1, keepdim=True).expand_as(diff_BT)
        ratio_BT = torch.exp(diff_BT)
        exceeded_BT = (ratio_BT > cap).to(old_logp_BT.dtype)
        if mode.endswith("truncate"):
            weights_BT = ratio_BT.clamp(max=cap)
        else:
            weights_BT = torch.where(ratio_BT > cap, torch.zeros_like(ratio_BT), ratio_BT)
        return weights_BT.to(old_logp_BT.dtype), exceeded_BT


def grpo_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    norm: LossNormalizers,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    beta: float = 0.0,
    ref_logp_BT: torch.Tensor | None = None,
    aggregation: str = "token",
    is_weights_BT: torch.Tensor | None = None,
    kl_estimator: str = "k3",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate minus beta * KL (`kl_estimator`: "k3" or "k2"), aggregated by `aggregation`; as a loss.

    Per token: s = min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A), rho = exp(logp - old).
    With one update per rollout, pass old_logp_BT = logp_BT.detach(): rho == 1 with gradient.
    `is_weights_BT` (detached; `sampler_importance_weights`) multiplies the surrogate, not the KL term.
    Metrics are sums over this micro-batch (the trainer adds them up and divides at the end).
    """
    mask_BT = mask_BT.to(logp_BT.dtype)
    ratio_BT = torch.exp(logp_BT - old_logp_BT)
    per_token_BT, is_clipped_BT = _clipped_surrogate(ratio_BT, advantages_B[:, None], clip_low, clip_high)
    if is_weights_BT is not None:
        per_token_BT = per_token_BT * is_weights_BT
    loss, kl_BT = _add_kl_and_aggregate(per_token_BT, logp_BT, mask_BT, norm, aggregation, beta, ref_logp_BT,
                                        kl_estimator)
    with torch.no_grad():
        metrics = {
            "clipped_tokens": (is_clipped_BT * mask_BT).sum().item(),
            "kl_sum": 0.0 if kl_BT is None else (kl_BT * mask_BT).sum().item(),
            "tokens": mask_BT.sum().item(),
        }
    return loss, metrics


def _sequence_ratio(logp_BT: torch.Tensor, seq_log_ratio_B: torch.Tensor) -> torch.Tensor:
    """GSPO: one ratio per sequence, s_i = exp(mean_t log rho_{i,t}), shape (B, 1); its gradient is
    s_i (1 / |o_i|) sum_t grad logp_{i,t}."""
    return torch.exp(seq_log_ratio_B)[:, None]


def _sequence_token_ratio(logp_BT: torch.Tensor, seq_log_ratio_B: torch.Tensor) -> torch.Tensor:
    """GSPO-token: s_{i,t} = sg(s_i) pi(y_t) / sg(pi(y_t)), shape (B, T). Its value is s_i on every token
    (logp - sg(logp) is exactly 0); its gradient on token t is s_i grad logp_{i,t}."""
    return torch.exp(seq_log_ratio_B.detach()[:, None] + (logp_BT - logp_BT.detach()))


GSPO_LEVELS = {"sequence": _sequence_ratio, "sequence_token": _sequence_token_ratio}


def gspo_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    norm: LossNormalizers,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    level: str = "sequence",
    beta: float = 0.0,
    ref_logp_BT: torch.Tensor | None = None,
    kl_estimator: str = "k3",
    aggregation: str = "sequence",
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): the clipped surrogate on a sequence-level ratio.

    s_i = exp((1 / |o_i|) sum_t m_{i,t} (logp - old_logp)); per sequence
    loss_i = -min(s_i A_i, clip(s_i, 1 - clip_low, 1 + clip_high) A_i), given to each of its tokens, plus
    beta * KL per token as in `grpo_loss`, then aggregated by `aggregation`. The default "sequence" is the
    paper's (1 / G) sum_i; "token" or "constant" weigh each sequence by its length (TRL warns about this).
    Defaults clip_low = 3e-4, clip_high = 4e-4 are the paper's: the log-ratio is a per-token mean, so tiny.
    `level` "sequence_token" is GSPO-token (s_{i,t} = sg(s_i) pi(y_t) / sg(pi(y_t))): the same value,
    clipping decision and, with one advantage per sequence, gradient; it lets A vary per token later.
    A sequence is clipped as a whole: metrics count clipped_sequences (sequences with at least one token)
    and clipped_tokens (the tokens of those sequences, so clipped_tokens / tokens is comparable to
    grpo_loss's clip fraction). Metrics are sums over this micro-batch.
    """
    mask_BT = mask_BT.to(logp_BT.dtype)
    # padding may hold any finite log-prob: mask before the mean
    seq_log_ratio_B = ((logp_BT - old_logp_BT) * mask_BT).sum(-1) / mask_BT.sum(-1).clamp(min=1)
    ratio_BX = GSPO_LEVELS[level](logp_BT, seq_log_ratio_B)  # X = 1 ("sequence") or T ("sequence_token")
    per_token_BX, is_clipped_BX = _clipped_surrogate(ratio_BX, advantages_B[:, None], clip_low, clip_high)
    per_token_BT = per_token_BX.expand_as(mask_BT)
    loss, kl_BT = _add_kl_and_aggregate(per_token_BT, logp_BT, mask_BT, norm, aggregation, beta, ref_logp_BT,
                                        kl_estimator)
    with torch.no_grad():
        has_tokens_B = (mask_BT.sum(-1) > 0).to(mask_BT.dtype)
        is_clipped_B = is_clipped_BX.expand_as(mask_BT)[:, 0]  # one decision per sequence at both levels
        metrics = {
            "clipped_sequences": (is_clipped_B * has_tokens_B).sum().item(),
            "clipped_tokens": (is_clipped_B[:, None] * mask_BT).sum().item(),
            "kl_sum": 0.0 if kl_BT is None else (kl_BT * mask_BT).sum().item(),
            "sequences": has_tokens_B.sum().item(),
            "tokens": mask_BT.sum().item(),
        }
    return loss, metrics


def cispo_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    norm: LossNormalizers,
    *,
    clip_low: float | None = None,
    clip_high: float = 4.0,
    beta: float = 0.0,
    ref_logp_BT: torch.Tensor | None = None,
    kl_estimator: str = "k3",
    aggregation: str = "token",
) -> tuple[torch.Tensor, dict[str, float]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): clip the importance weight, not the update.

    Per token: loss = -sg(clip(rho, 1 - clip_low, 1 + clip_high)) A_i logp, rho = exp(logp - old_logp); the
    weight is detached, so every token keeps the gradient -w A grad logp (PPO's clip drops clipped tokens'
    gradients). Plus beta * KL per token as in `grpo_loss`; aggregated by `aggregation` (the paper's
    1 / sum_i |o_i| is "token"). The loss value is -w A logp, not a surrogate of the return.
    clip_low = None puts no lower bound on the weight: MiniMax only tunes the upper one in practice, and TRL
    clamps only from above (`clamp(rho, max=epsilon_high)`). Note TRL's epsilon_high is the cap itself
    (recommended 5.0, from ScaleRL), where ours is 1 + clip_high: the default clip_high = 4.0 is that same cap.
    Metric clipped_tokens counts tokens whose weight was clamped (either side, whatever the sign of A).
    """
    mask_BT = mask_BT.to(logp_BT.dtype)
    with torch.no_grad():
        ratio_BT = torch.exp(logp_BT - old_logp_BT)
        weight_BT = torch.clamp(ratio_BT, None if clip_low is None else 1 - clip_low, 1 + clip_high)
        is_clipped_BT = (weight_BT != ratio_BT).to(mask_BT.dtype)
    per_token_BT = -weight_BT * advantages_B[:, None] * logp_BT
    loss, kl_BT = _add_kl_and_aggregate(per_token_BT, logp_BT, mask_BT, norm, aggregation, beta, ref_logp_BT,
                                        kl_estimator)
    with torch.no_grad():
        metrics = {
            "clipped_tokens": (is_clipped_BT * mask_BT).sum().item(),
            "kl_sum": 0.0 if kl_BT is None else (kl_BT * mask_BT).sum().item(),
            "tokens": mask_BT.sum().item(),
        }
    return loss, metrics


def sft_loss(
    logp_BT: torch.Tensor, mask_BT: torch.Tensor, norm: LossNormalizers
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on target completion tokens only (prompt tokens are not in mask_BT),
    averaged over all target tokens of the batch."""
    mask_BT = mask_BT.to(logp_BT.dtype)
    loss = -(logp_BT * mask_BT).sum() / max(norm.num_tokens, 1)
    return loss, {"tokens": mask_BT.sum().item()}


def ppo_policy_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    norm: LossNormalizers,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) with per-token advantages (e.g. from `gae`).

    loss = -(1 / num_tokens) sum_{i,t} m_{i,t} min(rho A_{i,t}, clip(rho, 1 - clip_low, 1 + clip_high) A_{i,t}),
    rho = exp(logp - old_logp); num_tokens is the whole batch's (token-level aggregation, as DAPO).
    """
    mask_BT = mask_BT.to(logp_BT.dtype)
    ratio_BT = torch.exp(logp_BT - old_logp_BT)
    per_token_BT, is_clipped_BT = _clipped_surrogate(ratio_BT, advantages_BT, clip_low, clip_high)
    loss = _token_mean(per_token_BT, mask_BT, norm)
    with torch.no_grad():
        metrics = {"clipped_tokens": (is_clipped_BT * mask_BT).sum().item(), "tokens": mask_BT.sum().item()}
    return loss, metrics


def sequence_logprob(logp_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """log pi(y) = sum_t m_t log pi(y_t | x, y_<t): the completion's log-probability, shape (B,) (DPO)."""
    return (logp_BT * mask_BT.to(logp_BT.dtype)).sum(-1)


def mean_logprob(logp_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """(1 / |y|) sum_t m_t log pi(y_t | x, y_<t): length-normalised log-probability, shape (B,) (ORPO's log P)."""
    mask_BT = mask_BT.to(logp_BT.dtype)
    return (logp_BT * mask_BT).sum(-1) / mask_BT.sum(-1).clamp(min=1)


def dpo_loss(
    policy_chosen_B: torch.Tensor,
    policy_rejected_B: torch.Tensor,
    ref_chosen_B: torch.Tensor,
    ref_rejected_B: torch.Tensor,
    *,
    beta: float = 0.1,
    num_pairs: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid DPO (Rafailov et al. 2023, arXiv 2305.18290) on sequence log-probs (`sequence_logprob`).

    Implicit rewards r_w = beta (log pi(y_w) - log ref(y_w)), r_l = beta (log pi(y_l) - log ref(y_l));
    loss = (1 / num_pairs) sum_pairs -log sigmoid(r_w - r_l), num_pairs counted over the whole batch.
    Metrics are sums over this micro-batch: reward_margin (r_w - r_l), accuracy (pairs with r_w > r_l),
    chosen_reward (r_w), rejected_reward (r_l), pairs.
    """
    chosen_reward_B = beta * (policy_chosen_B - ref_chosen_B)
    rejected_reward_B = beta * (policy_rejected_B - ref_rejected_B)
    margin_B = chosen_reward_B - rejected_reward_B
    # logsigmoid, not log(sigmoid(.)): sigmoid underflows to 0 for margins below about -100 in float32
    loss = -F.logsigmoid(margin_B).sum() / max(num_pairs, 1)
    with torch.no_grad():
        metrics = {
            "reward_margin": margin_B.sum().item(),
            "accuracy": (margin_B > 0).sum().item(),
            "chosen_reward": chosen_reward_B.sum().item(),
            "rejected_reward": rejected_reward_B.sum().item(),
            "pairs": float(margin_B.numel()),
        }
    return loss, metrics


def _log_odds(logp_B: torch.Tensor) -> torch.Tensor:
    """log(P / (1 - P)) from log P; log(1 - P) = log(-expm1(log P)), exact for P near 1 as well as near 0."""
    # P = 1 exactly (every token certain) would give log 0 = -inf: keep log P just below 0
    logp_B = logp_B.clamp(max=-1e-7)
    return logp_B - torch.log(-torch.expm1(logp_B))


def orpo_loss(
    chosen_logp_BT: torch.Tensor,
    chosen_mask_BT: torch.Tensor,
    rejected_logp_BT: torch.Tensor,
    rejected_mask_BT: torch.Tensor,
    norm_tokens: int,
    num_pairs: int,
    *,
    lam: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ORPO (Hong et al. 2024, arXiv 2403.07691): NLL on the chosen completion plus an odds-ratio term, no reference.

    log P(y) = mean_logprob (length-normalised); log odds(y) = log P - log(1 - P);
    L_OR = -log sigmoid(log odds(y_w) - log odds(y_l));
    loss = (1 / norm_tokens) sum chosen-token NLL + lam (1 / num_pairs) sum_pairs L_OR,
    norm_tokens = chosen tokens and num_pairs = pairs of the whole batch (so micro-batch losses add up).
    Metrics are sums over this micro-batch: nll, or_loss, log_odds_ratio, chosen_tokens.
    """
    chosen_mask_BT = chosen_mask_BT.to(chosen_logp_BT.dtype)
    nll_sum = -(chosen_logp_BT * chosen_mask_BT).sum()
    log_odds_ratio_B = _log_odds(mean_logprob(chosen_logp_BT, chosen_mask_BT)) - _log_odds(
        mean_logprob(rejected_logp_BT, rejected_mask_BT)
    )
    or_loss_B = -F.logsigmoid(log_odds_ratio_B)
    loss = nll_sum / max(norm_tokens, 1) + lam * or_loss_B.sum() / max(num_pairs, 1)
    with torch.no_grad():
        metrics = {
            "nll": nll_sum.item(),
            "or_loss": or_loss_B.sum().item(),
            "log_odds_ratio": log_odds_ratio_B.sum().item(),
            "chosen_tokens": chosen_mask_BT.sum().item(),
        }
    return loss, metrics


@torch.no_grad()
def gae(
    rewards_BT: torch.Tensor,
    values_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv 1506.02438); returns (advantages, returns).

    delta_t = r_t + gamma V(t+1) - V(t); A_t = sum_l (gamma lam)^l delta_{t+l}; returns_t = A_t + V(t).
    mask_BT is 1 on a prefix of each row (completion tokens up to and including EOS): the episode ends at the
    last valid token, so V after it is 0 and nothing beyond it flows back. Masked positions get 0.
    No gradient: these are regression targets and fixed weights for the policy loss.
    """
    mask_BT = mask_BT.to(values_BT.dtype)
    rewards_BT = rewards_BT * mask_BT
    values_BT = values_BT * mask_BT  # V = 0 past the last valid token: no bootstrap from padding
    advantages_BT = torch.zeros_like(values_BT)
    next_value_B = torch.zeros_like(values_BT[:, 0])
    next_advantage_B = torch.zeros_like(values_BT[:, 0])
    for t in reversed(range(values_BT.shape[1])):  # A_t = delta_t + gamma lam A_{t+1}
        delta_B = rewards_BT[:, t] + gamma * next_value_B - values_BT[:, t]
        next_advantage_B = (delta_B + gamma * lam * next_advantage_B) * mask_BT[:, t]
        advantages_BT[:, t] = next_advantage_B
        next_value_B = values_BT[:, t]
    return advantages_BT, (advantages_BT + values_BT) * mask_BT


def ppo_value_loss(
    values_BT: torch.Tensor,
    old_values_BT: torch.Tensor,
    returns_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    norm: LossNormalizers,
    *,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss of PPO (Schulman et al. 2017; as in OpenAI baselines' ppo2), token mean over the batch.

    per token: 0.5 max((V - R)^2, (clip(V, V_old - clip, V_old + clip) - R)^2); loss = sum m * that / num_tokens.
    The clipped branch stops V moving more than `clip` from V_old in one rollout's updates.
    Metric value_clipped_tokens: tokens where the clipped branch is the larger (its gradient is then 0).
    """
    mask_BT = mask_BT.to(values_BT.dtype)
    clipped_values_BT = old_values_BT + torch.clamp(values_BT - old_values_BT, -clip, clip)
    unclipped_BT = (values_BT - returns_BT) ** 2
    clipped_BT = (clipped_values_BT - returns_BT) ** 2
    loss = _token_mean(0.5 * torch.maximum(unclipped_BT, clipped_BT), mask_BT, norm)
    with torch.no_grad():
        metrics = {
            "value_clipped_tokens": ((clipped_BT > unclipped_BT).to(mask_BT.dtype) * mask_BT).sum().item(),
            "tokens": mask_BT.sum().item(),
        }
    return loss, metrics
