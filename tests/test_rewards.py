"""Answer extraction, number parsing, answer matching and the built-in rewards."""

import json
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from grpokit.errors import GrpokitError
from grpokit.rewards import (
    BUILTIN_REWARDS,
    DEFAULT_FORMAT_PATTERN,
    EXTRACT_MODES,
    accuracy,
    answers_match,
    extract_answer,
    format_reward,
    math_answers,
    normalize_number,
)
from grpokit.rewards.code_tests import code_tests

# The repository is checked out next to shared/, which holds the data sets.
GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared/data/gsm8k/test.jsonl"


# --------------------------------------------------------------------------- extract_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>a</think><answer>18</answer>", "18"),
        ("<answer> 18 </answer>", "18"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),  # the last tag wins
        ("<answer>\n  -3/4\n</answer>", "-3/4"),
        ("<ANSWER>7</ANSWER>", "7"),
        ("<answer>18.</answer>", "18"),  # a sentence period is not part of the answer
        ("<answer>\\frac{1}{2}</answer>", "\\frac{1}{2}"),
        ("<answer>18", None),  # never closed: truncated
        ("<answer>  </answer>", None),
        ("no tags at all 18", None),
    ],
)
def test_extract_answer_tag(text, expected):
    assert extract_answer(text, "answer_tag") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $\\boxed{18}$.", "18"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces balanced
        ("\\boxed{ {a}^{2} + \\sqrt{b} }", "{a}^{2} + \\sqrt{b}"),
        ("first \\boxed{1}, finally \\boxed{2}", "2"),
        ("\\fbox{42}", "42"),
        ("\\boxed {5}", "5"),
        ("\\boxed{1} then \\boxed{\\frac{3}{", None),  # the last box never closes: truncated
        ("\\boxed{}", None),
        ("no box 18", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_answer(text, "boxed") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9 * 2 = 18\n#### 18", "18"),
        ("#### 1,800", "1,800"),
        ("####-3", "-3"),
        ("#### 18.", "18"),
        ("#### 5\n#### 7\nextra", "7"),  # after the last ####, first line only
        ("#### 12\nThe end.", "12"),
        ("####   \n", None),
        ("no marker 18", None),
    ],
)
def test_extract_gsm8k(text, expected):
    assert extract_answer(text, "gsm8k") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 18.", "18"),
        ("It costs $18 in total", "18"),
        ("He pays $1,800 for it", "1,800"),
        ("x = -3", "-3"),
        ("x = \u22127", "-7"),  # unicode minus
        ("loss of -$18", "-18"),
        ("5-3=2", "2"),
        ("pages 10-12", "12"),  # a range, not -12
        ("about 2.5 hours.", "2.5"),
        ("only .5 left", ".5"),
        ("3/4 of the cake", "3/4"),
        ("values 1,8", "8"),  # "1,8" is not a thousands-separated number
        ("25% more", "25"),
        ("no numbers here", None),
    ],
)
def test_extract_last_number(text, expected):
    assert extract_answer(text, "last_number") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{3} <answer>4</answer>", "4"),  # answer_tag before boxed
        ("#### 5 and \\boxed{3}", "3"),  # boxed before gsm8k
        ("steps\n#### 5\nso 6", "5"),  # gsm8k before last_number
        ("it is 6, not 7", "7"),
        ("<answer></answer> and \\boxed{9}", "9"),  # an empty tag finds nothing
        ("nothing", None),
    ],
)
def test_extract_auto(text, expected):
    assert extract_answer(text) == expected
    assert extract_answer(text, "auto") == expected


def test_extract_unknown_mode_lists_valid_modes():
    with pytest.raises(GrpokitError, match="'tag'.*answer_tag, boxed, gsm8k, last_number, auto"):
        extract_answer("<answer>1</answer>", "tag")
    assert EXTRACT_MODES == ("answer_tag", "boxed", "gsm8k", "last_number", "auto")


# ------------------------------------------------------------------------- normalize_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18", Fraction(18)),
        ("18.0", Fraction(18)),
        ("$18", Fraction(18)),
        ("\\$18", Fraction(18)),
        ("18 dollars", Fraction(18)),
        ("5 square feet", Fraction(5)),
        ("18\\text{ dollars}", Fraction(18)),
        ("18%", Fraction(18)),  # kept as 18, see the module docstring
        ("18 percent", Fraction(18)),
        ("50\\%", Fraction(50)),
        ("1,800", Fraction(1800)),
        ("12,345,678.5", Fraction(24691357, 2)),
        ("1{,}800", Fraction(1800)),
        ("-3", Fraction(-3)),
        ("\u22123", Fraction(-3)),
        ("+3", Fraction(3)),
        ("-$18", Fraction(-18)),
        ("$-18", Fraction(-18)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("0.1", Fraction(1, 10)),  # exact: not 0.1000000000000000055
        ("3/4", Fraction(3, 4)),
        ("-3/4", Fraction(-3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac{3}{4}", Fraction(3, 4)),
        ("-\\frac{3}{4}", Fraction(-3, 4)),
        ("007", Fraction(7)),
        (" 18 ", Fraction(18)),
    ],
)
def test_normalize_number_parses(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1,8",  # not a thousands separator
        "1,80,000",
        "1800,",
        "1 800",  # a space is never a separator
        "18.",  # sentence period: extraction's job
        "The answer is 18.",
        "18 or 19",
        "2 pi",  # words that change the value
        "3 million",
        "+-3",
        "1/0",
        "x",
        "",
        "\\frac{1}{x}",
    ],
)
def test_normalize_number_rejects(text):
    assert normalize_number(text) is None


# ---------------------------------------------------------------------------- answers_match


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ("18", "18", True),
        ("18.0", "18", True),
        ("$18", "18", True),
        ("18 dollars", "18", True),
        ("18.00", "$18", True),
        ("1,800", "1800", True),
        ("1800", "1,800", True),
        ("1,8", "18", False),
        ("-3", "-3", True),
        ("-18", "18", False),
        ("18", "180", False),
        ("18", "81", False),
        ("0.5", "1/2", True),
        ("-0.75", "-3/4", True),
        ("\\frac{1}{2}", "0.5", True),
        ("0.333", "1/3", False),  # numbers compare exactly
        ("25%", "25", True),
        ("0.25", "25%", False),
        ("\\sqrt{4}", "2", True),
        ("x^2+2x+1", "(x+1)^2", True),
        ("x^2+2x+2", "(x+1)^2", False),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
        ("\\boxed{18}", "18", True),
        ("17 or 18", "18", False),
        ("  New   York ", "new york", True),  # text: case and spaces ignored
        ("ab", "ba", False),  # words are not products of symbols
        ("A", "a", True),
        ("A", "B", False),
        (None, "18", False),
        ("", "18", False),
        ("   ", "18", False),
    ],
)
def test_answers_match(predicted, gold, expected):
    assert answers_match(predicted, gold) is expected


def test_answers_match_times_out_on_runaway_answers(monkeypatch):
    # sympy would evaluate 10^(10^8) for minutes; the timeout makes it a plain mismatch.
    monkeypatch.setattr(math_answers, "_SYMBOLIC_TIMEOUT_S", 1)
    started = time.perf_counter()
    assert answers_match("10^{100000000}", "3") is False
    assert time.perf_counter() - started < 4


def test_answers_match_symbolic_works_off_the_main_thread():
    # math_verify's default timeout uses signal.alarm, which raises off the main thread.
    results = []
    worker = threading.Thread(target=lambda: results.append(answers_match("\\sqrt{9}", "3")))
    worker.start()
    worker.join()
    assert results == [True]


# ------------------------------------------------------------------------- format reward


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>9*2=18</think><answer>18</answer>", 1.0),
        ("  <think>a</think>\n\n<answer>18</answer>\n", 1.0),  # outer whitespace stripped
        ("<think>line 1\nline 2\n</think>\n<answer>\n18\n</answer>", 1.0),  # multiline
        ("<think>a <think>b</think> c</think><answer>1</answer>", 1.0),  # the regex allows it
        ("<answer>18</answer>", 0.0),  # missing think
        ("<think>a</think><answer>18</answer> and more", 0.0),  # text after the answer
        ("Sure! <think>a</think><answer>18</answer>", 0.0),  # text before the think
        ("<think>a</think> so <answer>18</answer>", 0.0),  # text between
        ("<think>a</think><answer>18", 0.0),  # never closed
        ("", 0.0),
    ],
)
def test_format_reward_default_pattern(completion, expected):
    assert format_reward(completion) == expected


def test_format_reward_custom_pattern_and_registry():
    assert format_reward("#### 18", pattern=r"#### -?\d+") == 1.0
    assert format_reward("#### x", pattern=r"#### -?\d+") == 0.0
    assert DEFAULT_FORMAT_PATTERN == r"<think>.*?</think>\s*<answer>.*?</answer>"
    assert BUILTIN_REWARDS == {"accuracy": accuracy, "format": format_reward, "code_tests": code_tests}
    with pytest.raises(GrpokitError, match="not a valid regular expression"):
        format_reward("x", pattern="(")


# ------------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    ("completion", "fields", "expected"),
    [
        ("<think>9*2</think><answer>$18</answer>", {"answer": "18"}, 1.0),
        ("<think>9*2</think><answer>19</answer>", {"answer": "18"}, 0.0),
        ("<answer>85</answer>", {"answer": 85}, 1.0),  # a number as gold
        ("no answer here", {"answer": "18"}, 0.0),
        ("<answer>18</answer>", {"answer": "Janet ...\n#### 18"}, 1.0),  # full GSM8K solution
        ("<answer>1/2</answer>", {"solution": "so \\boxed{\\frac{1}{2}}"}, 1.0),  # TRL column
        ("<answer>18</answer>", {"answer": None}, None),  # no ground truth
        ("<answer>18</answer>", {"answer": "  "}, None),
        ("<answer>18</answer>", {}, None),
        ("I think 17. <answer>18</answer>", {"answer": "18", "extract": "last_number"}, 1.0),
        ("\\boxed{18} <answer>17</answer>", {"answer": "18", "extract": "boxed"}, 1.0),
        ("<answer>18</answer>", {"answer": "18", "prompt": "q", "id": 3}, 1.0),  # extra fields
    ],
)
def test_accuracy(completion, fields, expected):
    assert accuracy(completion, **fields) == expected


def test_accuracy_rejects_unknown_extract_mode():
    with pytest.raises(GrpokitError, match="extract mode 'xml'"):
        accuracy("<answer>1</answer>", answer="1", extract="xml")


# ------------------------------------------------------------------- real GSM8K gold answers


@pytest.fixture(scope="module")
def gsm8k_rows():
    if not GSM8K_TEST.is_file():
        pytest.skip(f"GSM8K test split not found at {GSM8K_TEST} (shared/ is not checked out)")
    with GSM8K_TEST.open() as f:
        return [json.loads(line) for _, line in zip(range(200), f)]


def test_gsm8k_gold_answers_parse_and_score(gsm8k_rows):
    assert len(gsm8k_rows) == 200
    for i, row in enumerate(gsm8k_rows):
        gold = extract_answer(row["answer"], "gsm8k")
        value = normalize_number(gold)
        assert value is not None, f"row {i}: gold {gold!r} does not parse"
        right = f"<think>...</think><answer>{gold}</answer>"
        wrong = f"<think>...</think><answer>{value + 1}</answer>"
        assert accuracy(right, answer=gold) == 1.0, f"row {i}"
        assert accuracy(wrong, answer=gold) == 0.0, f"row {i}"


@pytest.mark.parametrize(
    ("index", "gold", "value"),
    [(0, "18", 18), (1, "3", 3), (2, "70000", 70000), (3, "540", 540), (146, "2,125", 2125)],
)
def test_gsm8k_pinned_rows(gsm8k_rows, index, gold, value):
    answer = gsm8k_rows[index]["answer"]
    assert extract_answer(answer, "gsm8k") == gold
    assert normalize_number(gold) == value
    # The full solution as gold is reduced to its final answer.
    assert accuracy(f"<answer>{value}</answer>", answer=answer) == 1.0
