"""Tests for grpokit.data: every source kind, every row format, every bad-input message."""

import json
import re
import time
from pathlib import Path

import pytest

from grpokit.data import Example, load_examples, render_prompt
from grpokit.errors import GrpokitError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"
GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared/data/gsm8k/test.jsonl"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the network: the hub path must fail fast and clearly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_lines(path: Path, lines: list) -> Path:
    """Write JSON Lines; str items are written verbatim (to make malformed lines)."""
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def error_of(source, **kwargs) -> str:
    with pytest.raises(GrpokitError) as info:
        load_examples(source, **kwargs)
    return str(info.value)


# ---- sources ---------------------------------------------------------------------------------


def test_jsonl_standard_rows_with_lines_fields_and_number_answers():
    path = FIXTURES / "standard.jsonl"
    examples = load_examples(path)
    assert [e.prompt for e in examples] == ["What is 2 + 3?", "What is 10 - 4?", "What is 1 / 4?"]
    assert [e.answer for e in examples] == ["5", "6", "0.25"]
    assert [e.fields for e in examples] == [{"level": 1}, {"level": 1}, {"level": 2}]
    # Line 2 is blank: skipped, but it still counts in the line numbers.
    assert [e.source for e in examples] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert examples[1].reward_fields() == {"answer": "6", "level": 1}


def test_json_list_file_uses_row_indexes():
    path = FIXTURES / "list.json"
    examples = load_examples(str(path))
    assert examples == [
        Example("What is 7 * 6?", "42", {}, f"{path}[0]"),
        Example("What is 9 + 9?", "18", {"topic": "addition"}, f"{path}[1]"),
    ]


def test_json_file_holding_json_lines(tmp_path):
    path = write_lines(tmp_path / "rows.json", [{"prompt": "p", "answer": "a"}])
    assert load_examples(path) == [Example("p", "a", {}, f"{path}:1")]


def test_csv_rows_keep_strings_and_report_starting_lines():
    path = FIXTURES / "standard.csv"
    examples = load_examples(path)
    assert [e.prompt for e in examples] == [
        "What is 2 + 2?",
        "Add these:\r\n1 and 2",
        "What is 1,000 + 1?",
    ]
    assert [e.answer for e in examples] == ["4", "3", "1001"]
    assert examples[0].fields == {"topic": "addition"}
    # The quoted cell spans lines 3-4 and line 5 is blank, so the last row starts on line 6.
    assert [e.source for e in examples] == [f"{path}:2", f"{path}:3", f"{path}:6"]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    table = pa.table({"prompt": ["a?", "b?"], "answer": [1.0, 2.5], "id": [7, 8]})
    pq.write_table(table, path)
    examples = load_examples(path)
    assert examples == [
        Example("a?", "1", {"id": 7}, f"{path}[0]"),
        Example("b?", "2.5", {"id": 8}, f"{path}[1]"),
    ]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    rows = {"prompt": ["x?", "y?"], "answer": ["1", "2"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "one"))
    examples = load_examples(tmp_path / "one", split="test")  # one Dataset: split is ignored
    assert [(e.prompt, e.answer, e.source) for e in examples] == [
        ("x?", "1", f"{tmp_path / 'one'}[0]"),
        ("y?", "2", f"{tmp_path / 'one'}[1]"),
    ]

    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(rows),
        test=datasets.Dataset.from_dict({"prompt": ["z?"], "answer": ["3"]}),
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    assert [e.prompt for e in load_examples(tmp_path / "dict")] == ["x?", "y?"]
    test = load_examples(tmp_path / "dict", split="test")
    assert [(e.prompt, e.answer, e.source) for e in test] == [
        ("z?", "3", f"{tmp_path / 'dict'}/test[0]")
    ]
    message = error_of(tmp_path / "dict", split="tset")
    assert "split 'tset' not found" in message
    assert message == (
        f"{tmp_path / 'dict'}: split 'tset' not found; the saved dataset has splits 'train', "
        "'test' (did you mean 'test'?)."
    )


def test_folder_of_split_files(tmp_path):
    write_lines(tmp_path / "train.jsonl", [{"prompt": "t", "answer": "1"}])
    write_lines(tmp_path / "test.jsonl", [{"prompt": "e", "answer": "2"}])
    assert [e.prompt for e in load_examples(tmp_path)] == ["t"]
    assert [e.source for e in load_examples(tmp_path, split="test")] == [
        f"{tmp_path / 'test.jsonl'}:1"
    ]
    message = error_of(tmp_path, split="validation")
    assert "holds no file for split 'validation'" in message
    assert "test.jsonl, train.jsonl" in message


def test_max_examples_keeps_the_first_rows():
    examples = load_examples(FIXTURES / "standard.jsonl", max_examples=2)
    assert [e.answer for e in examples] == ["5", "6"]
    assert "max_examples" in error_of(FIXTURES / "standard.jsonl", max_examples=0)


# ---- row formats -----------------------------------------------------------------------------


def test_conversational_prompt_lists():
    examples = load_examples(FIXTURES / "conversation.jsonl")
    assert examples[0].prompt == [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "What is 3 * 3?"},
    ]
    assert examples[0].answer == "9"
    assert examples[1].prompt == [{"role": "user", "content": "What is 8 - 5?"}]


def test_messages_rows_split_off_a_trailing_assistant_message():
    first, second = load_examples(FIXTURES / "messages.jsonl")
    assert first.prompt == [{"role": "user", "content": "What is 4 + 4?"}]
    assert first.fields == {"completion": "<answer>8</answer>"}
    assert first.answer == "8"
    assert second.prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 5 + 5?"},
    ]
    assert second.fields == {}


def test_bad_messages_are_reported_per_message(tmp_path):
    path = write_lines(
        tmp_path / "m.jsonl",
        [
            {"messages": [{"role": "assistant", "content": "only me"}], "answer": "1"},
            {"messages": [{"role": "robot", "content": "hi"}, {"role": "user"}], "answer": "1"},
            {"messages": "hello", "answer": "1"},
            {"prompt": [{"role": "user", "content": "  "}], "answer": "1"},
            {"prompt": [], "answer": "1"},
        ],
    )
    message = error_of(path)
    assert message.splitlines() == [
        f"6 problems in {path}:",
        f"  {path}:1: field 'messages': expected messages before the final assistant message, "
        "found only the assistant message",
        f"  {path}:2: field 'messages[0].role': expected one of system, user, assistant, tool, "
        "found str 'robot'",
        f"  {path}:2: field 'messages[1].content': expected a string, found no 'content'",
        f"  {path}:3: field 'messages': expected a list of messages, found str 'hello'",
        f"  {path}:4: field 'prompt': expected some text, found only empty messages",
        f"  {path}:5: field 'prompt': expected at least one message, found an empty list",
    ]


def test_gsm8k_format(tmp_path):
    path = write_lines(
        tmp_path / "gsm.jsonl",
        [
            {"question": "How many?", "answer": "3 * 600 = 1,800\n#### 1,800"},
            {"question": "Owed?", "answer": "She owes 5.\n####  -5 ", "id": 2},
        ],
    )
    first, second = load_examples(path, dataset_format="gsm8k")
    assert first == Example(
        "How many?", "1800", {"solution": "3 * 600 = 1,800\n#### 1,800"}, f"{path}:1"
    )
    assert second.answer == "-5"
    assert second.fields == {"id": 2, "solution": "She owes 5.\n####  -5 "}


def test_gsm8k_row_without_marker_is_an_error(tmp_path):
    path = write_lines(
        tmp_path / "gsm.jsonl",
        [
            {"question": "ok?", "answer": "#### 1"},
            {"question": "Q?", "answer": "The answer is 18."},
            {"question": "Q?", "answer": "####  "},
            {"question": "Q?"},
        ],
    )
    assert error_of(path, dataset_format="gsm8k").splitlines() == [
        f"3 problems in {path}:",
        f"  {path}:2: field 'answer': expected GSM8K's worked solution ending in '#### <number>', "
        "found no '####' in str 'The answer is 18.'",
        f"  {path}:3: field 'answer': expected GSM8K's worked solution ending in '#### <number>', "
        "found nothing after '####'",
        f"  {path}:4: field 'answer': expected GSM8K's worked solution ending in '#### <number>', "
        "found no 'answer' field",
    ]


@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="shared GSM8K copy not present")
def test_real_gsm8k_test_split_loads():
    examples = load_examples(GSM8K_TEST, dataset_format="gsm8k")
    assert len(examples) == 1319
    assert examples[0].answer == "18"
    assert examples[0].prompt.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert examples[0].fields["solution"].endswith("#### 18")
    assert all(re.fullmatch(r"-?[\d.]+", e.answer) for e in examples)


def test_numeric_answers_become_canonical_strings(tmp_path):
    answers = ["18", 18, 18.0, 2.5, -3, 0.1, 1e16]
    path = write_lines(tmp_path / "n.jsonl", [{"prompt": "q", "answer": a} for a in answers])
    assert [e.answer for e in load_examples(path)] == [
        "18",
        "18",
        "18",
        "2.5",
        "-3",
        "0.1",
        "10000000000000000",
    ]


def test_solution_column_is_the_answer_when_answer_is_absent(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [{"prompt": "q", "solution": "\\frac{1}{2}"}])
    (example,) = load_examples(path)
    assert example.answer == "\\frac{1}{2}"
    assert example.fields == {"solution": "\\frac{1}{2}"}  # kept for TRL-style rewards


def test_custom_fields_and_optional_answers(tmp_path):
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            {"question": "q1", "final": 4, "answer": "worked"},
            {"question": "q2"},
            {"question": "q3", "final": None},
        ],
    )
    examples = load_examples(
        path, prompt_field="question", answer_field="final", require_answer=False
    )
    assert [(e.prompt, e.answer) for e in examples] == [("q1", "4"), ("q2", None), ("q3", None)]
    # The ground truth wins the "answer" keyword; the other column stays in fields.
    assert examples[0].fields == {"answer": "worked"}
    assert examples[0].reward_fields() == {"answer": "4"}


# ---- bad input -------------------------------------------------------------------------------


def test_missing_relative_file_names_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert error_of("data/nope.jsonl") == (
        f"data file or folder 'data/nope.jsonl' does not exist "
        f"(relative to the current directory {tmp_path})."
    )
    assert (
        error_of(tmp_path / "x.csv")
        == f"data file or folder '{tmp_path / 'x.csv'}' does not exist."
    )


def test_malformed_json_line(tmp_path):
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "a", "answer": "1"},
            {"prompt": "b", "answer": "2"},
            '{"prompt": "c", "answer"',
        ],
    )
    assert error_of(path) == (
        f"1 problem in {path}:\n  {path}:3: malformed JSON: Expecting ':' delimiter at column 25"
    )


def test_missing_prompt_column_suggests_the_close_name(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"promt": "a", "answer": "1"}] * 5)
    # One line for the repeated problem: the first three locations and a count.
    assert error_of(path) == (
        f"5 problems in {path}:\n  {path}:1, {path}:2, {path}:3 and 2 more: field 'prompt' is "
        "missing (the row has columns 'promt', 'answer'); did you mean 'promt'? set "
        "prompt_field to 'promt'"
    )


def test_missing_prompt_with_question_suggests_gsm8k(tmp_path):
    path = write_lines(tmp_path / "g.jsonl", [{"question": "a", "answer": "x\n#### 1"}])
    assert error_of(path) == (
        f"1 problem in {path}:\n  {path}:1: field 'prompt' is missing (the row has columns "
        "'question', 'answer'); for GSM8K rows set dataset_format to 'gsm8k', or set "
        "prompt_field to 'question'"
    )


def test_missing_answer_column_suggests_a_likely_name(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [{"prompt": "a", "target": "1"}])
    assert error_of(path) == (
        f"1 problem in {path}:\n  {path}:1: field 'answer' is missing (the row has columns "
        "'prompt', 'target'); did you mean 'target'? set answer_field to 'target'"
    )


def test_bad_prompts_and_answers_are_all_reported_together(tmp_path):
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "fine", "answer": "1"},
            {"prompt": "", "answer": "1"},
            {"prompt": " \n", "answer": "1"},
            {"prompt": None, "answer": "1"},
            {"prompt": 7, "answer": "1"},
            {"prompt": "q", "answer": ["1", "2"]},
            {"prompt": "q", "answer": True},
            {"prompt": "q", "answer": {"value": 1}},
            {"prompt": "q", "answer": None},
            {"prompt": "q", "answer": ""},
            "[1, 2]",
        ],
    )
    assert error_of(path).splitlines() == [
        f"10 problems in {path}:",
        f"  {path}:2: field 'prompt': expected a non-empty prompt, found an empty string",
        f"  {path}:3: field 'prompt': expected a non-empty prompt, found only whitespace ' \\n'",
        f"  {path}:4: field 'prompt': expected a string or a list of {{role, content}} messages, "
        "found None",
        f"  {path}:5: field 'prompt': expected a string or a list of {{role, content}} messages, "
        "found int 7",
        f"  {path}:6: field 'answer': expected a string or a number, found list ['1', '2']",
        f"  {path}:7: field 'answer': expected a string or a number, found bool True",
        f"  {path}:8: field 'answer': expected a string or a number, found dict {{'value': 1}}",
        f"  {path}:9: field 'answer': expected the ground-truth answer, found None",
        f"  {path}:10: field 'answer': expected the ground-truth answer, found an empty string",
        f"  {path}:11: expected a JSON object on each line, found list [1, 2]",
    ]


def test_many_problems_are_capped_with_a_count(tmp_path):
    path = write_lines(tmp_path / "many.jsonl", [{"prompt": i, "answer": "1"} for i in range(25)])
    lines = error_of(path).splitlines()
    assert lines[0] == f"25 problems in {path}:"
    assert len(lines) == 22  # header, 20 problems, the remainder
    assert lines[20].startswith(f"  {path}:20: field 'prompt'")
    assert lines[21] == "  ... and 5 more"


def test_non_utf8_lines_are_reported_not_raised(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        b'{"prompt": "ok", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "1"}\n'
        b'{"prompt": "fine", "answer": "2"}\n{"prompt": "\xff", "answer": "3"}\n'
    )
    assert error_of(path).splitlines() == [
        f"2 problems in {path}:",
        f"  {path}:2: not valid UTF-8: byte 0xe9 at column 16",
        f"  {path}:4: not valid UTF-8: byte 0xff at column 13",
    ]
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"prompt,answer\ncaf\xe9,1\nok,2\n")
    assert error_of(csv_path).splitlines() == [
        f"1 problem in {csv_path}:",
        f"  {csv_path}:2: not valid UTF-8: byte 0xe9 at column 4",
    ]


def test_csv_row_with_wrong_cell_count(tmp_path):
    path = tmp_path / "cells.csv"
    path.write_text("prompt,answer\nq,1,extra\n", encoding="utf-8")
    assert error_of(path).splitlines()[1] == (
        f"  {path}:2: expected 2 cells as in the header, found 3"
    )


def test_empty_sources_have_no_examples(tmp_path):
    for name, text in [("e.jsonl", ""), ("b.jsonl", "\n\n  \n"), ("h.csv", "prompt,answer\n")]:
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert error_of(tmp_path / name).startswith(f"no examples in {tmp_path / name}")
    (tmp_path / "l.json").write_text("[]", encoding="utf-8")
    assert error_of(tmp_path / "l.json").startswith(f"no examples in {tmp_path / 'l.json'}")


def test_unknown_extension_and_format(tmp_path):
    (tmp_path / "rows.txt").write_text("hello\n", encoding="utf-8")
    assert "cannot tell the data format from the extension '.txt'" in error_of(
        tmp_path / "rows.txt"
    )
    assert error_of(FIXTURES / "standard.jsonl", dataset_format="gsm") == (
        "dataset_format: expected one of auto, gsm8k, found 'gsm' (did you mean 'gsm8k'?)."
    )


def test_hub_name_offline_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    message = error_of("someone/no-such-dataset")
    assert time.monotonic() - start < 10
    assert message.startswith(
        f"'someone/no-such-dataset' is not a local file or folder (relative to the current "
        f"directory {tmp_path}) and could not be loaded from the Hugging Face hub "
        "(offline mode is on):"
    )


def test_hub_unreachable_is_detected_without_waiting_for_retries(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    start = time.monotonic()
    message = error_of("someone/no-such-dataset:main")
    assert time.monotonic() - start < 5
    assert "could not be loaded from the Hugging Face hub: cannot connect to 127.0.0.1:9" in message
    assert message.endswith("To use a copy in the local cache, set HF_HUB_OFFLINE=1.")


# ---- render_prompt ---------------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer built in memory; the chat template is set per test."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


@pytest.fixture
def chat_tokenizer(tokenizer):
    tokenizer.chat_template = CHAT_TEMPLATE
    yield tokenizer
    tokenizer.chat_template = None


def test_render_string_prompt_with_chat_template(chat_tokenizer):
    assert (
        render_prompt("What is 2 + 3?", chat_tokenizer) == "<|user|>What is 2 + 3?\n<|assistant|>"
    )
    assert render_prompt("Q", chat_tokenizer, system_prompt="Think first.") == (
        "<|system|>Think first.\n<|user|>Q\n<|assistant|>"
    )


def test_render_conversation_keeps_its_own_system_message(chat_tokenizer):
    conversation = [
        {"role": "system", "content": "Own."},
        {"role": "user", "content": "Q"},
    ]
    assert render_prompt(conversation, chat_tokenizer, system_prompt="Ignored.") == (
        "<|system|>Own.\n<|user|>Q\n<|assistant|>"
    )
    assert conversation[0] == {"role": "system", "content": "Own."}  # not mutated
    user_only = [{"role": "user", "content": "Q"}]
    assert render_prompt(user_only, chat_tokenizer, system_prompt="S") == (
        "<|system|>S\n<|user|>Q\n<|assistant|>"
    )
    assert user_only == [{"role": "user", "content": "Q"}]


def test_render_with_prompt_template(chat_tokenizer):
    template = "Question: {prompt}\nAnswer:"
    # The template wins over the chat template.
    assert render_prompt("2+2?", chat_tokenizer, prompt_template=template) == (
        "Question: 2+2?\nAnswer:"
    )
    assert render_prompt("2+2?", None, prompt_template=template, system_prompt="Be exact.") == (
        "Be exact.\nQuestion: 2+2?\nAnswer:"
    )
    assert render_prompt("x", None, prompt_template="{{literal}} {prompt}") == "{literal} x"


def test_bad_prompt_templates(tokenizer):
    with pytest.raises(GrpokitError) as info:
        render_prompt("x", tokenizer, prompt_template="Q: {question}")
    assert str(info.value) == (
        "prompt_template 'Q: {question}': expected exactly one placeholder, {prompt}, found the "
        "placeholders {question}; write {{ and }} for literal braces."
    )
    with pytest.raises(GrpokitError, match="found none"):
        render_prompt("x", tokenizer, prompt_template="no placeholder")
    with pytest.raises(GrpokitError, match="not a valid format string"):
        render_prompt("x", tokenizer, prompt_template="{prompt")
    with pytest.raises(GrpokitError, match="applies to string prompts"):
        render_prompt([{"role": "user", "content": "x"}], tokenizer, prompt_template="{prompt}")


def test_render_without_chat_template(tokenizer):
    assert tokenizer.chat_template is None
    assert render_prompt("What is 2 + 3?", tokenizer) == "What is 2 + 3?"
    assert render_prompt("Q", tokenizer, system_prompt="S") == "S\nQ"
    with pytest.raises(GrpokitError, match="the tokenizer has no chat template"):
        render_prompt([{"role": "user", "content": "Q"}], tokenizer)
