"""A failed verification is not a wrong answer: it stays out of baselines, pairs, filters and losses."""

import copy
import json
from pathlib import Path

import pytest
import torch

from grpokit.config import load_config
from grpokit.methods.grpo import compute_advantages, grpo_update
from grpokit.parallel import single_process
from grpokit.rewards.scoring import Scores
from grpokit.sampler import sample
from grpokit.trainer import train

FIXTURES = Path(__file__).parent / "fixtures" / "rewards" / "sample_rewards.py"


def test_the_issue_example_by_hand():
    # accuracy rewards [1, timeout, 0, 1]; before: the timeout counted as 0 -> [0.866, -0.866, -0.866, 0.866]
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    scored = torch.tensor([True, False, True, True])
    cfg = load_config(None, []).grpo
    mean, _ = compute_advantages(rewards, 4, cfg, scored_B=scored)
    # scored {1, 0, 1}: mean 2/3, unbiased std sqrt(1/3) = 0.57735; (1 - 2/3) / (0.57735 + 1e-4) = 0.57725
    torch.testing.assert_close(mean, torch.tensor([0.57725, 0.0, -1.15450, 0.57725]), atol=1e-5, rtol=0)
    loo, _ = compute_advantages(rewards, 4, cfg, baseline="leave_one_out", scale_by_std=False, scored_B=scored)
    # leave-one-out over the scored: 1 - (0 + 1)/2, 0 - (1 + 1)/2, 1 - (1 + 0)/2
    torch.testing.assert_close(loo, torch.tensor([0.5, 0.0, -1.0, 0.5]), atol=1e-6, rtol=0)
    unmasked, _ = compute_advantages(rewards, 4, cfg)
    torch.testing.assert_close(unmasked, torch.tensor([0.866, -0.866, -0.866, 0.866]), atol=1e-3, rtol=0)


def test_scores_call_a_reward_that_does_not_apply_verified():
    error = {"component": "acc", "index": 0, "kind": "exception", "message": "x", "completion": "c"}
    scores = Scores({"acc": [None, None, 1.0]}, [0.0, 0.0, 1.0], [error], {"acc": {"exception": 1}})
    assert scores.verified() == [False, True, True]  # sample 1: "not applicable", no error


@pytest.fixture(scope="module")
def rollout(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in ("What is 1 + 2?", "What is 9 + 9?")]
    torch.manual_seed(0)
    return sample(model, tokenizer, prompts, group_size=4, max_new_tokens=10, temperature=1.0)


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_an_unscored_completion_adds_nothing_to_the_update(tiny_model_and_tokenizer, rollout, beta):
    """Training on 8 completions with #2 and #5 unscored == training on the other 6 alone (KL included)."""
    model, _ = tiny_model_and_tokenizer
    config = load_config(None, ["optim.max_grad_norm=0", "sampling.max_new_tokens=10", f"grpo.beta={beta}",
                                "grpo.aggregation=sequence"])
    ref = copy.deepcopy(model).requires_grad_(False)
    start = copy.deepcopy(model)
    with torch.no_grad():  # away from the reference, so the KL has a gradient
        for p in start.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    advantages = torch.tensor([1.0, -0.5, 0.7, -0.75, 0.3, -2.0, 2.0, -1.0])  # unscored ones nonzero on purpose
    trained = torch.tensor([True, True, False, True, True, False, True, True])
    keep = trained.nonzero().flatten().tolist()
    results = []
    for rows, mask in ((list(range(8)), trained), (keep, None)):
        policy = copy.deepcopy(start)
        optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
        r = rollout if mask is not None else _select(rollout, rows)
        metrics = grpo_update(policy, optimizer, None, r, advantages[rows], config, single_process(),
                              ref_model=ref, trained_B=mask)
        results.append((policy, metrics))
    (masked, m_masked), (alone, m_alone) = results
    for (name, a), b in zip(masked.named_parameters(), alone.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    assert m_masked["tokens_backpropagated"] == m_alone["tokens_backpropagated"]
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(masked.parameters(), start.parameters()))


def _select(rollout, rows):
    """The rollout's rows as a rollout of their own (groups need not stay whole here)."""
    from grpokit.sampler import Rollout

    return Rollout(rollout.tokens.select(rows), rollout.sampling_logprobs_BC[rows], rollout.truncated_B[rows],
                   [rollout.completions[i] for i in rows], rollout.group_size)


def _run(tiny_home, tmp_path, method, *extra):
    out = tmp_path / method
    config = load_config(None, [
        f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
        "data.max_eval_examples=2", "sampling.group_size=4", "sampling.max_new_tokens=12",
        "sampling.prompts_per_step=4", "train.steps=3", "train.progress=false", f"train.out_dir={out}",
        f"train.method={method}", "verify.isolate=false", "verify.max_error_rate=1.0", "grpo.beta=0.04",
        f"rewards=[{{name: '{FIXTURES}:fails_on_every_third_length', alias: flaky}}]",
        "online.pass_reward=flaky", *extra])
    train(config)
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rollouts, [m for m in metrics if m.get("phase") == "train"]


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_a_run_whose_verifier_crashes_trains_only_on_what_it_verified(tiny_home, tmp_path, method):
    rollouts, metrics = _run(tiny_home, tmp_path, method)
    unscored = [r for r in rollouts if not r["scored"]]
    assert unscored, "the fixture reward should crash on some completions"
    assert all(r["advantage"] == 0.0 and r["rewards"]["flaky"] is None for r in unscored)
    assert all(len(r["completion"]) % 3 == 0 for r in unscored)
    groups: dict = {}
    for r in rollouts:
        groups.setdefault((r["step"], r["prompt"]), []).append(r)
    for members in groups.values():
        scored = [r for r in members if r["scored"]]
        assert sum(r["advantage"] for r in scored) == pytest.approx(0.0, abs=1e-5)
        if len(scored) < 2:  # no signal
            assert all(r["advantage"] == 0.0 for r in members)
    by_step = {m["step"]: m for m in metrics}
    for step, m in by_step.items():
        assert m["unscored_completions"] == sum(1 for r in unscored if r["step"] == step)


def test_ppo_runs_on_a_crashing_verifier_and_counts_what_it_left_out(tiny_home, tmp_path):
    rollouts, metrics = _run(tiny_home, tmp_path, "ppo")
    assert sum(m["unscored_completions"] for m in metrics) == sum(1 for r in rollouts if not r["scored"]) > 0
    assert all(m["loss"] is not None and m["tokens_backpropagated"] < m["tokens_generated"] for m in metrics)


def test_dynamic_sampling_can_filter_on_the_pass_verdict(tiny_home, tmp_path):
    rollouts, metrics = _run(tiny_home, tmp_path, "grpo", "sampling.dynamic=true", "sampling.dynamic_filter=pass",
                             "sampling.max_rounds=2")
    assert all("groups_trained" in m for m in metrics)
    steps: dict = {}
    for r in rollouts:
        steps.setdefault(r["step"], {}).setdefault(r["prompt"], []).append(r)

    def differs(members):  # the pass verdict varies among the verified members
        return len({r["passed"] for r in members if r["scored"]}) == 2

    for groups in steps.values():
        kept = [g for g in groups.values() if g[0]["advantage"] is not None]
        if any(differs(g) for g in groups.values()):  # otherwise the first round is trained as it is
            assert kept and all(differs(g) for g in kept)
    with pytest.raises(Exception, match="online.pass_reward"):
        _run(tiny_home, tmp_path / "bad", "grpo", "sampling.dynamic=true", "sampling.dynamic_filter=pass",
             "online.pass_reward=nothing")
