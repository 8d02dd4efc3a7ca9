"""`grpokit compare`: a warm-up per seed shared by its methods, each method in its own process, intervals over seeds,
paired differences, an lr sweep on a validation split."""

import json

import pytest

from grpokit.cli import main
from grpokit.compare import aggregate, compare, format_table, parse_sweep
from grpokit.errors import GrpokitError


def _overrides(tiny_home):
    return [f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
            "data.max_eval_examples=4", "sampling.group_size=4", "sampling.max_new_tokens=8",
            "sampling.prompts_per_step=2", "train.steps=2", "warmup.steps=2", "warmup.batch_size=4",
            "eval.every=1", "train.threads=1", "verify.isolate=false"]


def test_compare_writes_intervals_and_paired_differences_over_seeds(tiny_home, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", *_overrides(tiny_home), "--config", str(tiny_home["train"].parents[1] / "none.yaml"),
                 "--out", str(out), "--methods", "grpo,ppo"])
    assert code == 2 and "none.yaml" in capsys.readouterr().err  # a missing config is named, nothing runs
    summary = compare(None, _overrides(tiny_home), out, methods=("grpo", "ppo"), seeds=2)
    table = (out / "table.md").read_text()
    assert table.count("\n| grpo |") == 1 and table.count("\n| ppo |") == 1
    assert "Δ final vs grpo" in table and "Student-t" in table
    assert (out / "accuracy.png").stat().st_size > 1000
    assert summary["seeds"] == [0, 1] and summary["reference"] == "grpo"
    grpo, ppo = summary["methods"]["grpo"], summary["methods"]["ppo"]
    # the same start per seed: both evaluate that seed's warm-up model before training
    assert grpo["before"]["values"] == ppo["before"]["values"]
    assert grpo["final_accuracy"]["n"] == 2 and grpo["final_accuracy"]["low"] is not None
    assert [s for s, _, _ in grpo["curves"][0]] == [0, 1, 2]  # before, every step, after
    # grpo against itself: every paired difference is exactly 0, an interval of no width
    assert grpo["vs_reference"]["final_accuracy"]["values"] == [0.0, 0.0]
    diffs = [p - g for p, g in zip(ppo["final_accuracy"]["values"], grpo["final_accuracy"]["values"])]
    assert ppo["vs_reference"]["final_accuracy"]["values"] == pytest.approx(diffs)
    assert ppo["trained_state_mb"]["mean"] > grpo["trained_state_mb"]["mean"]  # the value model shows
    assert grpo["tokens_generated"]["mean"] > 0 and grpo["peak_memory_mb"]["mean"] > 0
    for seed in (0, 1):
        assert (out / f"seed{seed}" / "warmup" / "final" / "model.safetensors").is_file()
    assert json.loads((out / "summary.json").read_text())["table"] == str(out / "table.md")
    # a second call with the same arguments reuses the finished runs instead of training again
    again = compare(None, _overrides(tiny_home), out, methods=("grpo",), seeds=1)
    assert again["methods"]["grpo"]["final_accuracy"]["values"] == grpo["final_accuracy"]["values"][:1]
    assert "reusing" in capsys.readouterr().err


def test_sweep_chooses_on_validation_and_scores_on_test(tiny_home, tmp_path):
    out = tmp_path / "sweep"
    summary = compare(None, [*_overrides(tiny_home), "warmup.steps=0", "train.steps=1", "eval.every=0"], out,
                      methods=("rft",), sweep="optim.lr=1e-5,1e-3", valid_path=str(tiny_home["train"]))
    rft = summary["methods"]["rft"]
    assert rft["value"] in ("1e-5", "1e-3") and set(rft["sweep"]) == {"1e-5", "1e-3"}
    chosen = rft["sweep"][rft["value"]]["mean"]
    assert chosen == max(v["mean"] for v in rft["sweep"].values())  # the best on validation
    assert (out / "seed0" / f"rft@{rft['value']}.test.log").is_file()  # its final model, scored on the test split
    assert "optim.lr chosen per method" in (out / "table.md").read_text()
    assert summary["reference"] is None  # grpo did not run: no paired differences
    with pytest.raises(GrpokitError, match="--valid"):
        compare(None, _overrides(tiny_home), tmp_path / "x", methods=("rft",), sweep="optim.lr=1e-5")
    with pytest.raises(GrpokitError, match="KEY=V1"):
        parse_sweep("optim.lr")
    assert parse_sweep("optim.lr=1e-5, 5e-5") == ("optim.lr", ["1e-5", "5e-5"])


def _run(final, curve_seconds, accuracy, train_seconds):
    return {"run_dir": "x", "accuracy_before": accuracy[0], "accuracy_after": final, "eval_n": 1000,
            "train_seconds": train_seconds, "tokens_generated": 10, "tokens_backpropagated": 5,
            "peak_memory_mb": 100.0, "trained_state_mb": 1.0, "zero_variance_fraction": 0.5,
            "steps_without_data": 0, "steps": 2, "curve": list(zip([0, 1, 2], curve_seconds, accuracy))}


def test_aggregate_by_hand():
    # seed 0: grpo 0.4 -> 0.5 -> 0.6 over 0, 10, 20 s; rft 0.4 -> 0.6 -> 0.6 over 0, 5, 10 s (horizon 10 s)
    runs = {"grpo": {0: _run(0.6, [0, 10, 20], [0.4, 0.5, 0.6], 20), 1: _run(0.5, [0, 10, 20], [0.4, 0.4, 0.5], 20)},
            "rft": {0: _run(0.6, [0, 5, 10], [0.4, 0.6, 0.6], 10), 1: _run(0.7, [0, 5, 10], [0.4, 0.7, 0.7], 10)}}
    r = aggregate(runs, reference="grpo")
    # seed 0 over the first 10 s: grpo (0.4 + 0.5) / 2 = 0.45; rft (5 * 0.5 + 5 * 0.6) / 10 = 0.55
    # seed 1: grpo 0.4; rft (5 * 0.55 + 5 * 0.7) / 10 = 0.625
    assert r["grpo"]["auc"]["values"] == pytest.approx([0.45, 0.40])
    assert r["rft"]["auc"]["values"] == pytest.approx([0.55, 0.625])
    assert r["grpo"]["best_accuracy"]["values"] == pytest.approx([0.6, 0.5])  # after step 0 only
    # paired final differences: 0.0 and +0.2 -> mean 0.1, sd 0.1414, half-width 12.706 * 0.1414 / sqrt 2 = 1.2706
    d = r["rft"]["vs_reference"]["final_accuracy"]
    assert d["mean"] == pytest.approx(0.1) and d["high"] == pytest.approx(0.1 + 1.27062, abs=1e-4)
    assert not d["excludes_zero"]
    assert r["rft"]["vs_reference"]["auc"]["values"] == pytest.approx([0.10, 0.225])
    meta = {"reference": "grpo", "seeds": [0, 1], "sweep": None, "lr": 5e-5, "interval": "95% Student-t interval",
            "eval_n": 1000, "test": "test.jsonl", "eval_standard_error_max": 0.0158, "warmup_steps": 300}
    for method in r:
        r[method]["value"] = None
    table = format_table(r, meta)
    assert "| rft | 5e-05 | 65.0% [1.5, 128.5] |" in table and "+10.0 [-117.1, +137.1] |" in table
    assert "at most 1.6 points" in table and "| 1 | 40.0% | 50.0% | 70.0% |" in table
    assert "each seed has its own SFT warm-up" in table and "| seed | warm-up | grpo | rft |" in table
    no_warmup = format_table(r, {**meta, "warmup_steps": 0})  # e.g. the SmolLM2 recipe: methods start from the model
    assert "no warm-up: every method starts from the model (accuracy 40.0% [40.0, 40.0])" in no_warmup
    assert "| seed | start | grpo | rft |" in no_warmup and "SFT warm-up" not in no_warmup


def test_compare_refuses_offline_and_unknown_methods(tmp_path):
    with pytest.raises(GrpokitError, match="online methods.*got nope, sft"):
        compare(None, [], tmp_path, methods=("grpo", "sft", "nope"))
