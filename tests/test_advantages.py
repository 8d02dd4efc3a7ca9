"""Advantage rules against hand-computed values (ALGORITHMS.md, "Advantages")."""

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
