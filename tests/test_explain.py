"""`grpokit explain` against updates derived by hand (numpy), not by the loss functions it calls."""

import dataclasses

import numpy as np
import pytest

from grpokit.explain import ANSWERS, QUESTION, explain, format_table, plot, run

P0 = np.array([0.4, 0.2, 0.4])
Z0 = np.log(P0)
E_YES, E_MAYBE, E_NO = np.eye(3)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def rows_by_key(**kwargs):
    return {r.key: r for r in explain(**kwargs)}


@pytest.mark.parametrize("lr", [1.0, 0.3])
def test_sft_step_is_z_minus_lr_times_p_minus_target(lr):
    # d(-log softmax(z)_yes)/dz = p - e_yes
    row = rows_by_key(lr=lr)["sft"]
    np.testing.assert_allclose(row.before, P0, atol=1e-12)
    np.testing.assert_allclose(row.after, softmax(Z0 - lr * (P0 - E_YES)), atol=1e-6)
    np.testing.assert_allclose(row.logit_change, -lr * (P0 - E_YES), atol=1e-9)
    assert row.loss == pytest.approx(-np.log(0.4))
    # every other answer falls, its logit by lr x its probability
    assert row.after[1] < 0.2 and row.after[2] < 0.4


@pytest.mark.parametrize("lr, beta", [(1.0, 0.1), (0.5, 0.5)])
def test_dpo_first_step_moves_only_the_pair(lr, beta):
    # policy == reference: margin 0, sigmoid(0) = 1/2, and the p terms of d log p_yes - d log p_no cancel:
    # dL/dz = -(beta / 2)(e_yes - e_no)
    row = rows_by_key(lr=lr, beta=beta)["dpo"]
    np.testing.assert_allclose(row.after, softmax(Z0 + lr * beta / 2 * (E_YES - E_NO)), atol=1e-6)
    assert row.logit_change[1] == 0.0  # Maybe's logit: exactly untouched
    assert row.after[1] != row.before[1]  # yet its probability moved, through the normaliser
    assert row.loss == pytest.approx(np.log(2))


def orpo_loss_by_hand(z, lam):
    p = softmax(z)
    log_odds = np.log(p) - np.log1p(-p)
    x = log_odds[0] - log_odds[2]  # chosen Yes, rejected No
    return -np.log(p[0]) + lam * np.log1p(np.exp(-x))  # NLL + lam * (-log sigmoid(x))


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_step_matches_finite_differences_of_the_formula(lam):
    h = 1e-6
    grad = np.array([(orpo_loss_by_hand(Z0 + h * e, lam) - orpo_loss_by_hand(Z0 - h * e, lam)) / (2 * h)
                     for e in np.eye(3)])
    rows = rows_by_key(orpo_lambda=lam)
    row = rows["orpo"]
    assert row.loss == pytest.approx(orpo_loss_by_hand(Z0, lam))
    np.testing.assert_allclose(row.after, softmax(Z0 - grad), atol=1e-5)
    # the rejected answer is pushed harder than under SFT; Maybe (p_yes == p_no at the start) as under SFT
    assert row.logit_change[2] < rows["sft"].logit_change[2]
    assert row.logit_change[1] == pytest.approx(rows["sft"].logit_change[1])


def test_orpo_lam_one_row_only_when_default_lambda_differs():
    assert "orpo_lam1" in rows_by_key(orpo_lambda=0.1)
    assert "orpo_lam1" not in rows_by_key(orpo_lambda=1.0)


def hand_group_update(group, lr):
    """Token aggregation, ratio 1: loss = -(1/G) sum_i A_i log p_{a_i}, grad = -(1/G) sum_i A_i (e_{a_i} - p)."""
    ids = [ANSWERS.index(a) for a in group]
    r = np.array([1.0 if a == 0 else 0.0 for a in ids])
    if np.all(r == r[0]):
        adv = np.zeros_like(r)
    else:
        adv = (r - r.mean()) / (r.std(ddof=1) + 1e-4)
    grad = -sum(a_i * (np.eye(3)[i] - P0) for a_i, i in zip(adv, ids)) / len(ids)
    return Z0 - lr * grad


@pytest.mark.parametrize("lr, seed", [(1.0, 0), (0.5, 3)])
def test_grpo_sampled_group_matches_hand_formula(lr, seed):
    row = rows_by_key(lr=lr, seed=seed)["grpo"]
    assert len(row.group) == 8
    assert "Yes" in row.group and set(row.group) - {"Yes"}, "this seed should give a mixed group"
    np.testing.assert_allclose(row.after, softmax(hand_group_update(row.group, lr)), atol=1e-6)
    assert row.after[0] > row.before[0]
    assert row.loss == pytest.approx(0.0, abs=1e-12)  # on-policy: -(1/G) sum A_i, and the A_i sum to 0
    assert rows_by_key(lr=lr, seed=seed)["grpo"].group == row.group  # seeded: reproducible


def test_grpo_all_equal_group_does_not_move_at_all():
    row = rows_by_key()["grpo_equal"]
    assert "Yes" not in row.group and len(row.group) == 8
    assert row.after == row.before  # exactly, not approximately
    assert row.logit_change == (0.0, 0.0, 0.0)
    assert "constructed" in row.detail


def test_format_table_shows_every_method_and_the_numbers():
    rows = explain()
    text = format_table(rows, 1.0)
    assert QUESTION in text
    for row in rows:
        assert row.method in text
    sft_after = softmax(Z0 - (P0 - E_YES))
    for before, after in zip(P0, sft_after):
        assert f"{100 * before:.2f} -> {100 * after:.2f}" in text
    assert text.count("\n|") == len(rows) + 2  # header, rule and one line per row (Markdown)
    words = " ".join(text.split())  # the reading is wrapped to the terminal's width
    assert "each -lr x its own probability" in words  # SFT's logit moves, checked against the numbers
    assert "did not move at all" in words  # DPO's Maybe
    assert "not a single bit" in words  # GRPO all-equal


def test_interpretation_follows_the_numbers_not_a_script():
    rows = explain()
    tampered = [dataclasses.replace(r, after=(0.5, 0.1, 0.4)) if r.key == "grpo_equal" else r for r in rows]
    tampered = [dataclasses.replace(r, logit_change=(0.1, -0.01, -0.09)) if r.key == "dpo" else r for r in tampered]
    words = " ".join(format_table(tampered, 1.0).split())
    assert "not a single bit" not in words and "still moved" in words
    assert "did not move at all" not in words


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="lr"):
        explain(lr=0.0)
    with pytest.raises(ValueError, match="group_size"):
        explain(group_size=1)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = plot(explain(), tmp_path / "sub" / "explain.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = run(plot_path=tmp_path / "again.png")
    assert str(tmp_path / "again.png") in text and (tmp_path / "again.png").exists()
