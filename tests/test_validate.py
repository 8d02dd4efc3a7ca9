"""`grpokit validate` (and `train`, which runs the same checks first): every bad row is reported
with its file, line and field, the exit code is non-zero, and no model is loaded.

For bad rows the model path points at a folder that does not exist, so any attempt to load it
would fail with a model error instead of the data error asserted here; loading the model is
also patched to fail the test. Rendering prompts needs the tokenizer, which is allowed.
"""

import re
from pathlib import Path

import pytest

import grpokit.modeling
import grpokit.trainer
from grpokit.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _model_must_not_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("validation loaded a model")

    monkeypatch.setattr(grpokit.modeling, "load_model", refuse)
    monkeypatch.setattr(grpokit.trainer, "load_model", refuse)


def _validate(tmp_path, capsys, data: bytes, *overrides, model="./no-such-model"):
    (tmp_path / "d.jsonl").write_bytes(data)
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{path: {model}}}\ndata: {{train: {tmp_path / 'd.jsonl'}}}\n")
    code = main(["validate", str(config), *overrides])
    return code, capsys.readouterr()


CASES = {
    "missing column": (b'{"prompt": "a", "answer": "1"}\n{"question": "b", "answer": "2"}\n', "d.jsonl:2", "prompt"),
    "wrong type": (b'{"prompt": 7, "answer": "1"}\n', "d.jsonl:1", "prompt"),
    "None": (b'{"prompt": "a", "answer": null}\n', "d.jsonl:1", "answer"),
    "empty string": (b'{"prompt": "", "answer": "1"}\n', "d.jsonl:1", "prompt"),
    "non-UTF-8 line": (b'{"prompt": "a", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "2"}\n', "d.jsonl:2",
                       "UTF-8"),
    "empty dataset": (b"\n\n", "d.jsonl", "no examples"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_input_exits_non_zero_naming_row_and_field(tmp_path, capsys, case):
    data, where, what = CASES[case]
    code, out = _validate(tmp_path, capsys, data)
    assert code == 2
    assert where in out.err and what in out.err, out.err
    assert "Traceback" not in out.err


def test_every_bad_row_is_reported_not_just_the_first(tmp_path, capsys):
    rows = (b'{"prompt": "", "answer": "1"}\n{"prompt": "ok", "answer": "1"}\n'
            b'{"prompt": "b"}\n{"prompt": 3, "answer": "1"}\n')
    code, out = _validate(tmp_path, capsys, rows)
    assert code == 2
    for line in (1, 3, 4):
        assert f"d.jsonl:{line}" in out.err
    assert "d.jsonl:2" not in out.err


def test_warmup_without_reference_completions_is_reported(tmp_path, capsys):
    code, out = _validate(tmp_path, capsys, b'{"prompt": "a", "answer": "1"}\n', "warmup.steps=5")
    assert code == 2 and "completion" in out.err and "d.jsonl:1" in out.err


def test_good_input_passes_and_says_what_it_checked(tmp_path, capsys, tiny_home):
    code, out = _validate(tmp_path, capsys, b'{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": 2}\n',
                          model=tiny_home["model"])
    assert code == 0
    assert "train data OK: 2 rows" in out.out and "accuracy" in out.out
    assert "'Q: a\\nA: '" in out.out  # the first prompt as the model will see it (tiny chat template)


def test_prompt_filter_counts_what_it_drops(tmp_path, capsys, tiny_home):
    rows = b'{"prompt": "a", "answer": "1"}\n{"prompt": "' + b"x" * 50 + b'", "answer": "2"}\n'
    code, out = _validate(tmp_path, capsys, rows, "data.max_prompt_tokens=20", model=tiny_home["model"])
    assert code == 0 and "train data OK: 1 rows from" in out.out and "1 dropped by data.max_prompt_tokens" in out.out


def test_dataset_left_empty_after_filtering(tmp_path, capsys, tiny_home):
    rows = b'{"prompt": "' + b"x" * 50 + b'", "answer": "1"}\n{"prompt": "' + b"y" * 60 + b'", "answer": "2"}\n'
    code, out = _validate(tmp_path, capsys, rows, "data.max_prompt_tokens=20", model=tiny_home["model"])
    assert code == 2
    assert "empty after filtering" in out.err and "max_prompt_tokens=20" in out.err and "d.jsonl:1" in out.err


def test_a_prompt_longer_than_the_models_positions_is_named(tmp_path, capsys, tiny_home):
    """The tiny model has 256 positions and a character-level tokenizer."""
    rows = b'{"prompt": "a", "answer": "1"}\n{"prompt": "' + b"x" * 300 + b'", "answer": "2"}\n'
    code, out = _validate(tmp_path, capsys, rows, model=tiny_home["model"])
    assert code == 2 and "d.jsonl:2" in out.err and "longer than the 256 positions" in out.err
    assert "data.max_prompt_tokens" in out.err
    code, out = _validate(tmp_path, capsys, rows, "data.max_prompt_tokens=100", model=tiny_home["model"])
    assert code == 0 and "warning" not in out.out


def test_prompts_plus_generation_past_the_models_positions_warn_with_the_fix(tmp_path, capsys, tiny_home):
    rows = b'{"prompt": "a", "answer": "1"}\n{"prompt": "' + b"x" * 100 + b'", "answer": "2"}\n'
    code, out = _validate(tmp_path, capsys, rows, "sampling.max_new_tokens=200", model=tiny_home["model"])
    warning = next(line for line in out.out.splitlines() if line.startswith("warning: "))
    assert code == 0 and "1 training prompts plus sampling.max_new_tokens=200 reach past the model's 256" in warning
    room = 256 - int(re.search(r"longest prompt (\d+) tokens: \S*d.jsonl:2", warning).group(1))
    assert f"sampling.max_new_tokens={room} or data.max_prompt_tokens=56 (drops those 1 prompts)" in warning
    code, out = _validate(tmp_path, capsys, rows, "sampling.max_new_tokens=64", model=tiny_home["model"])
    assert code == 0 and "warning" not in out.out


def test_prompt_template_error_is_reported_before_the_model(tmp_path, capsys, tiny_home):
    code, out = _validate(tmp_path, capsys, b'{"prompt": "a", "answer": "1"}\n', "data.prompt_template=Q: {question}",
                          model=tiny_home["model"])
    assert code == 2 and "{question}" in out.err


def test_no_unsafe_deserialisation_in_the_package():
    """No pickle of user files, no torch.load without weights_only, no yaml.load without a safe loader."""
    for path in (REPO / "grpokit").rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert not re.search(r"yaml\.load\(", text), path
        assert "trust_remote_code=True" not in text, path
