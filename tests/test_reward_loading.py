"""Loading reward functions by name, building weighted components, scoring batches."""

import functools
from pathlib import Path

import numpy as np
import pytest

from grpokit.errors import GrpokitError
from grpokit.rewards import (
    RewardComponent,
    Scores,
    accuracy,
    build_reward_components,
    format_reward,
    is_batched,
    load_reward_function,
    score_completions,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rewards"
SAMPLE_FILE = FIXTURES / "sample_rewards.py"
GOOD = "<think>9*2</think><answer>18</answer>"
BAD = "<think>guess</think><answer>17</answer>"


# ---------------------------------------------------------------------- load_reward_function


def test_load_builtins_and_dotted_paths_into_the_package():
    assert load_reward_function("accuracy") is accuracy
    assert load_reward_function(" format ") is format_reward
    assert load_reward_function("grpokit.rewards.builtin:accuracy") is accuracy
    assert load_reward_function("grpokit.rewards.builtin.format_reward") is format_reward


def test_load_dotted_path_from_user_module(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    colon = load_reward_function("sample_rewards:length_bonus")
    dotted = load_reward_function("sample_rewards.length_bonus")
    assert colon is dotted
    assert colon("short") == 1.0
    assert colon("much longer than ten") == 0.0


def test_load_file_path_relative_to_current_dir(monkeypatch):
    monkeypatch.chdir(FIXTURES.parents[2])  # the repository root
    fn = load_reward_function("tests/fixtures/rewards/sample_rewards.py:length_bonus")
    assert fn.__name__ == "length_bonus"
    assert fn("abc", max_chars=2) == 0.0
    # The same file loads once: both names give the very same function.
    assert load_reward_function(f"{SAMPLE_FILE}:length_bonus") is fn


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("acuracy", "'acuracy' is not a built-in reward.*Did you mean 'accuracy'"),
        ("frmat", "Did you mean 'format'"),
        ("no_such_pkg_xyz.rewards:fn", "no module named 'no_such_pkg_xyz.rewards'"),
        ("no_such_pkg_xyz.fn", "no module named 'no_such_pkg_xyz'"),
        ("grpokit.rewards.builtin:acuracy", "has no attribute 'acuracy'.*'accuracy'"),
        ("missing/rewards.py:fn", "file 'missing/rewards.py' does not exist"),
        ("rewards.py", "names a file but no function"),
        ("", "not a non-empty string"),
    ],
)
def test_load_errors(name, message):
    with pytest.raises(GrpokitError, match=message):
        load_reward_function(name)


def test_load_errors_from_user_files(tmp_path, monkeypatch):
    with pytest.raises(GrpokitError, match="has no attribute 'length_bonu'.*'length_bonus'"):
        load_reward_function(f"{SAMPLE_FILE}:length_bonu")
    with pytest.raises(GrpokitError, match="NOT_CALLABLE is a int, not a function"):
        load_reward_function(f"{SAMPLE_FILE}:NOT_CALLABLE")

    broken = tmp_path / "broken.py"
    broken.write_text("def reward(completion):\n    return (\n")
    with pytest.raises(GrpokitError, match="broken.py' has a syntax error at line 2"):
        load_reward_function(f"{broken}:reward")

    needs_dep = tmp_path / "needs_dep.py"
    needs_dep.write_text("import not_installed_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(GrpokitError, match="imports 'not_installed_dep_xyz'"):
        load_reward_function("needs_dep:reward")


# ------------------------------------------------------------------------------- is_batched


def _per_sample(completion, **fields):
    return 1.0


def _trl(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def _completions_only(completions, **kwargs):
    return [1.0] * len(completions)


def _flagged(texts, **kwargs):
    return [1.0] * len(texts)


_flagged.batched = True


def test_is_batched_rule():
    assert is_batched(_per_sample) is False
    assert is_batched(_trl) is True
    assert is_batched(_completions_only) is True
    assert is_batched(_flagged) is True
    assert is_batched(functools.partial(_per_sample, level=2)) is False
    assert is_batched(functools.partial(_trl, scale=2)) is True
    assert is_batched(accuracy) is False
    assert is_batched(format_reward) is False


def test_is_batched_rejects_other_signatures():
    with pytest.raises(GrpokitError, match="first parameter is 'text'.*f\\(completion.*prompts"):
        is_batched(lambda text: 1.0)
    with pytest.raises(GrpokitError, match="first parameter is None"):
        is_batched(lambda **kwargs: 1.0)


# ------------------------------------------------------------------ build_reward_components


def test_build_components_from_names_and_dicts():
    components = build_reward_components(
        [
            "accuracy",
            {"name": "format", "weight": 0.5},
            {"name": "accuracy", "alias": "acc_tag", "extract": "answer_tag", "weight": 2},
            {"name": "format", "alias": "gsm8k_format", "pattern": r".*#### -?\d+"},
        ]
    )
    assert components == [
        RewardComponent("accuracy", accuracy, 1.0, {}, False),
        RewardComponent("format", format_reward, 0.5, {}, False),
        RewardComponent("acc_tag", accuracy, 2.0, {"extract": "answer_tag"}, False),
        RewardComponent("gsm8k_format", format_reward, 1.0, {"pattern": r".*#### -?\d+"}, False),
    ]
    assert isinstance(components[2].weight, float)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([], "expected a non-empty list"),
        ("accuracy", "expected a non-empty list"),
        ([{"weight": 1.0}], r"rewards\[0\].*'name' key"),
        ([3], r"rewards\[0\] is 3"),
        ([{"name": "accuracy", "extrct": "boxed"}], "unknown option 'extrct'.*extract"),
        ([{"name": "format", "patern": "x"}], "unknown option 'patern'.*weight, alias.*pattern"),
        ([{"name": "accuracy", "extract": "xml"}], "extract='xml' is not a valid mode"),
        ([{"name": "format", "pattern": "(unclosed"}], "not a valid regular expression"),
        ([{"name": "format", "pattern": 3}], "pattern must be a string"),
        ([{"name": "accuracy", "weight": float("nan")}], "weight nan is not a finite number"),
        ([{"name": "accuracy", "weight": float("inf")}], "weight inf is not a finite number"),
        ([{"name": "accuracy", "weight": "1"}], "weight '1' is not a finite number"),
        ([{"name": "accuracy", "weight": True}], "weight True is not a finite number"),
        ([{"name": "accuracy", "alias": ""}], "alias '' is not a non-empty string"),
        (["accuracy", {"name": "accuracy"}], r"rewards\[1\].*'accuracy' is used twice.*alias"),
        (["acuracy"], "Did you mean 'accuracy'"),
    ],
)
def test_build_components_errors(specs, message):
    with pytest.raises(GrpokitError, match=message):
        build_reward_components(specs)


def test_build_components_user_functions(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    per_sample, batched = build_reward_components(
        [
            {"name": "sample_rewards:length_bonus", "max_chars": 5},
            {"name": f"{SAMPLE_FILE}:trl_exact", "alias": "exact"},
        ]
    )
    assert (per_sample.name, per_sample.kwargs, per_sample.batched) == (
        "sample_rewards:length_bonus",
        {"max_chars": 5},
        False,
    )
    assert (batched.name, batched.batched) == ("exact", True)


# ------------------------------------------------------------------------ score_completions


def test_score_builtins_with_weights_and_none_skipped():
    components = build_reward_components(["accuracy", {"name": "format", "weight": 0.5}])
    examples = [{"prompt": "q", "answer": "18"}, {"prompt": "q", "answer": "18"}, {"prompt": "r"}]
    scores = score_completions(
        components, ["q", "q", "r"], [GOOD, "<answer>18</answer>", GOOD], examples
    )
    assert scores.components == {"accuracy": [1.0, 1.0, None], "format": [1.0, 0.0, 1.0]}
    assert scores.total == [1.5, 1.0, 0.5]  # row 3 has no answer: only format counts
    assert scores.summary() == {
        "accuracy": {"mean": 1.0, "n_none": 1},
        "format": {"mean": 2 / 3, "n_none": 0},
    }


def test_score_per_sample_call_gets_row_fields_prompt_and_options():
    calls = []

    def spy(completion, **fields):
        calls.append((completion, fields))
        return len(completion)

    component = RewardComponent("spy", spy, weight=2.0, kwargs={"level": 3, "answer": "forced"})
    examples = [{"prompt": "row prompt", "completion": "sft target", "answer": "7", "id": 1}]
    scores = score_completions([component], ["chat prompt"], ["abcd"], examples)
    # The scorer's prompt wins over the row's; the row's `completion` is never forwarded;
    # the config's options win over row fields.
    assert calls == [("abcd", {"answer": "forced", "id": 1, "prompt": "chat prompt", "level": 3})]
    assert scores.components == {"spy": [4.0]}
    assert scores.total == [8.0]


def test_score_batched_trl_function_receives_columns_as_lists():
    calls = []

    def spy(prompts, completions, **kwargs):
        calls.append((prompts, completions, kwargs))
        return np.array([0.25, 1.0, 0.0])  # numpy results are fine

    component = RewardComponent("spy", spy, kwargs={"scale": 2}, batched=True)
    examples = [
        {"prompt": "p1", "answer": "1", "level": 1},
        {"prompt": "p1", "answer": "1", "level": 1},
        {"prompt": "p2", "answer": "2"},  # a missing field becomes None in its column
    ]
    scores = score_completions([component], ["P1", "P1", "P2"], ["a", "b", "c"], examples)
    assert calls == [
        (
            ["P1", "P1", "P2"],
            ["a", "b", "c"],
            {"answer": ["1", "1", "2"], "level": [1, 1, None], "scale": 2},
        )
    ]
    assert scores.components == {"spy": [0.25, 1.0, 0.0]}
    assert scores.total == [0.25, 1.0, 0.0]


def test_score_trl_function_loaded_from_file_next_to_builtin():
    components = build_reward_components(
        [f"{SAMPLE_FILE}:trl_exact", {"name": "accuracy", "weight": 3}]
    )
    examples = [{"answer": "18"}, {"answer": "5"}]
    scores = score_completions(components, ["q1", "q2"], [" 18 ", "<answer>5</answer>"], examples)
    assert scores.components == {f"{SAMPLE_FILE}:trl_exact": [1.0, 0.0], "accuracy": [1.0, 1.0]}
    assert scores.total == [4.0, 3.0]


def test_score_converts_nan_to_none_and_numpy_scalars_to_float():
    components = build_reward_components([f"{SAMPLE_FILE}:nan_for_empty"])
    scores = score_completions(components, ["p", "p"], ["", "x"], [{}, {}])
    assert scores.components == {f"{SAMPLE_FILE}:nan_for_empty": [None, 0.5]}
    assert scores.total == [0.0, 0.5]
    assert scores.summary() == {f"{SAMPLE_FILE}:nan_for_empty": {"mean": 0.5, "n_none": 1}}
    # NaN is now counted as an error (None is how a reward says "not applicable").
    assert scores.error_counts == {f"{SAMPLE_FILE}:nan_for_empty": {"nan": 1}}

    values = iter([np.float32(0.5), np.int64(2), np.bool_(True), True, None])
    numpy_component = RewardComponent("np", lambda completion, **_: next(values))
    scores = score_completions([numpy_component], ["p"] * 5, ["c"] * 5, [{}] * 5)
    assert scores.components["np"] == [0.5, 2.0, 1.0, 1.0, None]
    assert all(type(v) is float for v in scores.components["np"][:4])


def test_score_all_none_summary_mean_is_none():
    scores = Scores(components={"accuracy": [None, None]}, total=[0.0, 0.0])
    assert scores.summary() == {"accuracy": {"mean": None, "n_none": 2}}


@pytest.mark.parametrize(
    ("result", "values", "kind", "message"),
    [
        ([1.0], [None, None], "wrong_length", "batched reward returned 1 values for 2 completions"),
        ([1.0, 1.0, 1.0], [None, None], "wrong_length", "returned 3 values for 2 completions"),
        (1.0, [None, None], "wrong_length", "returned float; expected a list of 2 numbers"),
        ("11", [None, None], "wrong_length", "returned str; expected a list of 2 numbers"),
        ([1.0, "yes"], [1.0, None], "not_a_number", "returned 'yes' of type str; expected a number or None"),
        ([1.0, float("inf")], [1.0, None], "not_a_number", "returned inf; expected a finite number"),
    ],
)
def test_score_bad_batched_results(result, values, kind, message):
    # A bad result is no longer raised: its cells become None and are counted.
    component = RewardComponent("bad", lambda prompts, completions, **kw: result, batched=True)
    scores = score_completions([component], ["p", "p"], ["a", "b"], [{}, {}])
    assert scores.components == {"bad": values}
    assert scores.error_counts == {"bad": {kind: values.count(None)}}
    assert all(e["kind"] == kind and message in e["message"] for e in scores.errors)


def test_score_user_exception_names_the_error():
    def broken(completion, **fields):
        return fields["solution"]

    scores = score_completions([RewardComponent("broken", broken)], ["p"], ["c"], [{}])
    assert scores.components == {"broken": [None]}
    assert scores.errors == [
        {"component": "broken", "index": 0, "kind": "exception", "message": "KeyError: 'solution'", "completion": "c"}
    ]


def test_score_requires_one_prompt_and_example_per_completion():
    components = build_reward_components(["format"])
    with pytest.raises(ValueError, match="got 1 prompts, 2 completions and 2 examples"):
        score_completions(components, ["p"], ["a", "b"], [{}, {}])
