"""From verified groups to training data: passing, RFT targets and preference pairs, by hand."""

import random

import pytest
import torch

from grpokit.errors import GrpokitError
from grpokit.methods.verified import preference_pairs, rft_rows
from grpokit.rewards import build_reward_components
from grpokit.rewards.passing import check_pass_reward, passed, resolve_pass_reward
from grpokit.rewards.scoring import Scores


def test_passed_uses_the_named_component_and_never_passes_a_failed_verification():
    # sample 2: accuracy timed out; sample 3: format does not apply (None, no error), which is no failure
    error = {"component": "accuracy", "index": 2, "kind": "timeout", "message": "slow", "completion": "c"}
    scores = Scores({"accuracy": [1.0, 0.0, None, 1.0], "format": [1.0, 1.0, 1.0, None]}, [1.1, 0.1, 0.1, 1.0],
                    [error], {"accuracy": {"timeout": 1}, "format": {}})
    assert scores.verified() == [True, True, False, True]
    assert passed(scores, "accuracy", 1.0).tolist() == [True, False, False, True]
    # format passes sample 2, but a completion whose verification failed never passes
    assert passed(scores, "format", 0.5).tolist() == [True, True, False, False]
    assert passed(scores, "total", 1.05).tolist() == [True, False, False, False]


def test_pass_reward_resolves_names_aliases_and_aliased_builtins():
    components = build_reward_components([{"name": "accuracy", "alias": "acc"}, "format"])
    assert check_pass_reward("acc", components) == "acc"
    assert check_pass_reward("accuracy", components) == "acc"  # the built-in, running under its alias
    assert check_pass_reward("total", components) == "total"
    with pytest.raises(GrpokitError, match="online.pass_reward.*'correct'.*'acc', 'format'"):
        check_pass_reward("correct", components)
    assert resolve_pass_reward("accuracy", build_reward_components(["format"])) is None
    # 'env': the environment's own reward, only when the run has one
    assert check_pass_reward("env", components, env=True) == "env"
    with pytest.raises(GrpokitError, match="'env' is the reward of an environment: set env.name"):
        check_pass_reward("env", components)


def test_the_environments_reward_decides_passing_and_an_absent_one_passes_nothing():
    scores = Scores(components={"accuracy": [1.0, 0.0, 0.0]}, total=[1.0, 0.0, 0.0])
    assert passed(scores, "env", 1.0).tolist() == [False, False, False]  # no environment reward this step
    with_env = scores.with_component("env", [2.0, 1.0, None])
    assert passed(with_env, "env", 1.0).tolist() == [True, True, False]
    assert passed(with_env, "env", 1.5).tolist() == [True, False, False]


def test_rft_keeps_passing_completions_once_per_distinct_text_within_a_group():
    # two groups of 4; group 0: "a" passes twice (one kept), "b" passes; group 1: "a" passes again (other prompt: kept)
    completions = ["a", "a ", "b", "c", "a", "d", "e", "f"]
    passed_B = torch.tensor([True, True, True, False, True, False, False, False])
    assert rft_rows(passed_B, completions, group_size=4) == [0, 2, 4]
    assert rft_rows(torch.zeros(8, dtype=torch.bool), completions, group_size=4) == []
    # a truncated completion (no EOS) is never imitated, even when its answer verified
    truncated = torch.tensor([True, False, False, False, False, False, False, False])
    assert rft_rows(passed_B, completions, group_size=4, truncated_B=truncated) == [1, 2, 4]


def test_pairs_come_from_one_prompt_and_mixed_groups_only():
    completions = ["w1", "l1", "w2", "l2",   # mixed group
                   "x", "y", "z", "v",       # all pass: no pair
                   "p", "q", "r", "s"]       # all fail: no pair
    passed_B = torch.tensor([1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    rewards_B = torch.tensor([1.1, 0.1, 1.0, 0.0, 1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float32)
    pairs = preference_pairs(passed_B, rewards_B, completions, 4, rule="random", pairs_per_prompt=5,
                             rng=random.Random(0))
    assert len(pairs) == 2  # each completion used once: 2 winners x 2 losers -> 2 pairs
    assert {w for w, _ in pairs} == {0, 2} and {r for _, r in pairs} == {1, 3}
    gap = preference_pairs(passed_B, rewards_B, completions, 4, rule="reward_gap", pairs_per_prompt=1,
                           rng=random.Random(0))
    assert gap == [(0, 3)]  # highest-reward winner (1.1) with lowest-reward loser (0.0)


def test_pairs_never_join_equal_texts_and_random_rule_is_seeded():
    completions = ["same", "same", "other", "fail"]
    passed_B = torch.tensor([True, False, True, False])
    rewards_B = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # "same" failing is a duplicate of "same" passing: dropped, so the only loser is "fail"
    for seed in range(5):
        pairs = preference_pairs(passed_B, rewards_B, completions, 4, rule="random", pairs_per_prompt=2,
                                 rng=random.Random(seed))
        assert len(pairs) == 1 and pairs[0][1] == 3
    a = preference_pairs(passed_B, rewards_B, completions, 4, rule="random", pairs_per_prompt=1, rng=random.Random(7))
    b = preference_pairs(passed_B, rewards_B, completions, 4, rule="random", pairs_per_prompt=1, rng=random.Random(7))
    assert a == b


def test_a_completion_whose_verifier_failed_is_on_neither_side_of_a_pair():
    completions = ["w", "unknown", "l"]
    passed_B = torch.tensor([True, False, False])
    scored_B = torch.tensor([True, False, True])
    rewards_B = torch.tensor([1.0, 0.0, 0.5])
    pairs = preference_pairs(passed_B, rewards_B, completions, 3, rule="reward_gap", pairs_per_prompt=2,
                             rng=random.Random(0), scored_B=scored_B)
    assert pairs == [(0, 2)]  # without scored_B, "unknown" (reward 0.0) would have been the rejected one
