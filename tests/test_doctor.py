"""`grpokit doctor`: what it shows and the warnings it raises, on the tiny model."""

import json

import pytest

from grpokit.cli import main
from grpokit.config import load_config
from grpokit.doctor import format_report, format_requires_think, prefills_think, run_doctor
from grpokit.rewards import build_reward_components


def _overrides(tiny_home, *extra):
    return [f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", "sampling.group_size=4",
            "sampling.max_new_tokens=8", "verify.isolate=false", "optim.micro_batch_size=8",
            "rewards=[{name: accuracy, extract: answer_tag}, format]", *extra]


@pytest.fixture(scope="module")
def untrained_report(tiny_home):
    return run_doctor(load_config(None, _overrides(tiny_home)), num_groups=3, show_samples=2)


def test_report_shows_prompts_rewards_and_statistics(untrained_report):
    r = untrained_report
    assert len(r.prompts) == 2 and r.prompts[0]["text"].startswith("Q: What is") and r.prompts[0]["tokens"] > 5
    assert len(r.samples) == 2 and set(r.samples[0]["rewards"]) == {"accuracy", "format"}
    assert "answer" in r.samples[0]["fields"]  # exactly what the reward function receives:
    assert "completion" not in r.samples[0]["fields"]  # not the row's demonstration (the tiny task has one)
    assert r.stats["groups"] == 3 and 0.0 <= r.stats["zero_variance_fraction"] <= 1.0
    assert r.memory["total_mb"] > r.memory["weights"] > 0 and r.memory["measured_peak_mb"] > 0
    text = format_report(r)
    for heading in ("== prompts", "== what the rewards receive", "== statistics ==", "== memory ==", "== warnings =="):
        assert heading in text


def test_an_untrained_model_gets_concrete_warnings(untrained_report):
    """A random model never ends within 8 tokens and never writes <answer>: both must be flagged with a fix."""
    warnings = "\n".join(untrained_report.warnings)
    assert untrained_report.stats["truncation_rate"] == 1.0
    assert "sampling.max_new_tokens=8" in warnings and "Raise sampling.max_new_tokens" in warnings
    assert "no sampled completion has that tag" in warnings
    assert "reward 'accuracy' gave the same value (0)" in warnings


def test_a_template_that_prefills_think_is_flagged(tiny_home):
    report = run_doctor(load_config(None, _overrides(tiny_home, "data.prompt_template='{prompt}\n<think>'")),
                        num_groups=2)
    assert report.stats["prefills_think"]
    assert any("already opens '<think>'" in w for w in report.warnings)


def test_prefill_and_pattern_checks():
    assert prefills_think("<|im_start|>assistant\n<think>\n") and not prefills_think("A: ")
    assert format_requires_think(build_reward_components(["format"]))
    assert not format_requires_think(build_reward_components([{"name": "format", "pattern": ".*?</think>.*"}]))
    assert not format_requires_think(build_reward_components(["accuracy"]))


def test_cli_prints_json_and_strict_exit_code(tiny_home, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  seed: 3\n")
    assert main(["doctor", str(config), *_overrides(tiny_home), "--groups", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stats"]["groups"] == 2 and report["warnings"]
    assert main(["doctor", str(config), *_overrides(tiny_home), "--groups", "2", "--strict"]) == 1


def test_lora_memory_estimate_counts_adapters_only(tiny_home):
    pytest.importorskip("peft")
    full = run_doctor(load_config(None, _overrides(tiny_home, "grpo.beta=0.04")), num_groups=2).memory
    lora = run_doctor(load_config(None, _overrides(tiny_home, "grpo.beta=0.04", "lora.enabled=true", "lora.r=2")),
                      num_groups=2).memory
    assert full["reference"] > 0 and lora["reference"] == 0  # the reference is the model with adapters off
    assert lora["gradients_and_adamw"] < full["gradients_and_adamw"]
