"""`grpokit compare`: one shared warm-up, each method in its own process, one table and plot."""

import json

import pytest

from grpokit.cli import main
from grpokit.compare import compare
from grpokit.errors import GrpokitError


def _overrides(tiny_home):
    return [f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
            "data.max_eval_examples=4", "sampling.group_size=4", "sampling.max_new_tokens=8",
            "sampling.prompts_per_step=2", "train.steps=2", "warmup.steps=2", "warmup.batch_size=4",
            "eval.every=1", "train.threads=1", "verify.isolate=false"]


def test_compare_writes_a_row_and_a_curve_per_method(tiny_home, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", *_overrides(tiny_home), "--config", str(tiny_home["train"].parents[1] / "none.yaml"),
                 "--out", str(out), "--methods", "grpo,ppo"])
    assert code == 2 and "none.yaml" in capsys.readouterr().err  # a missing config is named, nothing runs
    summary = compare(None, _overrides(tiny_home), out, methods=("grpo", "ppo"))
    table = (out / "table.md").read_text()
    assert table.count("\n| grpo |") == 1 and table.count("\n| ppo |") == 1
    assert (out / "accuracy.png").stat().st_size > 1000
    grpo, ppo = summary["methods"]["grpo"], summary["methods"]["ppo"]
    # the same start: both evaluate the shared warm-up's model before training
    assert grpo["accuracy_before"] == ppo["accuracy_before"]
    assert [s for s, _, _ in grpo["curve"]] == [0, 1, 2]  # before, every step, after
    assert ppo["trained_state_mb"] > grpo["trained_state_mb"]  # the value model shows
    assert grpo["tokens_generated"] > 0 and grpo["peak_memory_mb"] > 0
    assert (out / "warmup" / "final" / "model.safetensors").is_file()
    assert json.loads((out / "summary.json").read_text())["table"] == str(out / "table.md")


def test_compare_refuses_offline_and_unknown_methods(tmp_path):
    with pytest.raises(GrpokitError, match="online methods.*got nope, sft"):
        compare(None, [], tmp_path, methods=("grpo", "sft", "nope"))
