"""A whole run on the tiny model: files written with their documented fields, model reloadable."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpokit.cli import main
from grpokit.config import load_config
from grpokit.trainer import train

FIXTURES = Path(__file__).parent / "fixtures" / "rewards" / "sample_rewards.py"

STEP_FIELDS = {
    "step", "reward", "reward/accuracy", "reward/format", "reward/length_bonus", "accuracy", "format_rate",
    "zero_variance_fraction",
    "mean_length", "truncation_rate", "kl", "clip_fraction", "loss", "grad_norm", "tokens_generated",
    "tokens_backpropagated", "time_sampling", "time_scoring", "time_training", "time_reference", "time_step",
    "peak_memory_mb", "lr",
}
ROLLOUT_FIELDS = {"step", "prompt", "answer", "completion", "rewards", "reward", "advantage", "truncated"}


def _overrides(tiny_home, out):
    return [f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}",
            f"data.eval={tiny_home['eval']}", "data.max_eval_examples=8", "sampling.group_size=4",
            "sampling.max_new_tokens=12", "sampling.prompts_per_step=2", "train.steps=2", "warmup.steps=2",
            "warmup.batch_size=4", "train.progress=false", f"train.out_dir={out}", "grpo.beta=0.04",
            "train.save_every=1", "optim.warmup_steps=2", "optim.lr=0.001",
            # a reward that varies inside every group, so even an untrained model gets a gradient
            f"rewards=[accuracy, format, {{name: '{FIXTURES}:length_bonus', max_chars: 12, alias: length_bonus}}]"]


@pytest.fixture(scope="module")
def run(tiny_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(load_config(None, _overrides(tiny_home, out))), out


def test_summary_has_documented_fields(run):
    summary, out = run
    saved = json.loads((out / "summary.json").read_text())
    for key in ("eval_before", "eval_after"):
        assert set(saved[key]) >= {"accuracy", "format_rate", "n"} and saved[key]["n"] == 8
        assert 0.0 <= saved[key]["accuracy"] <= 1.0
    assert saved["steps"] == 2 and saved["run_dir"] == str(out) and saved["wall_seconds"] > 0
    assert (out / "training.png").stat().st_size > 1000
    assert saved["dashboard"] == str(out / "dashboard.png") and (out / "dashboard.png").stat().st_size > 1000
    assert (out / "config.yaml").is_file() and "seed" in json.loads((out / "environment.json").read_text())


def test_metrics_and_rollouts_files(run):
    _, out = run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("phase") == "train"]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert STEP_FIELDS <= set(r), STEP_FIELDS - set(r)
        assert r["tokens_backpropagated"] == r["tokens_generated"] > 0
    # beta 0.04: KL to the reference is 0 before the first update (up to float rounding: the frozen
    # reference runs without autograd, which may pick other kernels), clearly positive after it
    assert abs(steps[0]["kl"]) < 1e-9 and steps[1]["kl"] > 1e-6
    # the learning rate logged is the one the step used: linear warm-up over 2 steps
    assert [r["lr"] for r in steps] == pytest.approx([0.0005, 0.001])
    assert {r["phase"] for r in rows} >= {"warmup", "initial", "before", "after", "train"}
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2 * 2 * 4  # steps x prompts x group size
    assert all(ROLLOUT_FIELDS <= set(r) for r in rollouts)
    assert set(rollouts[0]["rewards"]) == {"accuracy", "format", "length_bonus"}


def test_saved_models_reload_with_transformers(run):
    _, out = run
    for folder in (out / "final", out / "checkpoints" / "step_1"):
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert model.config.vocab_size == len(tokenizer)
        assert (folder / "model.safetensors").is_file()


def test_eval_command_json(run, tiny_home, capsys):
    _, out = run
    assert main(["eval", str(out / "final"), str(tiny_home["eval"]), "--max-examples", "4", "--k", "2",
                 "--max-new-tokens", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 4 and result["k"] == 2
    assert set(result) >= {"accuracy", "format_rate", "pass_at_k", "maj_at_k"}
    assert result["pass_at_k"] >= 0.0


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "grpokit", "config"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "grpo.beta" in done.stdout
