"""Held-out evaluation decides "correct" as training does: the run's scorer, the pass rule, and a
failed verification that is unscored, never wrong. Every expected number is counted by hand."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import grpokit.evaluation as evaluation
from grpokit.cli import main
from grpokit.data import render_prompt
from grpokit.evaluation import ComponentScorer, Judge, evaluate
from grpokit.rewards import BUILTIN_REWARDS, RewardComponent, accuracy, extract_answer, format_reward, make_scorer
from grpokit.sampler import sample
from tests.test_sandbox import REFUSAL

needs_sandbox = pytest.mark.skipif(REFUSAL is not None, reason=f"the sandbox refuses on this machine: {REFUSAL}")
HUMANEVAL = Path(__file__).parent / "fixtures" / "code" / "humaneval_20.jsonl"
DEMO_REWARDS = [{"name": "accuracy", "extract": "answer_tag"}, {"name": "format", "weight": 0.1}]  # demo.yaml's

USER_REWARDS = '''
import time


def has_seven(completion, **_):
    return 1.0 if "7" in completion else 0.0


def picky(completion, **_):
    """has_seven, but it fails on "boom" and hangs on "slow"."""
    if "boom" in completion:
        raise ValueError("boom")
    if "slow" in completion:
        time.sleep(30)
    return 1.0 if "7" in completion else 0.0


def raises(completion, **_):
    raise RuntimeError("this verifier is broken")
'''


@pytest.fixture
def user_rewards(tmp_path) -> Path:
    path = tmp_path / "user_rewards.py"
    path.write_text(USER_REWARDS)
    return path


def fake_sampling(monkeypatch, greedy: dict[str, str], groups: dict[str, list[str]] | None = None):
    """`evaluate` draws these completions: greedy[prompt] at group size 1, groups[prompt][:G] otherwise."""
    def fake_sample(model, tokenizer, prompts, group_size, **_):
        texts = [t for p in prompts for t in ([greedy[p]] if group_size == 1 else groups[p][:group_size])]
        return SimpleNamespace(completions=texts, completion_lengths_B=torch.tensor([len(t) for t in texts]),
                               truncated_B=torch.zeros(len(texts), dtype=torch.bool), env_rewards=None)
    monkeypatch.setattr(evaluation, "sample", fake_sample)


# ---------------------------------------------------------------- (a) the tiny task: the same numbers as before

@pytest.fixture(scope="module")
def taught_tiny(tiny_model_and_tokenizer, tiny_home):
    """The test-size tiny model after 100 SFT steps on the task: it writes <think>..</think><answer>..</answer>."""
    model, tokenizer = tiny_model_and_tokenizer
    model = copy.deepcopy(model)
    train = [json.loads(line) for line in Path(tiny_home["train"]).read_text().splitlines()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        for _ in range(100):
            rows = [train[i] for i in torch.randint(len(train), (64,), generator=order).tolist()]
            batch = tokenizer([render_prompt(r["prompt"], tokenizer) + r["completion"] + tokenizer.eos_token
                               for r in rows], return_tensors="pt", padding=True, add_special_tokens=False)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            loss = model(**batch, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), tokenizer


def test_tiny_task_accuracy_is_the_old_builtin_computation(taught_tiny, tiny_home):
    """The demo's rewards and the default pass rule (accuracy >= 1) give exactly the numbers of the
    former evaluation: builtin accuracy / format summed over the same greedy completions, divided by n."""
    model, tokenizer = taught_tiny
    rows = [json.loads(line) for line in Path(tiny_home["eval"]).read_text().splitlines()][:24]
    prompts = [render_prompt(r["prompt"], tokenizer) for r in rows]
    greedy = sample(model, tokenizer, prompts, group_size=1, max_new_tokens=40, temperature=0.0).completions
    # A model this small gets few sums right: make every third row's ground truth the model's own answer
    # (or the same number written another way, "18.0") so both verdicts occur.
    answers = []
    for i, (row, text) in enumerate(zip(rows, greedy)):
        own = extract_answer(text, "answer_tag")
        answers.append(row["answer"] if i % 3 or own is None else [own, f"{own}.0"][i // 3 % 2])
    old_accuracy = sum(accuracy(t, answer=a, extract="answer_tag") or 0.0 for t, a in zip(greedy, answers)) / 24
    old_format = sum(format_reward(t) for t in greedy) / 24
    assert 0 < old_accuracy < 1 and old_format > 0  # a comparison that can fail
    with make_scorer(DEMO_REWARDS, timeout=5.0, isolate=True) as scorer:  # training's default: the worker
        result = evaluate(model, tokenizer, prompts, answers, max_new_tokens=40, batch_size=24, scorer=scorer,
                          rows=[{**r, "answer": a} for r, a in zip(rows, answers)])
    assert result["accuracy"] == old_accuracy and result["format_rate"] == old_format
    assert result["unscored"] == 0 and result["errors"] == [] and result["n"] == 24
    # the components-in-this-process path (and rows defaulting to the answers) agrees
    components = make_scorer(DEMO_REWARDS, timeout=None, isolate=False).components
    again = evaluate(model, tokenizer, prompts, answers, components, max_new_tokens=40, batch_size=24)
    assert (again["accuracy"], again["format_rate"]) == (old_accuracy, old_format)


# ---------------------------------------------------------------- (b) the pass rule decides

def test_a_user_pass_reward_decides_correct(monkeypatch, user_rewards):
    greedy = {"p1": "<answer>7</answer>", "p2": "<answer>8</answer>", "p3": "77", "p4": "none"}
    fake_sampling(monkeypatch, greedy)
    prompts, answers = list(greedy), ["8"] * 4
    specs = ["accuracy", {"name": f"{user_rewards}:has_seven", "alias": "has_seven"}]
    with make_scorer(specs, timeout=5.0, isolate=True) as scorer:
        def run(**rule):
            return evaluate(None, None, prompts, answers, max_new_tokens=8, scorer=scorer, **rule)
        # has_seven: 1, 0, 1, 0 -> 2 of 4; the accuracy builtin alone would say 1 of 4 (p2)
        assert run(pass_reward="has_seven")["accuracy"] == 0.5
        assert run()["accuracy"] == 0.25  # the default pass_reward: accuracy
        # total = accuracy + has_seven: 1, 1, 1, 0; at threshold 1 -> 3 of 4, at 2 -> none
        assert run(pass_reward="total")["accuracy"] == 0.75
        assert run(pass_reward="total", pass_threshold=2.0)["accuracy"] == 0.0
    # no component the rule can name (no accuracy here): the builtin accuracy with its defaults, as before
    with make_scorer([f"{user_rewards}:has_seven"], timeout=None, isolate=False) as scorer:
        result = evaluate(None, None, prompts, answers, max_new_tokens=8, scorer=scorer)
    assert result["accuracy"] == 0.25 and result["format_rate"] == 0.0 and result["unscored"] == 0


def test_an_aliased_builtin_and_the_run_format_component():
    components = [RewardComponent("acc", BUILTIN_REWARDS["accuracy"], kwargs={"extract": "answer_tag"}),
                  RewardComponent("fmt", BUILTIN_REWARDS["format"], kwargs={"pattern": r"<answer>.*</answer>"})]
    judge = Judge(ComponentScorer(components))  # pass_reward "accuracy" names the aliased builtin
    verdicts = judge.judge(["q"] * 3, ["<answer>5</answer>", "5", "<think>x</think><answer>4</answer>"],
                           [{"answer": "5"}] * 3)
    # answer_tag: only the first has 5 in tags; the run's pattern: the first alone matches fully
    assert verdicts.correct == [True, False, False] and verdicts.formatted == [1.0, 0.0, 0.0]
    assert judge.extract == "answer_tag"


def test_a_multi_turn_environment_reward_joins_the_scores():
    judge = Judge(ComponentScorer([RewardComponent("accuracy", BUILTIN_REWARDS["accuracy"])]), "total", 2.0)
    # totals: 1 + 1, 1 + 0, 0 + 1 -> only the first reaches 2
    verdicts = judge.judge(["q"] * 3, ["5", "5", "4"], [{"answer": "5"}] * 3, env_rewards=[1.0, 0.0, 1.0])
    assert verdicts.correct == [True, False, False]


# ---------------------------------------------------------------- (c) a failed verification is unscored

def test_failed_verifications_are_unscored_not_wrong(monkeypatch, user_rewards):
    greedy = {"p1": "<think>a</think><answer>7</answer>", "p2": "boom 7", "p3": "8", "p4": "7 7", "p5": "boom",
              "p6": "slow 7"}
    fake_sampling(monkeypatch, greedy)
    with make_scorer(["format", {"name": f"{user_rewards}:picky", "alias": "picky"}], timeout=1.0,
                     isolate=True) as scorer:
        result = evaluate(None, None, list(greedy), ["7"] * 6, max_new_tokens=8, scorer=scorer, pass_reward="picky")
    # p2, p5 raise and p6 times out: 3 unscored; of p1, p3, p4, picky passes p1 and p4 -> 2/3;
    # format (the run's component) holds for p1 alone -> 1/3
    assert result["unscored"] == 3 and result["n"] == 6
    assert result["accuracy"] == pytest.approx(2 / 3) and result["format_rate"] == pytest.approx(1 / 3)
    assert sorted((e["index"], e["kind"]) for e in result["errors"]) == [(1, "exception"), (4, "exception"),
                                                                         (5, "timeout")]
    assert [s["correct"] for s in result["samples"]] == [True, None, False, True, None, None]


def test_pass_at_k_leaves_unscored_samples_out_of_n_and_c(monkeypatch, user_rewards):
    greedy = {"p1": "7", "p2": "boom", "p3": "8"}
    groups = {"p1": ["7", "boom", "8", "8"], "p2": ["boom", "boom", "boom", "7"], "p3": ["8", "7", "7", "boom"]}
    fake_sampling(monkeypatch, greedy, groups)
    with make_scorer([{"name": f"{user_rewards}:picky", "alias": "picky"}], timeout=None, isolate=False) as scorer:
        result = evaluate(None, None, list(greedy), ["7"] * 3, max_new_tokens=8, scorer=scorer, pass_reward="picky",
                          k=2, n_samples=4)
    # p1: 3 scored, 1 correct: 1 - C(2,2)/C(3,2) = 2/3. p2: 1 scored < k: no estimate. p3: 3 scored, 2 correct:
    # 1 (every pair holds a correct one). Mean over the 2 estimated prompts: 5/6.
    assert result["pass_at_k"] == pytest.approx(5 / 6) and result["pass_at_k_prompts"] == 2
    assert result["unscored_samples"] == 1 + 3 + 1
    # maj@2 on the scored among the first 2: p1 votes "7" (passes); p2 has none (left out); p3 ties 8 vs 7,
    # the first (8) wins and fails -> 1 of 2
    assert result["maj_at_k"] == 0.5
    # greedy: p2 unscored, p1 correct, p3 wrong
    assert result["accuracy"] == 0.5 and result["unscored"] == 1


def test_eval_command_reports_unscored(tiny_home, tmp_path, user_rewards, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(f"rewards: [{{name: '{user_rewards}:raises', alias: raises}}]\nonline:\n  pass_reward: raises\n"
                      "verify:\n  isolate: false\n")
    args = ["eval", str(tiny_home["model"]), str(tiny_home["eval"]), "--config", str(config), "--max-examples", "3",
            "--max-new-tokens", "4"]
    assert main([*args, "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["unscored"] == 3 and result["accuracy"] is None and result["format_rate"] is None
    assert "left unscored" in out.err and "this verifier is broken" in out.err
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "unscored: 3" in printed and "[unscored]" in printed


def test_training_logs_eval_unscored(tiny_home, tmp_path, user_rewards):
    from grpokit.config import load_config
    from grpokit.trainer import train

    out = tmp_path / "run"
    config = load_config(None, [
        f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
        "data.max_eval_examples=3", "train.method=sft", "train.steps=1", "offline.batch_size=4",
        "sampling.max_new_tokens=4", "train.progress=false", f"train.out_dir={out}", "verify.isolate=false",
        f"rewards=[{{name: '{user_rewards}:raises', alias: raises}}]", "online.pass_reward=raises"])
    summary = train(config)
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_accuracy" in r]
    assert [(r["phase"], r["eval_unscored"], r["eval_accuracy"]) for r in evals] == [("before", 3, None),
                                                                                   ("after", 3, None)]
    assert summary["eval_after"]["unscored"] == 3 and "errors" not in summary["eval_after"]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["phase"], e["index"], e["kind"]) for e in errors] == [(p, i, "exception") for p in ("before", "after")
                                                                     for i in range(3)]


# ---------------------------------------------------------------- (d) code_tests, in the sandbox

def _humaneval_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in HUMANEVAL.read_text().splitlines()[:n]]


@needs_sandbox
def test_code_tests_references_pass_and_broken_ones_fail(monkeypatch):
    rows = _humaneval_rows(6)
    greedy = {r["prompt"]: r["reference"] if i < 3 else r["broken"] for i, r in enumerate(rows)}
    fake_sampling(monkeypatch, greedy)
    specs = [{"name": "code_tests", "timeout_s": 10.0, "workers": 2}]
    with make_scorer(specs, timeout=60.0, isolate=True) as scorer:
        result = evaluate(None, None, list(greedy), [None] * 6, max_new_tokens=8, scorer=scorer,
                          rows=[{"tests": r["tests"], "answer": None} for r in rows], pass_reward="code_tests")
    assert [s["correct"] for s in result["samples"]] == [True, True, True, False, False, False]
    assert result["accuracy"] == 0.5 and result["unscored"] == 0


def test_code_tests_without_a_sandbox_is_unscored(monkeypatch):
    import grpokit.rewards.code_tests as code_tests_module
    from grpokit.sandbox import SandboxUnavailable

    def unavailable(*_, **__):
        raise SandboxUnavailable("no bubblewrap here (simulated)")
    monkeypatch.setattr(code_tests_module, "shared_sandbox", unavailable)
    rows = _humaneval_rows(2)
    judge = Judge(ComponentScorer([RewardComponent("code_tests", BUILTIN_REWARDS["code_tests"])]), "code_tests")
    verdicts = judge.judge([r["prompt"] for r in rows], [r["reference"] for r in rows],
                           [{"tests": r["tests"]} for r in rows])
    assert verdicts.correct == [None, None]
    assert [e["kind"] for e in verdicts.errors] == ["exception", "exception"]
    assert "no bubblewrap" in verdicts.errors[0]["message"]


def test_only_the_rewards_a_verdict_reads_are_scored(user_rewards):
    from grpokit.evaluation import eval_reward_specs, make_eval_scorer

    broken = {"name": f"{user_rewards}:raises", "alias": "raises", "weight": 0.0}
    specs = [{"name": "accuracy", "extract": "answer_tag"}, "format", broken]
    assert eval_reward_specs(specs, "accuracy") == specs[:2]
    assert eval_reward_specs(specs, "total") == specs  # the total reads every reward
    assert eval_reward_specs(specs, "raises") == [specs[1], broken]
    assert eval_reward_specs([broken], "accuracy") == []  # the builtin fallback needs nothing of the run's
    with make_eval_scorer(specs, "accuracy", timeout=5.0, isolate=True) as scorer:
        verdicts = Judge(scorer).judge(["q"] * 2, ["<answer>5</answer>", "5"], [{"answer": "5"}] * 2)
    assert verdicts.correct == [True, False] and verdicts.errors == []  # "raises" never ran


def test_compare_reports_unscored_evaluations(tmp_path):
    from grpokit.compare import aggregate, format_table, method_result
    from tests.test_compare import _run

    run = tmp_path / "grpo"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({
        "eval_before": {"accuracy": 0.5, "format_rate": 1.0, "n": 4}, "eval_after": {"accuracy": 0.75, "n": 4},
        "train_seconds": 3.0, "peak_memory_mb": 1.0, "trained_state_mb": 1.0}))
    rows = [{"step": 0, "phase": "before", "eval_accuracy": 0.5, "train_seconds": 0.0, "eval_unscored": 2},
            {"step": 1, "phase": "train", "loss": 0.1},
            {"step": 1, "phase": "after", "eval_accuracy": 0.75, "train_seconds": 3.0, "eval_unscored": 1}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert method_result(run)["eval_unscored"] == 3  # both evaluations
    runs = {"grpo": {0: {**_run(0.6, [0, 10], [0.4, 0.6], 10), "eval_unscored": 3},
                     1: {**_run(0.5, [0, 10], [0.4, 0.5], 10), "eval_unscored": 1}},
            "rft": {0: _run(0.6, [0, 10], [0.4, 0.6], 10), 1: _run(0.7, [0, 10], [0.4, 0.7], 10)}}
    results = aggregate(runs)
    assert (results["grpo"]["eval_unscored"], results["rft"]["eval_unscored"]) == (4, 0)
    meta = {"reference": None, "seeds": [0, 1], "sweep": None, "lr": 5e-5, "interval": "95% Student-t interval",
            "eval_n": 1000, "test": "test.jsonl", "eval_standard_error_max": 0.0158, "warmup_steps": 0}
    for method in results:
        results[method]["value"] = None
    assert "eval_unscored (held-out completions a reward failed on" in format_table(results, meta)
    assert "accuracy is over the scored rest): grpo 4." in format_table(results, meta)
    results["grpo"]["eval_unscored"] = 0
    assert "eval_unscored" not in format_table(results, meta)
