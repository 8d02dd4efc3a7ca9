"""Advantage rules against hand-computed values (ALGORITHMS.md, "Advantages")."""

import math

import pytest
import torch

from grpokit.advantages import group_advantages, zero_variance_groups


def test_group_mean_without_std_two_samples():
    # r = [1, 0]: mean 0.5 -> A = [0.5, -0.5]
    adv = group_advantages(torch.tensor([[1.0, 0.0]]), scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5]]))


def test_group_mean_with_std_by_hand():
    # r = [1, 0, 0, 0]: mean 0.25; unbiased std = sqrt((0.75^2 + 3 * 0.25^2) / 3) = sqrt(0.25) = 0.5
    # A = (r - 0.25) / (0.5 + 1e-4)
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), eps=1e-4)
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / 0.5001
    torch.testing.assert_close(adv, expected)


def test_leave_one_out_by_hand():
    # r = [1, 0, 0]: baselines are means of the others: [0, 0.5, 0.5] -> A = [1, -0.5, -0.5]
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0]]), baseline="leave_one_out", scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([[1.0, -0.5, -0.5]]))


def test_leave_one_out_is_scaled_mean_baseline():
    # A_loo = G / (G - 1) * (r - mean(r)), for any rewards
    rewards = torch.tensor([[0.3, 1.7, -2.0, 0.0, 5.0], [1.0, 1.0, 0.0, 2.0, 0.5]])
    G = rewards.shape[1]
    loo = group_advantages(rewards, baseline="leave_one_out", scale_by_std=False)
    torch.testing.assert_close(loo, G / (G - 1) * (rewards - rewards.mean(1, keepdim=True)))


def test_all_equal_group_has_exactly_zero_advantage_and_is_counted():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    adv = group_advantages(rewards)
    assert torch.equal(adv[0], torch.zeros(3)) and torch.equal(adv[2], torch.zeros(3))
    assert zero_variance_groups(rewards).tolist() == [True, False, True]


def test_all_equal_group_is_exactly_zero_even_when_its_float_mean_is_not_exact():
    rewards = torch.full((1, 8), 0.1)
    assert rewards.mean().item() != 0.1  # float32: the mean of eight 0.1s is not 0.1
    for baseline in ("mean", "leave_one_out"):
        for scale in (True, False):
            adv = group_advantages(rewards, baseline=baseline, scale_by_std=scale)
            assert torch.equal(adv, torch.zeros(1, 8)), (baseline, scale)


def test_group_of_one_is_refused():
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([[1.0]]))


# Failed verifications (timeouts, crashes): scored_NG False leaves the member out of its group.
FAILED = float("nan")  # an unscored reward is never read: NaN proves it


def test_failed_verification_is_left_out_of_mean_and_std_by_hand():
    # The code's std is the unbiased one (torch.std, divisor k - 1), over the k scored members.
    # Today, a timeout scored as 0: r = [1, 0, 0, 1], mean 0.5, std = sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.57735
    #   A = +-0.5 / (0.57735 + 1e-4) = +-0.86588  (the issue's [0.87, -0.87, -0.87, 0.87])
    today = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    torch.testing.assert_close(today, torch.tensor([[1.0, -1.0, -1.0, 1.0]]) * 0.5 / (math.sqrt(1 / 3) + 1e-4))
    # Left out: scored r = [1, 0, 1] (k = 3), mean 2/3,
    #   std = sqrt(((1/3)^2 + (2/3)^2 + (1/3)^2) / 2) = sqrt((6/9) / 2) = sqrt(1/3) = 0.57735
    #   A = [1/3, -, -2/3, 1/3] / 0.57745 = [0.57725, 0, -1.15450, 0.57725]
    scored = torch.tensor([[True, False, True, True]])
    for failed in (FAILED, 0.0):
        adv = group_advantages(torch.tensor([[1.0, failed, 0.0, 1.0]]), scored_NG=scored)
        expected = torch.tensor([[1 / 3, 0.0, -2 / 3, 1 / 3]]) / (math.sqrt(1 / 3) + 1e-4)
        torch.testing.assert_close(adv, expected)
        assert adv[0, 1].item() == 0.0  # exactly


def test_failed_verification_is_left_out_of_leave_one_out_by_hand():
    # Scored r = [1, 0, 1]; each baseline is the mean of the *other scored* rewards:
    #   member 0: (0 + 1) / 2 = 0.5 -> A = 0.5;  member 2: (1 + 1) / 2 = 1 -> A = -1;  member 3: 0.5 -> A = 0.5
    #   (= k / (k - 1) * (r - mean) = 1.5 * [1/3, -2/3, 1/3]); the failed member 1: exactly 0.
    # Today (timeout as 0): (1 - 1/3) = 2/3 and (0 - 2/3) = -2/3 -> [2/3, -2/3, -2/3, 2/3].
    today = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), baseline="leave_one_out", scale_by_std=False)
    torch.testing.assert_close(today, torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3]]))
    adv = group_advantages(torch.tensor([[1.0, FAILED, 0.0, 1.0]]), baseline="leave_one_out", scale_by_std=False,
                           scored_NG=torch.tensor([[True, False, True, True]]))
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.0, -1.0, 0.5]]))


def _random_rewards(N: int, G: int, generator: torch.Generator) -> torch.Tensor:
    # half continuous, half 0/1 (so some groups are all equal)
    continuous = torch.randn(N // 2, G, generator=generator)
    binary = torch.randint(0, 2, (N - N // 2, G), generator=generator).float()
    return torch.cat([continuous, binary])


@pytest.mark.parametrize("baseline", ["mean", "leave_one_out"])
@pytest.mark.parametrize("scale", [True, False])
def test_all_scored_is_bitwise_identical_to_no_mask(baseline, scale):
    gen = torch.Generator().manual_seed(0)
    rewards = _random_rewards(64, 8, gen)
    plain = group_advantages(rewards, baseline=baseline, scale_by_std=scale)
    all_true = group_advantages(rewards, baseline=baseline, scale_by_std=scale, scored_NG=torch.ones(64, 8).bool())
    assert torch.equal(plain, all_true)
    assert torch.equal(zero_variance_groups(rewards), zero_variance_groups(rewards, torch.ones(64, 8).bool()))
    # a fully scored group stays bit for bit the same when another group of the batch has a failure
    scored = torch.ones(64, 8).bool()
    scored[0, 3] = False
    mixed = group_advantages(rewards, baseline=baseline, scale_by_std=scale, scored_NG=scored)
    assert torch.equal(mixed[1:], plain[1:])


@pytest.mark.parametrize("baseline", ["mean", "leave_one_out"])
@pytest.mark.parametrize("scale", [True, False])
def test_masked_group_equals_group_of_its_scored_members(baseline, scale):
    # Independent reference: run the unmasked function on each group's scored members alone.
    gen = torch.Generator().manual_seed(1)
    rewards = _random_rewards(40, 6, gen)
    scored = torch.rand(40, 6, generator=gen) < 0.7
    adv = group_advantages(rewards.masked_fill(~scored, FAILED), baseline=baseline, scale_by_std=scale,
                           scored_NG=scored)
    no_signal = zero_variance_groups(rewards, scored)
    for n in range(40):
        members = rewards[n, scored[n]]
        assert bool(no_signal[n]) == (len(members) < 2 or bool((members == members[0]).all()))
        expected = torch.zeros(6)
        if len(members) >= 2:
            expected[scored[n]] = group_advantages(members[None], baseline=baseline, scale_by_std=scale)[0]
        torch.testing.assert_close(adv[n], expected)
        assert torch.equal(adv[n, ~scored[n]], torch.zeros(int((~scored[n]).sum())))  # exactly 0


def test_fewer_than_two_scored_or_equal_scored_rewards_is_no_signal():
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.3, 0.7]])
    scored = torch.tensor([[True, False, False],  # one scored: no signal
                           [False, False, False],  # none scored
                           [True, False, True],  # scored rewards 1, 1: all equal although the failed one differs
                           [False, True, True]])  # 0.3 vs 0.7: signal
    assert zero_variance_groups(rewards, scored).tolist() == [True, True, True, False]
    adv = group_advantages(rewards, scored_NG=scored)
    assert torch.equal(adv[:3], torch.zeros(3, 3))
    # group 3: scored [0.3, 0.7], mean 0.5, unbiased std = sqrt(2 * 0.2^2 / 1) = 0.28284 -> A = +-0.2 / 0.28294
    torch.testing.assert_close(adv[3], torch.tensor([0.0, -0.2, 0.2]) / (math.sqrt(0.08) + 1e-4))
