"""Bad input ends with a clear one-paragraph error and exit code 2, before any model is loaded.

The model path points at a folder that does not exist: if grpokit tried to load the model
before checking the input, the error would be about the model instead of the input.
"""

import json

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


def test_score_command_reports_every_bad_row(tmp_path, capsys):
    data = _write(tmp_path / "c.jsonl", '{"text": "a"}\n{"completion": 5.5}\n{"completion": ["x"]}\n')
    assert main(["score", str(data)]) == 2
    err = capsys.readouterr().err
    assert "c.jsonl:1" in err and "c.jsonl:3" in err and "2 rows" in err
