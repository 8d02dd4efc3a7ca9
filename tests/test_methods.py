"""Every method name runs through the one loop on the tiny model, reports the shared metrics,
and behaves as its rule says (skips counted, PPO's extra model visible, PPO resumable)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpokit.config import CHOICES, load_config
from grpokit.methods import online_methods
from grpokit.methods.ppo import masked_whiten, token_rewards
from grpokit.trainer import train

FIXTURES = Path(__file__).parent / "fixtures" / "rewards" / "sample_rewards.py"
SHARED_METRICS = {"step", "loss", "grad_norm", "tokens_backpropagated", "peak_memory_mb", "lr", "time_training"}
ONLINE_METRICS = SHARED_METRICS | {"reward", "pass_rate", "zero_variance_fraction", "tokens_generated",
                                   "time_sampling", "time_scoring"}


def _pairs(tmp_path) -> Path:
    rows = [{"prompt": f"What is {a} + {b}?", "chosen": f"<answer>{a + b}</answer>",
             "rejected": f"<answer>{a + b - 10}</answer>"} for a, b in [(17, 25), (38, 46), (29, 59), (45, 47)]]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _overrides(tiny_home, out, method, tmp_path, *extra):
    data = _pairs(tmp_path) if method in ("dpo", "orpo") else tiny_home["train"]
    return [f"model.path={tiny_home['model']}", f"data.train={data}", f"data.eval={tiny_home['eval']}",
            "data.max_eval_examples=4", "sampling.group_size=4", "sampling.max_new_tokens=10",
            "sampling.prompts_per_step=2", "offline.batch_size=4", "train.steps=2", "train.progress=false",
            f"train.out_dir={out}", "optim.lr=0.001", f"train.method={method}", "verify.isolate=false",
            # a reward that varies inside groups even for an untrained model, and decides "passed"
            f"rewards=[accuracy, {{name: '{FIXTURES}:length_bonus', max_chars: 6, alias: short}}]",
            "online.pass_reward=short", "online.pass_threshold=1", *extra]


def _train_rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("phase") == "train"]


@pytest.mark.parametrize("method", CHOICES["train.method"])
def test_every_method_trains_and_reports_the_shared_metrics(tiny_home, tmp_path, method):
    out = tmp_path / "run"
    summary = train(load_config(None, _overrides(tiny_home, out, method, tmp_path)))
    steps = _train_rows(out)
    assert [r["step"] for r in steps] == [1, 2]
    expected = ONLINE_METRICS if method in online_methods() else SHARED_METRICS
    for r in steps:
        assert expected <= set(r), expected - set(r)
    assert summary["method"] == method and summary["trained_state_mb"] > 0
    assert (out / "final" / "model.safetensors").is_file()
    # the update moved the model (steps without data are allowed, but not every step here)
    assert any(r["tokens_backpropagated"] > 0 for r in steps)


def test_online_pairs_without_a_mixed_group_are_counted_and_skipped(tiny_home, tmp_path):
    out = tmp_path / "run"
    summary = train(load_config(None, _overrides(tiny_home, out, "online_dpo", tmp_path, "online.pass_threshold=2")))
    steps = _train_rows(out)
    assert all(r["pairs"] == 0 and r["no_data_reason"] and r["loss"] is None for r in steps)
    assert all(r["tokens_backpropagated"] == 0 and r["pass_rate"] == 0.0 for r in steps)
    start = AutoModelForCausalLM.from_pretrained(tiny_home["model"])
    final = AutoModelForCausalLM.from_pretrained(summary["model_dir"])
    for a, b in zip(start.parameters(), final.parameters()):
        assert torch.equal(a, b)  # no update at all, not an update on a zero loss


def test_rft_step_without_a_passing_completion_makes_no_update(tiny_home, tmp_path):
    out = tmp_path / "run"
    train(load_config(None, _overrides(tiny_home, out, "rft", tmp_path, "online.pass_threshold=2")))
    assert all(r["no_data_reason"] == "no completion passed verification" for r in _train_rows(out))


def test_ppo_holds_a_value_model_that_the_memory_report_shows(tiny_home, tmp_path):
    grpo = train(load_config(None, _overrides(tiny_home, tmp_path / "g", "grpo", tmp_path, "train.steps=1")))
    ppo = train(load_config(None, _overrides(tiny_home, tmp_path / "p", "ppo", tmp_path, "train.steps=1",
                                             "ppo.kl_coef=0")))
    # Same policy, no reference in either: PPO adds a critic (about the policy's size) and its AdamW state.
    assert ppo["trained_state_mb"] > 1.5 * grpo["trained_state_mb"]
    rows = _train_rows(tmp_path / "p")
    assert {"value_loss", "explained_variance", "value_clip_fraction"} <= set(rows[0])


def test_ppo_resumes_with_its_value_model_bit_for_bit(tiny_home, tmp_path):
    def run(out, *extra):
        return train(load_config(None, _overrides(tiny_home, out, "ppo", tmp_path, "train.steps=4",
                                                  "train.save_every=2", "train.log_rollouts=false", *extra)))

    whole = run(tmp_path / "whole")
    # a second run, stopped after step 2: continue it from that checkpoint
    out = tmp_path / "cut"
    run(out)
    shutil.rmtree(out / "checkpoints" / "step_4")
    shutil.rmtree(out / "final")
    (out / "checkpoints" / "latest").write_text("step_2")
    resumed = run(out, "train.resume=true")
    assert resumed["resumed_at_steps"] == [2]
    a = AutoModelForCausalLM.from_pretrained(whole["model_dir"])
    b = AutoModelForCausalLM.from_pretrained(resumed["model_dir"])
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name
    assert (out / "checkpoints" / "step_4" / "value_model" / "value_head.safetensors").is_file()
    assert [r["value_loss"] for r in _train_rows(out)] == [r["value_loss"] for r in _train_rows(tmp_path / "whole")]


def test_token_rewards_put_the_verified_reward_on_the_last_token_and_kl_on_every_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = token_rewards(torch.tensor([1.0, 0.5]), mask.sum(-1), logp, ref, mask, kl_coef=0.1)
    # row 0: -0.1 * (logp - ref) = [-0.05, 0, 0.1], +1 on token 2; row 1: [0, -0.1, 0(pad)], +0.5 on token 1
    torch.testing.assert_close(out, torch.tensor([[-0.05, 0.0, 1.1], [0.0, 0.4, 0.0]]))


def test_masked_whiten_ignores_padding():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    # valid tokens 1 and 3: mean 2, population std 1 -> -1, +1; the padded 100 becomes 0
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "tiny").glob("*.yaml"))


def test_there_is_an_example_config_for_every_method():
    assert set(CHOICES["train.method"]) <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_configs_validate_against_the_tiny_task(tiny_home, path):
    from grpokit.inputs import prepare_inputs

    config = load_config(path)
    assert config.train.method == path.stem or path.stem not in CHOICES["train.method"]  # e.g. tool_use: grpo
    data = {"pairs.jsonl": tiny_home["pairs"], "tool_train.jsonl": tiny_home["tool_train"]}.get(
        Path(config.data.train).name, tiny_home["train"])
    config = load_config(path, [f"model.path={tiny_home['model']}", f"data.train={data}",
                                f"data.eval={tiny_home['eval']}"])
    inputs = prepare_inputs(config)  # rewards, rows, fields the method needs, prompts rendered
    assert inputs.train and inputs.eval


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_methods_that_do_not_train_on_passed_run_without_an_accuracy_reward(tiny_home, tmp_path, method):
    out = tmp_path / "run"
    overrides = _overrides(tiny_home, out, method, tmp_path, "train.steps=1",
                           f"rewards=[{{name: '{FIXTURES}:length_bonus', max_chars: 6}}]",
                           "online.pass_reward=accuracy")
    train(load_config(None, overrides))
    (row,) = _train_rows(out)
    assert row["pass_rate"] is None and row["loss"] is not None and "passed" in json.loads(
        (out / "rollouts.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("method", ["gspo", "cispo"])
def test_own_ratio_methods_refuse_the_vllm_correction_defined_for_grpo(method):
    from grpokit.errors import GrpokitError
    from grpokit.methods import method_class

    with pytest.raises(GrpokitError, match="vllm.importance_correction=none"):
        method_class(load_config(None, [f"train.method={method}", "sampling.engine=vllm"]))
    method_class(load_config(None, [f"train.method={method}", "sampling.engine=vllm",
                                    "vllm.importance_correction=none"]))
    method_class(load_config(None, ["train.method=grpo", "sampling.engine=vllm"]))  # grpo takes it
