"""Numerical guards: a step with a non-finite loss or gradient changes nothing; K in a row stop the run."""

import copy
import json

import torch

import grpokit.methods.grpo as grpo_module
from grpokit.cli import main
from grpokit.config import load_config
from grpokit.methods.grpo import grpo_update
from grpokit.optim import build_optimizer
from grpokit.parallel import single_process
from grpokit.sampler import sample


def _nan_at(calls_to_poison: set[int]):
    """Wrap grpo_loss so that chosen calls (1-based) return a NaN loss, as a diverging model would."""
    real = grpo_module.grpo_loss
    count = {"n": 0}

    def poisoned(*args, **kwargs):
        count["n"] += 1
        loss, metrics = real(*args, **kwargs)
        return (loss * float("nan") if count["n"] in calls_to_poison else loss), metrics

    return poisoned


def test_nan_step_leaves_parameters_and_optimizer_bitwise_unchanged(tiny_model_and_tokenizer, monkeypatch):
    model, tokenizer = tiny_model_and_tokenizer
    model = copy.deepcopy(model)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 1 + 2?"}], tokenize=False,
                                           add_generation_prompt=True)
    rollout = sample(model, tokenizer, [prompt], group_size=4, max_new_tokens=8, temperature=1.0)
    config = load_config(None, ["optim.lr=0.01"])
    optimizer = build_optimizer(model, config.optim)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    grpo_update(model, optimizer, None, rollout, advantages, config, single_process())  # one real step: Adam has state
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = copy.deepcopy(optimizer.state_dict())

    monkeypatch.setattr(grpo_module, "grpo_loss", _nan_at({1}))
    metrics = grpo_update(model, optimizer, None, rollout, advantages, config, single_process())
    assert metrics["skipped_updates"] == 1
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
        assert p.grad is None
    after = optimizer.state_dict()
    for key, value in state["state"].items():
        for name, tensor in value.items():
            assert torch.equal(after["state"][key][name], tensor)


def _run_args(tiny_home, out):
    return [f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", "data.max_train_examples=8",
            "sampling.group_size=4", "sampling.max_new_tokens=8", "sampling.prompts_per_step=2", "train.steps=5",
            "train.progress=false", f"train.out_dir={out}", "verify.isolate=false",
            # the untrained model's rewards are all equal; keep every sample in the loss so the
            # injected NaN lands on the chosen steps
            "grpo.skip_zero_advantage=false"]


def test_one_nan_step_is_skipped_and_the_run_continues(tiny_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(grpo_module, "grpo_loss", _nan_at({2}))  # one micro-batch per step: call 2 = step 2
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    assert main(["train", str(config), *_run_args(tiny_home, tmp_path / "run")]) == 0
    assert "step 2: skipped 1 optimiser step" in capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = {r["step"]: r["skipped_updates"] for r in rows if r.get("phase") == "train"}
    assert skipped == {1: 0, 2: 1, 3: 0, 4: 0, 5: 0}


def test_three_nan_steps_in_a_row_stop_with_non_zero_exit(tiny_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(grpo_module, "grpo_loss", _nan_at({2, 3, 4}))
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    code = main(["train", str(config), *_run_args(tiny_home, tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "stopping at step 4: 3 optimiser steps in a row" in err and "max_consecutive_skips=3" in err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_non_finite_steps_that_are_not_consecutive_do_not_stop(tiny_home, tmp_path, monkeypatch):
    monkeypatch.setattr(grpo_module, "grpo_loss", _nan_at({1, 2, 4, 5}))
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    assert main(["train", str(config), *_run_args(tiny_home, tmp_path / "run")]) == 0
