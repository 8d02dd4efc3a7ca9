"""GSPO, CISPO and the KL estimators: values and gradients by hand, against a TRL-style re-implementation,
and (for k3 / k2) against exact KL gradients on a 3-token vocabulary."""

import math

import pytest
import torch

from grpokit.losses import LossNormalizers, cispo_loss, grpo_loss, gspo_loss, k2_kl, k3_kl

# Two sequences of lengths 3 and 2 (the last token of sequence 1 is padding, with an arbitrary log-ratio 5).
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
NORM = LossNormalizers(num_sequences=2, num_tokens=5, max_len=4)
# logp - old = [[0.1, 0.2, 0.3], [-0.1, -0.3, (pad) 5.0]], as after a first update (num_iterations > 1)
LOGP = [[-1.0, -0.5, -2.0], [-0.4, -1.2, -7.0]]
OLD = [[-1.1, -0.7, -2.3], [-0.3, -0.9, -12.0]]
E = math.exp


def _inputs():
    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    return logp, torch.tensor(OLD, dtype=torch.float64), MASK.double()


# ---------------------------------------------------------------- GSPO by hand


@pytest.mark.parametrize("level", ["sequence", "sequence_token"])
def test_gspo_by_hand_with_upper_clip_active(level):
    # Sequence ratios: s_0 = exp(mean(0.1, 0.2, 0.3)) = e^0.2 = 1.221403,
    # s_1 = exp(mean(-0.1, -0.3)) = e^-0.2 = 0.818731
    # (the padding's log-ratio 5 is not in the mean). eps = 0.2 both sides, A = [+1, -2]:
    #   seq 0: min(1.221403 * 1, clip(1.221403, 0.8, 1.2) * 1) = 1.2 -> loss_0 = -1.2, clipped (upper side), no gradient
    #   seq 1: min(0.818731 * -2, 0.818731 * -2) -> loss_1 = 2 s_1 = 1.637462, not clipped
    # "sequence" aggregation: (loss_0 + loss_1) / 2 = 0.218731
    # gradient: d loss_1 / d logp_{1,t} = 2 * s_1 * (1 / |o_1| = 1/2) = s_1, over 2 sequences -> s_1 / 2 = 0.409365
    logp, old, mask = _inputs()
    loss, m = gspo_loss(logp, old, torch.tensor([1.0, -2.0], dtype=torch.float64), mask, NORM,
                        clip_low=0.2, clip_high=0.2, level=level)
    assert loss.item() == pytest.approx((-1.2 + 2 * E(-0.2)) / 2) == pytest.approx(0.218731, abs=1e-6)
    assert m["clipped_sequences"] == 1 and m["sequences"] == 2
    assert m["clipped_tokens"] == 3 and m["tokens"] == 5  # the 3 tokens of the clipped sequence
    loss.backward()
    g = E(-0.2) / 2
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 0.0], [g, g, 0.0]], dtype=torch.float64))
    assert g == pytest.approx(0.409365, abs=1e-6)


@pytest.mark.parametrize("level", ["sequence", "sequence_token"])
def test_gspo_by_hand_token_aggregation(level):
    # Same inputs, "token" aggregation (every token weighs 1/5, so sequence i weighs |o_i| / 5):
    #   loss = (3 * -1.2 + 2 * 1.637462) / 5 = -0.065015
    #   gradient on sequence 1's tokens: "sequence" level: d/dlogp_t (2 tokens * 2 s_1 / 5) = 4 s_1 * (1/2) / 5;
    #   "sequence_token": token t's own term 2 s_{1,t} / 5 has gradient 2 s_1 / 5. Both = 0.327492.
    logp, old, mask = _inputs()
    loss, _ = gspo_loss(logp, old, torch.tensor([1.0, -2.0], dtype=torch.float64), mask, NORM,
                        clip_low=0.2, clip_high=0.2, level=level, aggregation="token")
    assert loss.item() == pytest.approx((3 * -1.2 + 2 * 2 * E(-0.2)) / 5) == pytest.approx(-0.065015, abs=1e-6)
    loss.backward()
    g = 2 * E(-0.2) / 5
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 0.0], [g, g, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("level", ["sequence", "sequence_token"])
def test_gspo_by_hand_ratio_out_of_range_but_not_clipped(level):
    # A = [-1, -2]: seq 0 has s_0 = 1.221403 > 1.2 but A < 0, so min(-1.221403, -1.2) takes the unclipped term:
    #   loss_0 = s_0 = 1.221403 with gradient s_0 / 3 per token; loss_1 = 2 s_1 as before.
    #   loss = (1.221403 + 1.637462) / 2 = 1.429432; gradients s_0 / 6 = 0.203567 and s_1 / 2 = 0.409365
    logp, old, mask = _inputs()
    loss, m = gspo_loss(logp, old, torch.tensor([-1.0, -2.0], dtype=torch.float64), mask, NORM,
                        clip_low=0.2, clip_high=0.2, level=level)
    assert loss.item() == pytest.approx((E(0.2) + 2 * E(-0.2)) / 2) == pytest.approx(1.429432, abs=1e-6)
    assert m["clipped_sequences"] == 0
    loss.backward()
    a, b = E(0.2) / 6, E(-0.2) / 2
    torch.testing.assert_close(logp.grad, torch.tensor([[a, a, a], [b, b, 0.0]], dtype=torch.float64))


def test_gspo_lower_clip_and_paper_defaults():
    # Lower side: s_1 = e^-0.3 (one token, log-ratio -0.3) < 0.8 with A = -2: min(-1.48164, 0.8 * -2 = -1.6) = -1.6
    logp = torch.tensor([[-1.0]], requires_grad=True)
    loss, m = gspo_loss(logp, torch.tensor([[-0.7]]), torch.tensor([-2.0]), torch.ones(1, 1), LossNormalizers(1, 1, 1),
                        clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(1.6) and m["clipped_sequences"] == 1
    loss.backward()
    assert logp.grad.item() == 0.0
    # Paper defaults (3e-4 / 4e-4): a mean log-ratio of 1e-3 is already clipped with A > 0, 2e-4 is not
    for mean_log_ratio, clipped in ((1e-3, 1), (2e-4, 0), (-2e-4, 0), (-1e-3, 0)):
        _, m = gspo_loss(torch.full((1, 4), mean_log_ratio), torch.zeros(1, 4), torch.tensor([1.0]),
                         torch.ones(1, 4), LossNormalizers(1, 4, 4))
        assert m["clipped_sequences"] == clipped, mean_log_ratio
    _, m = gspo_loss(torch.full((1, 4), -1e-3), torch.zeros(1, 4), torch.tensor([-1.0]), torch.ones(1, 4),
                     LossNormalizers(1, 4, 4))
    assert m["clipped_sequences"] == 1  # lower side, A < 0


# ---------------------------------------------------------------- CISPO by hand


def test_cispo_by_hand_upper_clip_only():
    # Token ratios exp(logp - old): seq 0 [e^0.1, e^0.2, e^0.3] = [1.105171, 1.221403, 1.349859]; seq 1 [e^-0.1, e^-0.3]
    # = [0.904837, 0.740818]. clip_high = 0.2, no lower bound: weights w = [1.105171, 1.2, 1.2 | 0.904837, 0.740818].
    # A = [1, -2]; per token -w A logp, logp = [-1, -0.5, -2 | -0.4, -1.2]:
    #   seq 0: 1.105171 + 0.6 + 2.4 = 4.105171;  seq 1: -(0.904837 * 0.8) - (0.740818 * 2.4) = -0.723870 - 1.777963
    #   "token" aggregation: (4.105171 - 2.501833) / 5 = 0.320667
    # gradient -w A / 5 (w is detached; clipped tokens keep theirs): [-0.221034, -0.24, -0.24 | 0.361935, 0.296327]
    logp, old, mask = _inputs()
    loss, m = cispo_loss(logp, old, torch.tensor([1.0, -2.0], dtype=torch.float64), mask, NORM, clip_high=0.2)
    w = [E(0.1), 1.2, 1.2, E(-0.1), E(-0.3)]
    a = [1.0, 1.0, 1.0, -2.0, -2.0]
    lp = [-1.0, -0.5, -2.0, -0.4, -1.2]
    assert loss.item() == pytest.approx(sum(-wi * ai * li for wi, ai, li in zip(w, a, lp)) / 5)
    assert loss.item() == pytest.approx(0.320667, abs=1e-6)
    assert m["clipped_tokens"] == 2 and m["tokens"] == 5
    loss.backward()
    g = [-wi * ai / 5 for wi, ai in zip(w, a)]
    expected = torch.tensor([g[:3], g[3:] + [0.0]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)
    assert logp.grad[0, 1:].tolist() == pytest.approx([-0.24, -0.24])  # clipped, gradient kept


def test_cispo_by_hand_with_lower_clip():
    # clip_low = 0.2 as well: the last weight 0.740818 becomes 0.8: its term -(0.8 * -2 * -1.2) = -1.92,
    # loss = (4.105171 - 0.723870 - 1.92) / 5 = 0.292260, its gradient 2 * 0.8 / 5 = 0.32
    logp, old, mask = _inputs()
    loss, m = cispo_loss(logp, old, torch.tensor([1.0, -2.0], dtype=torch.float64), mask, NORM,
                         clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(0.292260, abs=1e-6)
    assert m["clipped_tokens"] == 3
    loss.backward()
    assert logp.grad[1, 1].item() == pytest.approx(0.32)


def test_cispo_on_policy_gradient_equals_grpo():
    # rho == 1: CISPO's gradient -A grad logp is the plain policy gradient, as GRPO's
    logp = torch.randn(2, 3, requires_grad=True)
    adv = torch.tensor([0.7, -1.3])
    cispo, _ = cispo_loss(logp, logp.detach(), adv, MASK, NORM)
    (g_cispo,) = torch.autograd.grad(cispo, logp)
    grpo, _ = grpo_loss(logp, logp.detach(), adv, MASK, NORM)
    (g_grpo,) = torch.autograd.grad(grpo, logp)
    torch.testing.assert_close(g_cispo, g_grpo)


# ---------------------------------------------------------------- against a TRL-style re-implementation


def _trl_style(logp, old, ref, adv, mask, *, loss, level, eps_low, eps_high, beta, num_tokens):
    """Written from TRL's GRPOTrainer._compute_loss formulas (loss_type "grpo" for GSPO, "cispo"), with
    TRL's conventions: for CISPO epsilon_high is the cap itself; for GSPO "grpo" averages per sequence."""
    log_ratio = logp - old
    if level == "sequence":
        liw = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    elif level == "sequence_token":
        seq = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).detach().unsqueeze(-1)
        liw = logp - logp.detach() + seq
    else:
        liw = log_ratio
    coef_1 = torch.exp(liw)
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    a = adv.unsqueeze(1)
    if loss == "cispo":
        per_token = -torch.clamp(coef_1, max=eps_high).detach() * a * logp
    else:
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
        per_token = -torch.min(coef_1 * a, coef_2 * a)
    per_token = per_token + beta * kl
    if loss == "cispo":
        return (per_token * mask).sum() / num_tokens
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


@pytest.mark.parametrize("level", ["sequence", "sequence_token"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gspo_matches_trl_style_reference(level, beta):
    gen = torch.Generator().manual_seed(0)
    B, T = 16, 7
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B, 1), generator=gen)).double()
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    # mean log-ratios around +-0.1 against eps 0.05 / 0.08: some sequences clip on each side
    logp = (old + 0.15 * torch.randn(B, T, generator=gen, dtype=torch.float64)).requires_grad_(True)
    ref = old + 0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    adv = torch.randn(B, generator=gen, dtype=torch.float64)
    ours, m = gspo_loss(logp, old, adv, mask, LossNormalizers(B, int(mask.sum()), T), clip_low=0.05, clip_high=0.08,
                        level=level, beta=beta, ref_logp_BT=ref)
    theirs = _trl_style(logp, old, ref, adv, mask, loss="gspo", level=level, eps_low=0.05, eps_high=0.08,
                        beta=beta, num_tokens=None)
    assert 0 < m["clipped_sequences"] < B
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours, logp)[0], torch.autograd.grad(theirs, logp)[0])


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_cispo_matches_trl_style_reference(beta):
    gen = torch.Generator().manual_seed(1)
    B, T = 16, 7
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B, 1), generator=gen)).double()
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    logp = (old + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)).requires_grad_(True)
    ref = old + 0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    adv = torch.randn(B, generator=gen, dtype=torch.float64)
    num_tokens = int(mask.sum())
    # TRL's cap epsilon_high = 1.3 is our 1 + clip_high with clip_high = 0.3; no lower bound in either
    ours, m = cispo_loss(logp, old, adv, mask, LossNormalizers(B, num_tokens, T), clip_high=0.3, beta=beta,
                         ref_logp_BT=ref)
    theirs = _trl_style(logp, old, ref, adv, mask, loss="cispo", level="token", eps_low=None, eps_high=1.3,
                        beta=beta, num_tokens=num_tokens)
    assert m["clipped_tokens"] > 0
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours, logp)[0], torch.autograd.grad(theirs, logp)[0])


def test_gspo_plain_float_reference():
    # Loops over python floats: s_i = exp(mean log-ratio), loss_i = -min(s A, clip(s) A), gradient of loss_i on
    # each of its tokens is -A s / |o_i| when the min takes the unclipped term, else 0; "sequence" mean over B.
    gen = torch.Generator().manual_seed(2)
    B, T = 6, 4
    lengths = [4, 1, 3, 2, 4, 3]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths], dtype=torch.float64)
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64)
    logp = (old + 0.2 * torch.randn(B, T, generator=gen, dtype=torch.float64)).requires_grad_(True)
    adv = [1.0, -1.0, 0.5, -2.0, 1.5, -0.5]
    lo, hi = 0.9, 1.1
    total, grads = 0.0, [[0.0] * T for _ in range(B)]
    for i, n in enumerate(lengths):
        s = math.exp(sum(logp[i, t].item() - old[i, t].item() for t in range(n)) / n)
        unclipped, clipped = s * adv[i], min(max(s, lo), hi) * adv[i]
        total += -min(unclipped, clipped) / B
        if unclipped <= clipped:
            for t in range(n):
                grads[i][t] = -adv[i] * s / n / B
    for level in ("sequence", "sequence_token"):
        norm = LossNormalizers(B, sum(lengths), T)
        loss, _ = gspo_loss(logp, old, torch.tensor(adv, dtype=torch.float64), mask, norm,
                            clip_low=0.1, clip_high=0.1, level=level)
        assert loss.item() == pytest.approx(total)
        (g,) = torch.autograd.grad(loss, logp)
        torch.testing.assert_close(g, torch.tensor(grads, dtype=torch.float64))


@pytest.mark.parametrize("aggregation", ["sequence", "token", "constant"])
def test_gspo_levels_agree_in_value_and_gradient(aggregation):
    # GSPO-token has the value of GSPO exactly; with one advantage per sequence its gradient is the same too,
    # even where clipping binds (a clipped s_{i,t} is clamped on every token of the sequence at once).
    gen = torch.Generator().manual_seed(3)
    B, T = 8, 5
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B, 1), generator=gen)).float()
    old = -torch.rand(B, T, generator=gen)
    adv = torch.randn(B, generator=gen)
    norm = LossNormalizers(B, int(mask.sum()), T)
    for spread, clip in ((0.0, 3e-4), (0.3, 0.1)):  # on-policy (nothing clips), then some clipping
        logp = (old + spread * torch.randn(B, T, generator=gen)).requires_grad_(True)
        out = {}
        for level in ("sequence", "sequence_token"):
            loss, m = gspo_loss(logp, old, adv, mask, norm, clip_low=clip, clip_high=clip, level=level,
                                aggregation=aggregation)
            out[level] = loss, torch.autograd.grad(loss, logp)[0], m
        assert torch.equal(out["sequence"][0], out["sequence_token"][0])
        assert out["sequence"][2] == out["sequence_token"][2]
        torch.testing.assert_close(out["sequence"][1], out["sequence_token"][1])
        assert (out["sequence"][2]["clipped_sequences"] > 0) == (spread > 0)


@pytest.mark.parametrize("loss_fn", [gspo_loss, cispo_loss])
def test_micro_batch_losses_sum_to_full_batch_loss(loss_fn):
    logp, old, mask = _inputs()
    adv = torch.tensor([0.7, -1.3], dtype=torch.float64)
    for aggregation in ("sequence", "token", "constant"):
        full, _ = loss_fn(logp, old, adv, mask, NORM, aggregation=aggregation)
        parts = sum(loss_fn(logp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], NORM,
                            aggregation=aggregation)[0] for i in range(2))
        assert full.item() == pytest.approx(parts.item())


@pytest.mark.parametrize("loss_fn", [gspo_loss, cispo_loss])
def test_kl_term_is_added_per_token(loss_fn):
    logp, old, mask = _inputs()
    ref = torch.tensor([[-1.5, -1.0, -2.0], [-0.4, -0.2, -3.0]], dtype=torch.float64)
    adv = torch.tensor([0.7, -1.3], dtype=torch.float64)
    for estimator, kl_fn in (("k3", k3_kl), ("k2", k2_kl)):
        with_kl, m = loss_fn(logp, old, adv, mask, NORM, beta=0.1, ref_logp_BT=ref, kl_estimator=estimator,
                             aggregation="token")
        without, _ = loss_fn(logp, old, adv, mask, NORM, aggregation="token")
        kl = kl_fn(logp, ref)
        assert with_kl.item() == pytest.approx(without.item() + 0.1 * (kl * mask).sum().item() / 5)
        assert m["kl_sum"] == pytest.approx((kl * mask).sum().item())
    with pytest.raises(ValueError):
        loss_fn(logp, old, adv, mask, NORM, beta=0.1)


# ---------------------------------------------------------------- KL estimators


def test_k2_by_hand_and_k3_default_is_unchanged():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    # k2 = 0.5 (logp - ref)^2 = [0.5 * 0.25, 0.5 * 1] = [0.125, 0.5]; gradient logp - ref = [0.5, -1]
    torch.testing.assert_close(k2_kl(logp, ref), torch.tensor([[0.125, 0.5]]))
    loss, m = grpo_loss(logp, logp.detach(), torch.tensor([0.0]), torch.ones(1, 2), LossNormalizers(1, 2, 2), beta=1.0,
                        ref_logp_BT=ref, kl_estimator="k2")
    assert loss.item() == pytest.approx(0.625 / 2) and m["kl_sum"] == pytest.approx(0.625)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.25, -0.5]]))
    # the default is k3, bit for bit the same as naming it
    gen = torch.Generator().manual_seed(4)
    lp, old, rf = (torch.randn(4, 6, generator=gen) for _ in range(3))
    adv, mask, norm = torch.randn(4, generator=gen), torch.ones(4, 6), LossNormalizers(4, 24, 6)
    default, _ = grpo_loss(lp, old, adv, mask, norm, beta=0.04, ref_logp_BT=rf)
    named, _ = grpo_loss(lp, old, adv, mask, norm, beta=0.04, ref_logp_BT=rf, kl_estimator="k3")
    by_hand = ((-torch.minimum(torch.exp(lp - old) * adv[:, None],
                               torch.clamp(torch.exp(lp - old), 0.8, 1.2) * adv[:, None]) + 0.04 * k3_kl(lp, rf))
               * mask).sum() / 24
    assert torch.equal(default, named)
    assert torch.equal(default, by_hand)


def _three_token_policy():
    theta = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([1.0, 0.1, -0.5], dtype=torch.float64), dim=0)
    return theta, ref_logp


def _expected_gradient_as_used(theta, ref_logp, estimator):
    """sum_y pi(y).detach() * grad_theta [loss on a one-token completion y], the loss being grpo_loss with A = 0,
    beta = 1: the exact expectation over y ~ pi_theta of the gradient the trainer computes from a sample."""
    logp_all = torch.log_softmax(theta, dim=0)
    total = torch.zeros_like(theta)
    for y in range(3):
        logp = logp_all[y].reshape(1, 1)
        loss, _ = grpo_loss(logp, logp.detach(), torch.zeros(1, dtype=torch.float64), torch.ones(1, 1),
                            LossNormalizers(1, 1, 1), beta=1.0, ref_logp_BT=ref_logp[y].reshape(1, 1),
                            kl_estimator=estimator)
        (g,) = torch.autograd.grad(loss, theta, retain_graph=True)  # logp_all is shared by the three
        total = total + logp_all[y].exp().detach() * g
    return total


def test_k3_expected_gradient_is_forward_kl_gradient_and_value_is_reverse_kl():
    theta, ref_logp = _three_token_policy()
    logp = torch.log_softmax(theta, dim=0)
    # E_pi[grad k3] = sum_y pi (1 - pi_ref/pi) grad log pi = sum_y pi grad log pi - sum_y pi_ref grad log pi
    #              = 0 - sum_y pi_ref grad log pi = grad KL(pi_ref || pi_theta), exactly
    forward_kl = (ref_logp.exp() * (ref_logp - logp)).sum()  # KL(pi_ref || pi_theta)
    reverse_kl = (logp.exp() * (logp - ref_logp)).sum()  # KL(pi_theta || pi_ref)
    (g_forward,) = torch.autograd.grad(forward_kl, theta, retain_graph=True)
    (g_reverse,) = torch.autograd.grad(reverse_kl, theta, retain_graph=True)
    g_k3 = _expected_gradient_as_used(theta, ref_logp, "k3")
    torch.testing.assert_close(g_k3, g_forward, rtol=1e-12, atol=1e-12)
    assert (g_k3 - g_reverse).abs().max() > 1e-2  # and not the reverse KL's, at this distance
    # its value, though, is unbiased for the reverse KL: E_pi[exp(x) - x - 1] = 1 - 1 + KL(pi || ref)
    pi = logp.exp().detach()
    assert (pi * k3_kl(logp, ref_logp)).sum().item() == pytest.approx(reverse_kl.item(), rel=1e-12)


def test_k2_expected_gradient_is_reverse_kl_gradient_exactly():
    theta, ref_logp = _three_token_policy()
    logp = torch.log_softmax(theta, dim=0)
    # grad KL(pi || ref) = sum_y grad pi (log pi - log ref) + sum_y pi grad log pi
    #                   = sum_y pi (log pi - log ref) grad log pi + 0
    #                   = E_pi[(log pi - log ref) grad log pi] = E_pi[grad 0.5 (log pi - log ref)^2]  -- exact,
    # not only to first order in log pi - log ref (only k2's *value* is a second-order approximation of the KL).
    reverse_kl = (logp.exp() * (logp - ref_logp)).sum()
    forward_kl = (ref_logp.exp() * (ref_logp - logp)).sum()
    (g_reverse,) = torch.autograd.grad(reverse_kl, theta, retain_graph=True)
    (g_forward,) = torch.autograd.grad(forward_kl, theta, retain_graph=True)
    score_identity = torch.zeros_like(theta)
    for y in range(3):
        (g_logp,) = torch.autograd.grad(logp[y], theta, retain_graph=True)
        score_identity += logp[y].exp().detach() * (logp[y] - ref_logp[y]).detach() * g_logp
    g_k2 = _expected_gradient_as_used(theta, ref_logp, "k2")
    torch.testing.assert_close(score_identity, g_reverse, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_k2, g_reverse, rtol=1e-12, atol=1e-12)
    assert (g_k2 - g_forward).abs().max() > 1e-2
    # its value is biased: E_pi[k2] != KL(pi || ref) at this distance
    pi = logp.exp().detach()
    assert abs((pi * k2_kl(logp, ref_logp)).sum().item() - reverse_kl.item()) > 1e-2
