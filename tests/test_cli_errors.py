"""Bad input ends with a clear one-paragraph error and exit code 2, before any model is loaded.

The model path points at a folder that does not exist: if grpokit tried to load the model
before checking the input, the error would be about the model instead of the input.
"""

import json
from pathlib import Path

import pytest

from grpokit.cli import main


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def good_data(tmp_path):
    return _write(tmp_path / "train.jsonl", '{"prompt": "What is 1 + 1?", "answer": "2"}\n')


def _train(tmp_path, capsys, *overrides):
    code = main(["train", str(_write(tmp_path / "c.yaml", "model:\n  path: ./no-such-model\n")), *overrides,
                 f"train.out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    return code, err


def test_missing_data_file(tmp_path, capsys):
    code, err = _train(tmp_path, capsys, f"data.train={tmp_path / 'nope.jsonl'}")
    assert code == 2 and "nope.jsonl" in err and "Traceback" not in err


def test_malformed_jsonl_line(tmp_path, capsys):
    data = _write(tmp_path / "d.jsonl", '{"prompt": "a", "answer": "1"}\n{"prompt": "b", \n')
    code, err = _train(tmp_path, capsys, f"data.train={data}")
    assert code == 2 and "d.jsonl:2" in err


def test_missing_column_suggests_the_close_one(tmp_path, capsys):
    data = _write(tmp_path / "d.jsonl", '{"promt": "a", "answer": "1"}\n')
    code, err = _train(tmp_path, capsys, f"data.train={data}")
    assert code == 2 and "d.jsonl:1" in err and "promt" in err


def test_empty_prompt(tmp_path, capsys):
    data = _write(tmp_path / "d.jsonl", '{"prompt": "  ", "answer": "1"}\n')
    code, err = _train(tmp_path, capsys, f"data.train={data}")
    assert code == 2 and "d.jsonl:1" in err and "prompt" in err


def test_non_string_answer(tmp_path, capsys):
    data = _write(tmp_path / "d.jsonl", '{"prompt": "a", "answer": [1, 2]}\n')
    code, err = _train(tmp_path, capsys, f"data.train={data}")
    assert code == 2 and "d.jsonl:1" in err and "answer" in err


def test_unknown_config_key(tmp_path, capsys, good_data):
    code, err = _train(tmp_path, capsys, f"data.train={good_data}", "grpo.bta=0.1")
    assert code == 2 and "grpo.bta" in err and "grpo.beta" in err


def test_reward_that_cannot_be_imported(tmp_path, capsys, good_data):
    code, err = _train(tmp_path, capsys, f"data.train={good_data}", "rewards=[no_such_module.fn]")
    assert code == 2 and "no_such_module" in err


def test_yaml_python_tag_is_rejected(tmp_path, capsys):
    config = _write(tmp_path / "c.yaml", "model: !!python/object/apply:os.system ['echo hacked']\n")
    assert main(["train", str(config)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_unknown_key_in_yaml_names_the_file(tmp_path, capsys):
    config = _write(tmp_path / "c.yaml", "sampling:\n  groupsize: 4\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "c.yaml" in err and "sampling.group_size" in err


def test_score_command_writes_rows_and_summary(tmp_path, capsys):
    rows = [{"completion": "<think>1+1</think><answer>2</answer>", "answer": "2"},
            {"completion": "The answer is 3", "answer": "2"},
            {"completion": "<think>x</think><answer>$1,800</answer>", "answer": 1800}]
    data = _write(tmp_path / "c.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["score", str(data), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 3 and summary["components"]["accuracy"]["mean"] == pytest.approx(2 / 3)
    assert summary["components"]["format"]["mean"] == pytest.approx(2 / 3)
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rewards"]["accuracy"] for r in scored] == [1.0, 0.0, 1.0]
    assert scored[1]["completion"] == rows[1]["completion"]


BAD_REWARDS = Path(__file__).parent / "fixtures" / "rewards" / "bad_rewards.py"


def test_score_command_survives_a_hanging_or_crashing_verifier(tmp_path, capsys):
    """As training scores: a worker with verify.timeout per call. A hang is cut, a crash costs its cell."""
    rows = [{"completion": "bad one", "answer": "1"}, {"completion": "<answer>1</answer>", "answer": "1"},
            {"completion": "bad two", "answer": "1"}]
    data = _write(tmp_path / "c.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    rewards = f"rewards=['{BAD_REWARDS}:sleeps', '{BAD_REWARDS}:exits', accuracy]"
    assert main(["score", str(data), rewards, "verify.timeout=2", "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert summary["reward_failures"] == {f"{BAD_REWARDS}:sleeps": {"timeout": 2},
                                          f"{BAD_REWARDS}:exits": {"crashed": 2}}
    assert summary["unscored_rows"] == 2 and summary["components"]["accuracy"]["mean"] == pytest.approx(1 / 3)
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rewards"][f"{BAD_REWARDS}:sleeps"] for r in scored] == [None, 1.0, None]
    assert [sorted(e["kind"] for e in r.get("reward_errors", [])) for r in scored] == \
        [["crashed", "timeout"], [], ["crashed", "timeout"]]
    assert "c.jsonl:1: timeout" in printed.err


def test_score_command_warns_about_rows_without_the_answer_field(tmp_path, capsys):
    data = _write(tmp_path / "c.jsonl", '{"completion": "<answer>2</answer>", "answer": "2"}\n'
                                        '{"completion": "<answer>2</answer>", "gold": "2"}\n')
    assert main(["score", str(data), "--answer-field", "gold", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["rows_without_answer"] == 1
    assert "1 of 2 rows have no 'gold' field (e.g. " in out.err and "c.jsonl:1)" in out.err


def test_score_command_reports_every_bad_row(tmp_path, capsys):
    data = _write(tmp_path / "c.jsonl", '{"text": "a"}\n{"completion": 5.5}\n{"completion": ["x"]}\n{bad json\n')
    assert main(["score", str(data)]) == 2
    err = capsys.readouterr().err
    assert "c.jsonl:1" in err and "c.jsonl:3" in err and "3 problems" in err  # 5.5 is read as text
    assert "c.jsonl:4: malformed JSON" in err  # in the same error as the bad fields, not a second pass


@pytest.mark.parametrize("args", [["doctor", "c.yaml", "--groups", "0"], ["doctor", "c.yaml", "--groups", "-1"],
                                  ["doctor", "c.yaml", "--show", "-1"], ["eval", "m", "d", "--max-examples", "0"],
                                  ["eval", "m", "d", "--max-new-tokens", "0"], ["eval", "m", "d", "--k", "-2"],
                                  ["compare", "--seeds", "0"], ["compare", "--steps", "x"]])
def test_count_options_out_of_range_are_usage_errors(args, capsys):
    """Before any file or model is touched: exit 2 with the option and what it expects."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert f"argument {args[-2]}: expected an integer" in capsys.readouterr().err


def test_explain_plot_to_an_unwritable_path_is_a_named_error(tmp_path, capsys):
    blocker = _write(tmp_path / "file", "x")  # a file where the plot's folder would be
    assert main(["explain", "--plot", str(blocker / "x.png")]) == 2
    assert f"could not write the plot to {blocker / 'x.png'}" in capsys.readouterr().err
