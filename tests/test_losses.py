"""Loss functions against values derived by hand in each test."""

import math

import pytest
import torch

from grpokit.losses import LossNormalizers, grpo_loss, k3_kl, sft_loss

# Two sequences: lengths 3 and 1 (second sequence is padded with two masked tokens).
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
NORM = LossNormalizers(num_sequences=2, num_tokens=4, max_len=5)


def test_on_policy_loss_value_is_minus_mean_advantage_per_aggregation():
    # ratio = 1 everywhere, so per-token loss = -A_i: A = [1, -2].
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -9.0, -9.0]])
    adv = torch.tensor([1.0, -2.0])
    expected = {
        "sequence": (-1.0 + 2.0) / 2,  # per-sequence means -1 and 2, then mean over 2 sequences
        "token": (3 * -1.0 + 1 * 2.0) / 4,  # 4 completion tokens in the batch
        "constant": (3 * -1.0 + 1 * 2.0) / (2 * 5),  # G * L
    }
    for aggregation, value in expected.items():
        loss, _ = grpo_loss(logp, logp.detach(), adv, MASK, NORM, aggregation=aggregation)
        assert loss.item() == pytest.approx(value), aggregation


def test_on_policy_gradient_is_advantage_weighted_logprob_gradient():
    # d loss / d logp_{i,t} = -A_i * weight_{i,t}; token weights: 1/num_tokens = 1/4.
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -9.0, -9.0]], requires_grad=True)
    adv = torch.tensor([1.0, -2.0])
    loss, _ = grpo_loss(logp, logp.detach(), adv, MASK, NORM, aggregation="token")
    loss.backward()
    expected = torch.tensor([[-0.25, -0.25, -0.25], [0.5, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected)
    # sequence aggregation: weight 1 / (|o_i| * G) -> 1/6 for sequence 0, 1/2 for sequence 1
    logp.grad = None
    loss, _ = grpo_loss(logp, logp.detach(), adv, MASK, NORM, aggregation="sequence")
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 6, -1 / 6, -1 / 6], [1.0, 0.0, 0.0]]))


def test_clipping_by_hand():
    # One sequence, 3 tokens, A = +1 then A = -1, ratios e^{0.5}=1.6487, 1, e^{-0.5}=0.6065.
    old = torch.zeros(1, 3)
    logp = torch.tensor([[0.5, 0.0, -0.5]])
    mask = torch.ones(1, 3)
    norm = LossNormalizers(1, 3, 3)
    r = [math.exp(0.5), 1.0, math.exp(-0.5)]
    # A = +1: min(r, clip(r, 0.8, 1.2)) = [1.2, 1.0, 0.6065] (the first is clipped)
    loss, m = grpo_loss(logp, old, torch.tensor([1.0]), mask, norm, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 1.0 + r[2]) / 3)
    assert m["clipped_tokens"] == 1
    # A = -1: min(-r, -clip(r)) = [-1.6487, -1.0, -0.8] (the last is clipped)
    loss, m = grpo_loss(logp, old, torch.tensor([-1.0]), mask, norm, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx((r[0] + 1.0 + 0.8) / 3)
    assert m["clipped_tokens"] == 1
    # clip-higher (DAPO): the upper bound 1.28 lets the first token reach 1.28 instead of 1.2
    loss, _ = grpo_loss(logp, old, torch.tensor([1.0]), mask, norm, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-(1.28 + 1.0 + r[2]) / 3)


def test_clipped_tokens_carry_no_gradient():
    old = torch.zeros(1, 2)
    logp = torch.tensor([[0.5, 0.0]], requires_grad=True)
    loss, _ = grpo_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), LossNormalizers(1, 2, 2))
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0  # ratio 1.65 > 1.2 with A > 0: clipped, constant
    assert logp.grad[0, 1].item() == pytest.approx(-0.5)  # -A * ratio / num_tokens = -1 * 1 / 2


def test_k3_kl_by_hand_and_in_loss():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    # x = ref - logp = [-0.5, 1.0]; exp(x) - x - 1 = [0.10653, 0.71828]
    kl = k3_kl(logp, ref)
    torch.testing.assert_close(kl, torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0]]))
    assert (kl >= 0).all()
    # with A = 0 the loss is beta * mean KL
    loss, m = grpo_loss(logp, logp.detach(), torch.tensor([0.0]), torch.ones(1, 2), LossNormalizers(1, 2, 2),
                        beta=0.04, ref_logp_BT=ref)
    assert loss.item() == pytest.approx(0.04 * (math.exp(-0.5) - 0.5 + math.e - 2.0) / 2)
    assert m["kl_sum"] == pytest.approx(math.exp(-0.5) - 0.5 + math.e - 2.0)


def test_k3_kl_keeps_small_values_in_float32():
    # x = 1e-4: KL = x^2 / 2 + x^3 / 6 ~ 5.0002e-9; the naive exp(x) - x - 1 gives 0 in float32
    kl = k3_kl(torch.tensor([[0.0]]), torch.tensor([[1e-4]]))
    assert kl.item() == pytest.approx(5.0002e-9, rel=1e-3)


def test_beta_without_reference_is_an_error():
    with pytest.raises(ValueError):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), LossNormalizers(1, 1, 1),
                  beta=0.1)


def test_masked_tokens_get_no_gradient():
    logp = torch.randn(2, 3, requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), MASK, NORM, aggregation="sequence")
    loss.backward()
    assert logp.grad[1, 1:].abs().sum().item() == 0.0


def test_sft_loss_is_mean_negative_logprob_of_target_tokens():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -100.0, -100.0]])
    loss, _ = sft_loss(logp, MASK, NORM)
    assert loss.item() == pytest.approx((1 + 2 + 3 + 4) / 4)


def test_micro_batch_losses_sum_to_full_batch_loss():
    # The normaliser comes from the whole batch, so per-row losses add up to the batch loss.
    logp = torch.randn(2, 3)
    adv = torch.tensor([0.7, -1.3])
    for aggregation in ("sequence", "token", "constant"):
        full, _ = grpo_loss(logp, logp - 0.1, adv, MASK, NORM, aggregation=aggregation)
        parts = sum(grpo_loss(logp[i:i + 1], logp[i:i + 1] - 0.1, adv[i:i + 1], MASK[i:i + 1], NORM,
                              aggregation=aggregation)[0] for i in range(2))
        assert full.item() == pytest.approx(parts.item())


def test_sampler_importance_weights_by_hand():
    """Two sequences, three tokens; old - sampler = [[ln 2, ln 0.5, ln 4], [ln 1.5, ln 1.5, (masked) 9]]."""
    import math

    from grpokit.losses import sampler_importance_weights

    old = torch.tensor([[math.log(2.0), math.log(0.5), math.log(4.0)], [math.log(1.5), math.log(1.5), 9.0]])
    sampler = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    cap = 3.0
    w, over = sampler_importance_weights(old, sampler, mask, "token_truncate", cap)
    torch.testing.assert_close(w[:, :2], torch.tensor([[2.0, 0.5], [1.5, 1.5]]))
    assert w[0, 2].item() == pytest.approx(3.0) and over[0].tolist() == [0.0, 0.0, 1.0]
    w, _ = sampler_importance_weights(old, sampler, mask, "token_mask", cap)
    torch.testing.assert_close(w[0], torch.tensor([2.0, 0.5, 0.0]))  # 4 > 3: masked out
    # sequence ratios: 2 * 0.5 * 4 = 4 (over the cap), 1.5 * 1.5 = 2.25 (the masked token does not count)
    w, over = sampler_importance_weights(old, sampler, mask, "sequence_truncate", cap)
    torch.testing.assert_close(w, torch.tensor([[3.0] * 3, [2.25] * 3]))
    assert over[:, 0].tolist() == [1.0, 0.0]
    w, _ = sampler_importance_weights(old, sampler, mask, "sequence_mask", cap)
    torch.testing.assert_close(w, torch.tensor([[0.0] * 3, [2.25] * 3]))
    # a log-prob the sampler did not report counts as agreement
    w, _ = sampler_importance_weights(old, torch.tensor([[float("nan"), 0, 0], [0, 0, 0]]), mask, "token_truncate",
                                      cap)
    assert w[0, 0].item() == 1.0


def test_importance_weights_scale_the_surrogate_not_the_kl():
    from grpokit.losses import LossNormalizers, grpo_loss, k3_kl

    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    mask, adv, w = torch.ones(1, 2), torch.tensor([2.0]), torch.tensor([[0.5, 3.0]])
    norm = LossNormalizers(num_sequences=1, num_tokens=2, max_len=2)
    loss, _ = grpo_loss(logp, logp.detach(), adv, mask, norm, beta=0.1, ref_logp_BT=ref, is_weights_BT=w)
    # on-policy surrogate per token is -A = -2; weighted: -1, -6; KL unweighted
    expected = ((-2.0 * w) + 0.1 * k3_kl(logp.detach(), ref)).sum() / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.backward()
    # d/dlogp of -A * w * exp(logp - old): -A * w; plus beta * d k3 / dlogp = beta * (1 - exp(ref - logp))
    grad = (-2.0 * w + 0.1 * (1 - torch.exp(ref - logp.detach()))) / 2
    torch.testing.assert_close(logp.grad, grad)
