"""grpokit/stats.py against hand-computed numbers and brute-force enumeration."""

import itertools
import math

import pytest

from grpokit.stats import (
    area_under_curve,
    binomial_standard_error,
    mean_interval,
    paired_difference,
    pass_at_k,
    t_cdf,
    t_quantile,
)


def test_t_quantile_matches_closed_forms_and_tables():
    # df = 1 is the Cauchy distribution: t = tan(pi (p - 1/2)); 12.7062 in every t table
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)
    # df = 2: t = (2p - 1) / sqrt(2 p (1 - p)) = 0.95 / sqrt(0.04875) = 4.30265
    assert t_quantile(0.975, 2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-9)
    # printed tables (4 decimals): df 4 -> 2.7764, df 9 -> 2.2622, df 30 -> 2.0423
    for df, table in ((4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-4)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)  # the normal limit
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_cdf(0.0, 3) == pytest.approx(0.5)


def test_mean_interval_by_hand():
    # mean 0.6; sd = sqrt((0.01 + 0 + 0.01) / 2) = 0.1; half-width = 4.30265 * 0.1 / sqrt(3) = 0.24841
    r = mean_interval([0.5, 0.6, 0.7])
    assert r["mean"] == pytest.approx(0.6) and r["sd"] == pytest.approx(0.1)
    assert (r["low"], r["high"]) == (pytest.approx(0.6 - 0.248414, abs=1e-6), pytest.approx(0.6 + 0.248414, abs=1e-6))
    one = mean_interval([0.4])  # one seed: a mean, no interval
    assert one["mean"] == 0.4 and one["low"] is None and one["n"] == 1
    assert mean_interval([0.3, 0.3])["low"] == pytest.approx(0.3)  # no spread, no width


def test_paired_difference_removes_what_the_pair_shares():
    # per-seed differences 0.10, 0.12, 0.08: mean 0.10, sd 0.02, half-width 4.30265 * 0.02 / sqrt(3) = 0.04968
    method, reference = [0.60, 0.42, 0.78], [0.50, 0.30, 0.70]
    d = paired_difference(method, reference)
    assert d["mean"] == pytest.approx(0.10) and d["high"] - d["mean"] == pytest.approx(0.049683, abs=1e-6)
    assert d["excludes_zero"]
    # unpaired, the same numbers overlap completely: the seeds' spread (0.18 sd) swamps the 0.10 gain
    a, b = mean_interval(method), mean_interval(reference)
    assert a["low"] < b["high"]
    assert not paired_difference([0.5, 0.6, 0.4], [0.5, 0.5, 0.5])["excludes_zero"]
    assert not paired_difference([0.6], [0.5])["excludes_zero"]  # one seed proves nothing
    with pytest.raises(ValueError, match="as many"):
        paired_difference([0.1, 0.2], [0.1])


def _pass_at_k_brute_force(correct: list[bool], k: int) -> float:
    """The fraction of all k-subsets of the samples that contain a correct one."""
    subsets = list(itertools.combinations(correct, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_enumeration_over_all_k_subsets():
    for n in range(1, 9):
        for c in range(0, n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_brute_force(samples, k), abs=1e-12), (n, c, k)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert pass_at_k(8, 2, 8) == 1.0 and pass_at_k(8, 0, 3) == 0.0
    # the naive 1 - (1 - c/n)^k over-draws with replacement: 1 - 0.75^2 = 0.4375, not 0.5
    assert pass_at_k(4, 1, 2) == 0.5
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_area_under_curve_by_hand():
    xs, ys = [0.0, 10.0, 30.0], [0.4, 0.6, 0.6]
    assert area_under_curve(xs, ys) == pytest.approx(10 * 0.5 + 20 * 0.6)  # 17.0
    # cut at x = 20: the last segment is interpolated (0.6 at 20), 5 + 10 * 0.6
    assert area_under_curve(xs, ys, until=20.0) == pytest.approx(11.0)
    assert area_under_curve(xs, ys, until=5.0) == pytest.approx(5 * (0.4 + 0.5) / 2)
    with pytest.raises(ValueError, match="outside"):
        area_under_curve(xs, ys, until=31.0)


def test_binomial_standard_error():
    assert binomial_standard_error(0.5, 1000) == pytest.approx(0.0158114, abs=1e-7)  # <= 2 points
    assert binomial_standard_error(0.5, 200) == pytest.approx(0.0353553, abs=1e-7)  # the demo's 200: 3.5


def test_evaluation_pass_at_k_uses_the_unbiased_estimator(monkeypatch):
    """`evaluate`'s pass@k from n = 4 samples per prompt equals enumeration over all k-subsets."""
    from types import SimpleNamespace

    import grpokit.evaluation as evaluation
    from grpokit.rewards import BUILTIN_REWARDS, RewardComponent

    texts = {"p1": ["<answer>5</answer>", "<answer>4</answer>", "<answer>4</answer>", "<answer>4</answer>"],
             "p2": ["<answer>7</answer>", "<answer>7</answer>", "<answer>1</answer>", "<answer>2</answer>"]}

    def fake_sample(model, tokenizer, prompts, group_size, **kwargs):
        return SimpleNamespace(completions=[t for p in prompts for t in texts[p][:group_size]], env_rewards=None)

    monkeypatch.setattr(evaluation, "sample", fake_sample)
    accuracy = RewardComponent(name="accuracy", fn=BUILTIN_REWARDS["accuracy"], kwargs={"extract": "answer_tag"})
    result = evaluation._pass_and_majority_unseeded(None, None, ["p1", "p2"], ["5", "7"], accuracy, k=2, n=4,
                                                    max_new_tokens=8, temperature=1.0, batch_size=2, engine="x")
    # p1: 1 of 4 correct -> 3 of the 6 pairs hold it (0.5); p2: 2 of 4 -> 5 of 6 pairs (1 - 1/6)
    brute = (_pass_at_k_brute_force([True, False, False, False], 2)
             + _pass_at_k_brute_force([True, True, False, False], 2)) / 2
    assert result["pass_at_k"] == pytest.approx(brute) == pytest.approx((0.5 + 5 / 6) / 2)
    assert result["n_samples"] == 4 and result["k"] == 2
    # maj@2 looks at the first 2 samples: p1 ties 5 vs 4 (first wins: correct), p2 has 7, 7 (correct)
    assert result["maj_at_k"] == 1.0
