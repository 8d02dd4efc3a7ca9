"""Preference (DPO, ORPO) and PPO-with-value-model losses against values derived by hand in each test."""

import math

import pytest
import torch

from grpokit.losses import (
    LossNormalizers,
    dpo_loss,
    gae,
    grpo_loss,
    mean_logprob,
    orpo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    sequence_logprob,
)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_sequence_and_mean_logprob_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -100.0, -100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # sums over valid tokens: -1 - 2 - 3 = -6 and -4; means: -6 / 3 = -2 and -4 / 1 = -4
    torch.testing.assert_close(sequence_logprob(logp, mask), torch.tensor([-6.0, -4.0]))
    torch.testing.assert_close(mean_logprob(logp, mask), torch.tensor([-2.0, -4.0]))


# DPO, beta = 0.1, two pairs (policy chosen, policy rejected, ref chosen, ref rejected):
# pair 1: chosen gains 2 on the reference (-5 vs -7), rejected loses 1 (-9 vs -8): margin = 0.1 (2 - -1) = 0.3
# pair 2: chosen loses 1 (-4 vs -3), rejected gains 1 (-6 vs -7): margin = 0.1 (-1 - 1) = -0.2
DPO_PAIRS = (
    torch.tensor([-5.0, -4.0]),
    torch.tensor([-9.0, -6.0]),
    torch.tensor([-7.0, -3.0]),
    torch.tensor([-8.0, -7.0]),
)


def test_dpo_loss_and_metrics_by_hand():
    loss, m = dpo_loss(*DPO_PAIRS, beta=0.1, num_pairs=2)
    # -log sigmoid(0.3) = log(1 + e^-0.3) = 0.554355; -log sigmoid(-0.2) = log(1 + e^0.2) = 0.798139
    # mean over 2 pairs: (0.554355 + 0.798139) / 2 = 0.676247
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-0.3)) + math.log(1 + math.exp(0.2))) / 2)
    assert loss.item() == pytest.approx(0.676247, abs=1e-6)
    assert m["reward_margin"] == pytest.approx(0.3 - 0.2)
    assert m["accuracy"] == 1  # only pair 1 has a positive margin
    assert m["chosen_reward"] == pytest.approx(0.1 * 2 + 0.1 * -1)  # 0.1
    assert m["rejected_reward"] == pytest.approx(0.1 * -1 + 0.1 * 1, abs=1e-7)  # 0.0
    assert m["pairs"] == 2


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen, rejected, ref_chosen, ref_rejected = (t.clone().requires_grad_(i < 2) for i, t in enumerate(DPO_PAIRS))
    loss, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, num_pairs=2)
    loss.backward()
    # d/dz -log sigmoid(z) = -sigmoid(-z); dz/d chosen = beta, dz/d rejected = -beta; divided by 2 pairs:
    # pair 1: -0.1 sigmoid(-0.3) / 2 = -0.1 * 0.425557 / 2 = -0.021278
    # pair 2: -0.1 sigmoid(0.2) / 2 = -0.1 * 0.549834 / 2 = -0.027492
    expected = torch.tensor([-0.1 * sigmoid(-0.3) / 2, -0.1 * sigmoid(0.2) / 2])
    torch.testing.assert_close(chosen.grad, expected)
    torch.testing.assert_close(rejected.grad, -expected)
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen, lowers rejected


def test_dpo_micro_batches_add_up_to_the_batch_loss():
    # Each pair alone, normalised by the whole batch's 2 pairs: 0.554355 / 2 + 0.798139 / 2 = 0.676247
    parts = [dpo_loss(*(t[i:i + 1] for t in DPO_PAIRS), beta=0.1, num_pairs=2)[0].item() for i in range(2)]
    assert parts[0] == pytest.approx(math.log(1 + math.exp(-0.3)) / 2)
    assert parts[1] == pytest.approx(math.log(1 + math.exp(0.2)) / 2)
    assert sum(parts) == pytest.approx(0.676247, abs=1e-6)


def test_dpo_is_finite_for_a_huge_negative_margin():
    # margin = 0.1 (-1000 - 1000) = -200: -log sigmoid(-200) = 200 + log(1 + e^-200) = 200
    loss, _ = dpo_loss(torch.tensor([-1000.0]), torch.tensor([1000.0]), torch.zeros(1), torch.zeros(1),
                       beta=0.1, num_pairs=1)
    assert loss.item() == pytest.approx(200.0)


# ORPO, two pairs; rows are padded to 3 tokens (padding log-probs are garbage that the mask must hide).
# chosen 1: [-0.5, -0.5]        log P = -0.5  P = 0.606531  odds = 1.541494  log odds =  0.432752
# rejected 1: [-1, -2, -3]      log P = -2    P = 0.135335  odds = 0.156518  log odds = -1.854587
# chosen 2: [-1]                log P = -1    P = 0.367879  odds = 0.581977  log odds = -0.541325
# rejected 2: [-0.25] * 3       log P = -0.25 P = 0.778801  odds = 3.520812  log odds =  1.258692
CHOSEN = torch.tensor([[-0.5, -0.5, -7.0], [-1.0, -7.0, -7.0]])
CHOSEN_MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])
REJECTED = torch.tensor([[-1.0, -2.0, -3.0], [-0.25, -0.25, -0.25]])
REJECTED_MASK = torch.ones(2, 3)


def log_odds(log_p: float) -> float:
    return log_p - math.log(1 - math.exp(log_p))


def test_orpo_loss_by_hand():
    loss, m = orpo_loss(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK, norm_tokens=3, num_pairs=2, lam=0.1)
    # odds ratios: 0.432752 - (-1.854587) = 2.287339 and -0.541325 - 1.258692 = -1.800016
    r1, r2 = log_odds(-0.5) - log_odds(-2.0), log_odds(-1.0) - log_odds(-0.25)
    assert r1 == pytest.approx(2.287339, abs=1e-6) and r2 == pytest.approx(-1.800016, abs=1e-6)
    # L_OR = log(1 + e^-r): 0.096706 and 1.952992
    or1, or2 = math.log(1 + math.exp(-r1)), math.log(1 + math.exp(-r2))
    # NLL: chosen tokens 0.5 + 0.5 + 1 = 2 over 3 chosen tokens; total = 2/3 + 0.1 (0.096706 + 1.952992) / 2
    assert loss.item() == pytest.approx(2 / 3 + 0.1 * (or1 + or2) / 2)
    assert loss.item() == pytest.approx(0.769152, abs=1e-5)
    assert m["nll"] == pytest.approx(2.0)
    assert m["or_loss"] == pytest.approx(or1 + or2, rel=1e-5)
    assert m["log_odds_ratio"] == pytest.approx(r1 + r2, rel=1e-5)
    assert m["chosen_tokens"] == 3


def test_orpo_gradient_raises_chosen_and_lowers_rejected():
    chosen, rejected = CHOSEN.clone().requires_grad_(), REJECTED.clone().requires_grad_()
    loss, _ = orpo_loss(chosen, CHOSEN_MASK, rejected, REJECTED_MASK, norm_tokens=3, num_pairs=2, lam=0.1)
    loss.backward()
    # d log odds / d log P = 1 + P / (1 - P) = 1 / (1 - P); d log P / d token = 1 / |y|; dL_OR/dr = -sigmoid(-r)
    r1 = log_odds(-0.5) - log_odds(-2.0)
    # rejected token of pair 1: 0.1 / 2 * sigmoid(-r1) / (1 - e^-2) / 3 = 0.05 * 0.092177 / 0.864665 / 3 = 0.001777
    assert rejected.grad[0, 0].item() == pytest.approx(0.05 * sigmoid(-r1) / (1 - math.exp(-2.0)) / 3, rel=1e-5)
    # chosen token of pair 1: NLL -1/3 plus -0.05 * 0.092177 / 0.393469 / 2 = -0.333333 - 0.005857 = -0.339190
    assert chosen.grad[0, 0].item() == pytest.approx(-1 / 3 - 0.05 * sigmoid(-r1) / (1 - math.exp(-0.5)) / 2,
                                                     rel=1e-5)
    assert (rejected.grad > 0).all()
    assert (chosen.grad[CHOSEN_MASK.bool()] < 0).all()
    assert chosen.grad[~CHOSEN_MASK.bool()].abs().sum().item() == 0.0  # padding gets no gradient


def test_orpo_micro_batches_add_up_to_the_batch_loss():
    parts = sum(orpo_loss(CHOSEN[i:i + 1], CHOSEN_MASK[i:i + 1], REJECTED[i:i + 1], REJECTED_MASK[i:i + 1],
                          norm_tokens=3, num_pairs=2, lam=0.1)[0].item() for i in range(2))
    assert parts == pytest.approx(0.769152, abs=1e-5)  # the batch value derived in test_orpo_loss_by_hand


def test_orpo_is_finite_when_the_chosen_completion_is_certain():
    # log P = 0 means P = 1 and log(1 - P) = -inf; clamped to log P = -1e-7: log(1 - P) ~ log(1e-7) = -16.118
    chosen = torch.zeros(1, 2, requires_grad=True)
    loss, m = orpo_loss(chosen, torch.ones(1, 2), torch.full((1, 2), -1.0), torch.ones(1, 2), 2, 1)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(chosen.grad).all()
    # log odds ratio ~ 16.118 - log_odds(-1) = 16.118 + 0.541 = 16.659 (float32 rounds 1 - 1e-7 coarsely)
    assert m["log_odds_ratio"] == pytest.approx(-math.log(1e-7) + 0.541325, rel=1e-2)


def test_gae_by_hand_gamma_1_lambda_095():
    # Row 0: four tokens, reward 1 on the last, V = [0.5, 0.6, 0.7, 0.8]; V after the last token is 0.
    #   delta_3 = 1 + 0 - 0.8 = 0.2; delta_2 = 0.8 - 0.7 = 0.1; delta_1 = 0.7 - 0.6 = 0.1; delta_0 = 0.6 - 0.5 = 0.1
    #   A_3 = 0.2; A_2 = 0.1 + 0.95 * 0.2 = 0.29; A_1 = 0.1 + 0.95 * 0.29 = 0.3755; A_0 = 0.1 + 0.95 * 0.3755 = 0.456725
    #   returns = A + V = [0.956725, 0.9755, 0.99, 1.0]
    # Row 1: two valid tokens then padding with garbage rewards and values that must be ignored;
    #   reward 2 on token 1, V = [1.0, 1.5]; no bootstrap from the padded V = 3.0:
    #   delta_1 = 2 + 0 - 1.5 = 0.5; delta_0 = 0 + 1.5 - 1.0 = 0.5; A_1 = 0.5; A_0 = 0.5 + 0.95 * 0.5 = 0.975
    #   returns = [1.975, 2.0, 0, 0]
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 2.0, 9.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 0.8], [1.0, 1.5, 3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(adv, torch.tensor([[0.456725, 0.3755, 0.29, 0.2], [0.975, 0.5, 0.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.956725, 0.9755, 0.99, 1.0], [1.975, 2.0, 0.0, 0.0]]))
    assert not adv.requires_grad and not ret.requires_grad  # targets, not part of the graph


def test_gae_by_hand_gamma_09_lambda_08():
    # gamma lam = 0.72; same trajectory as row 0 above:
    #   delta_3 = 1 - 0.8 = 0.2; delta_2 = 0.9 * 0.8 - 0.7 = 0.02; delta_1 = 0.9 * 0.7 - 0.6 = 0.03;
    #   delta_0 = 0.9 * 0.6 - 0.5 = 0.04
    #   A_3 = 0.2; A_2 = 0.02 + 0.72 * 0.2 = 0.164; A_1 = 0.03 + 0.72 * 0.164 = 0.14808;
    #   A_0 = 0.04 + 0.72 * 0.14808 = 0.1466176; returns = [0.6466176, 0.74808, 0.864, 1.0]
    adv, ret = gae(torch.tensor([[0.0, 0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7, 0.8]]), torch.ones(1, 4),
                   gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.1466176, 0.14808, 0.164, 0.2]]))
    torch.testing.assert_close(ret, torch.tensor([[0.6466176, 0.74808, 0.864, 1.0]]))


def test_ppo_value_loss_with_and_without_clipping_by_hand():
    # clip = 0.2, V_old = 1 everywhere, so clip(V) lies in [0.8, 1.2]; the fourth token is padding.
    # token 0: V = 1.1, R = 2: clip(V) = V, both branches (1.1 - 2)^2 = 0.81 -> 0.405; not clipped
    # token 1: V = 1.5, R = 2: (1.5 - 2)^2 = 0.25 < (1.2 - 2)^2 = 0.64 -> 0.32; clipping binds (V overshot the trust
    #          region towards R), so no gradient
    # token 2: V = 1.5, R = 0: (1.5 - 0)^2 = 2.25 > (1.2 - 0)^2 = 1.44 -> 1.125; outside the region but moving away
    #          from R, so the unclipped branch is kept and pulls V back
    # loss = (0.405 + 0.32 + 1.125) / 3 tokens = 0.616667
    values = torch.tensor([[1.1, 1.5, 1.5, 7.0]], requires_grad=True)
    old_values = torch.ones(1, 4)
    returns = torch.tensor([[2.0, 2.0, 0.0, -5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, m = ppo_value_loss(values, old_values, returns, mask, LossNormalizers(1, 3, 4), clip=0.2)
    assert loss.item() == pytest.approx(1.85 / 3, abs=1e-6)
    assert m["value_clipped_tokens"] == 1
    assert m["tokens"] == 3
    loss.backward()
    # d/dV 0.5 (V - R)^2 / 3 = (V - R) / 3: token 0 -> -0.9 / 3 = -0.3; token 2 -> 1.5 / 3 = 0.5
    torch.testing.assert_close(values.grad, torch.tensor([[-0.3, 0.0, 0.5, 0.0]]))


def test_ppo_policy_loss_with_per_token_advantages_by_hand():
    # ratios e^{0.5} = 1.6487, 1, e^{-0.5} = 0.6065; advantages 1, -1, 2; clip 0.2:
    # token 0: min(1.6487, 1.2) * 1 = 1.2 (clipped); token 1: -1; token 2: min(1.2131, 0.8 * 2 = 1.6) = 1.2131
    logp = torch.tensor([[0.5, 0.0, -0.5]])
    loss, m = ppo_policy_loss(logp, torch.zeros(1, 3), torch.tensor([[1.0, -1.0, 2.0]]), torch.ones(1, 3),
                              LossNormalizers(1, 3, 3))
    assert loss.item() == pytest.approx(-(1.2 - 1.0 + 2 * math.exp(-0.5)) / 3)
    assert m["clipped_tokens"] == 1


def test_ppo_policy_loss_matches_grpo_token_loss_for_per_sequence_advantages():
    # Invariant: PPO with A_{i,t} = A_i on every token is GRPO with token-level aggregation.
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -9.0, -9.0]])
    old = logp - torch.tensor([[0.3, -0.3, 0.0], [0.1, 0.0, 0.0]])
    adv = torch.tensor([0.7, -1.3])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    norm = LossNormalizers(2, 4, 5)
    ppo, ppo_m = ppo_policy_loss(logp, old, adv[:, None].expand(2, 3), mask, norm)
    grpo, grpo_m = grpo_loss(logp, old, adv, mask, norm, aggregation="token")
    assert ppo.item() == pytest.approx(grpo.item())
    assert ppo_m["clipped_tokens"] == grpo_m["clipped_tokens"]
