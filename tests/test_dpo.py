"""Offline DPO through the one loop: pair validation before the model, and a run that learns the pairs."""

import json

import pytest

import grpokit.trainer
from grpokit.cli import main
from grpokit.config import load_config
from grpokit.trainer import train

GOOD = "<think>7+8=15 3+4+1=8</think><answer>85</answer>"
SLIP = "<think>7+8=15 3+4=7</think><answer>75</answer>"


def _pairs_file(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _validate(tmp_path, capsys, rows, monkeypatch, method="dpo"):
    monkeypatch.setattr(grpokit.trainer, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    data = _pairs_file(tmp_path, rows)
    code = main(["validate", _config(tmp_path, data, method=method)])
    return code, capsys.readouterr()


def _config(tmp_path, data, model="./no-such-model", method="dpo"):
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {{path: {model}}}\ndata: {{train: {data}}}\ntrain: {{method: {method}}}\n")
    return str(path)


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_pair_problems_are_all_reported_before_the_model(tmp_path, capsys, monkeypatch, method):
    rows = [{"prompt": "What is 37 + 48?", "chosen": GOOD, "rejected": SLIP},
            {"prompt": "What is 1 + 1?", "chosen": "<answer>2</answer>", "rejected": "<answer>2</answer>"},
            {"prompt": "What is 2 + 2?", "chosen": "<answer>4</answer>"},
            {"prompt": "What is 3 + 3?", "chosen": 6, "rejected": "<answer>5</answer>"},
            {"prompt": "What is 4 + 4?", "chosen": "", "rejected": "<answer>9</answer>"}]
    code, out = _validate(tmp_path, capsys, rows, monkeypatch, method)
    assert code == 2
    err = out.err
    assert "pairs.jsonl:2" in err and "same text" in err  # chosen == rejected
    assert "pairs.jsonl:3" in err and "missing field 'rejected'" in err
    assert "pairs.jsonl:4" in err and "'chosen' should be a string" in err
    assert "pairs.jsonl:5" in err and "'chosen' is empty" in err
    assert "pairs.jsonl:1:" not in err and "pairs.jsonl:1," not in err


def test_dpo_run_learns_to_prefer_the_chosen_completions(tiny_home, tmp_path):
    # Pairs from the arithmetic task: the correct scratchpad over the one that forgets the carry.
    rows = [{"prompt": f"What is {a} + {b}?", "chosen": f"<answer>{a + b}</answer>",
             "rejected": f"<answer>{a + b - 10}</answer>"} for a, b in [(17, 25), (38, 46), (29, 59), (45, 47)]]
    data = _pairs_file(tmp_path, rows)
    config = load_config(_config(tmp_path, data, model=tiny_home["model"]),
                         [f"train.out_dir={tmp_path / 'run'}", "train.steps=8", "offline.batch_size=4",
                          "optim.lr=0.003", "optim.micro_batch_size=4", "train.progress=false", "train.threads=1"])
    summary = train(config)
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r.get("phase") == "train"]
    assert [r["step"] for r in steps] == list(range(1, 9))
    first, last = steps[0], steps[-1]
    # Step 1: the policy is the reference, so every implicit reward is 0 and the loss is log 2.
    assert first["reward_margin"] == 0.0 and first["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert last["reward_margin"] > 0 and last["preference_accuracy"] == 1.0 and last["loss"] < 0.69
    assert last["tokens_backpropagated"] == first["tokens_backpropagated"] > 0
    assert (tmp_path / "run" / "reference" / "model.safetensors").is_file()
    assert summary["model_dir"].endswith("final")
