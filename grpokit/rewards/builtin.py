"""The built-in per-sample rewards: `accuracy` and `format`.

A per-sample reward is `f(completion: str, **fields) -> float | None`: it sees one completion
and the fields of its dataset row (`answer`, `prompt`, ...) and returns a score, or None when
it does not apply to that row. Each accepts `**_` so unrelated row fields pass through.
"""

from __future__ import annotations

import functools
import re

from grpokit.errors import GrpokitError
from grpokit.rewards.math_answers import EXTRACT_MODES, answers_match, extract_answer

DEFAULT_FORMAT_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"


def _gold_answer(answer: object, solution: object) -> str | None:
    # The ground truth may arrive as a number (JSON `"answer": 85`), under TRL's `solution`
    # column, or as a full worked solution ("... #### 18", "... \boxed{18}"). Reduce it to the
    # final answer so the comparison is answer against answer.
    gold = answer if answer is not None else solution
    if gold is None:
        return None
    gold = str(gold).strip()
    if "####" in gold:
        return extract_answer(gold, "gsm8k")
    if "\\boxed" in gold or "\\fbox" in gold:
        return extract_answer(gold, "boxed")
    return gold or None


def accuracy(
    completion: str, answer: object = None, extract: str = "auto", **fields
) -> float | None:
    """1.0 if the completion's final answer equals the ground truth `answer`, else 0.0.

    The answer is found with `extract_answer(completion, extract)` and compared with
    `answers_match`. Returns None when the row has no ground truth. When `answer` is absent a
    `solution` field is used instead; a gold text with `####` or `\\boxed{}` is reduced to its
    final answer first.

    >>> accuracy("<think>9*2</think><answer>$18</answer>", answer="18")
    1.0
    >>> accuracy("<answer>17</answer>", answer="#### 18"), accuracy("x", answer=None)
    (0.0, None)
    """
    if extract not in EXTRACT_MODES:
        raise GrpokitError(
            f"reward 'accuracy': unknown extract mode {extract!r}; expected one of "
            f"{', '.join(EXTRACT_MODES)}."
        )
    gold = _gold_answer(answer, fields.get("solution"))
    if gold is None:
        return None
    return 1.0 if answers_match(extract_answer(completion, extract), gold) else 0.0


@functools.lru_cache(maxsize=64)
def compile_pattern(pattern: str) -> re.Pattern:
    """Compile a format pattern once (DOTALL, so `.` spans lines); bad regex -> GrpokitError."""
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise GrpokitError(
            f"reward 'format': pattern {pattern!r} is not a valid regular expression ({e}); "
            f"expected a Python regex such as {DEFAULT_FORMAT_PATTERN!r}."
        ) from e


def format_reward(completion: str, pattern: str = DEFAULT_FORMAT_PATTERN, **_) -> float:
    """1.0 if the whole stripped completion matches `pattern` (re.fullmatch, DOTALL), else 0.0.

    Registered as "format". The default pattern asks for `<think>...</think>` followed by
    `<answer>...</answer>` and nothing after it.

    >>> format_reward("<think>2+2=4</think>\\n<answer>4</answer>")
    1.0
    >>> format_reward("<answer>4</answer>"), format_reward("<think>a</think><answer>4</answer>!")
    (0.0, 0.0)
    """
    return 1.0 if compile_pattern(pattern).fullmatch(completion.strip()) else 0.0


# code_tests runs programs in grpokit.sandbox; imported here, at the end, only to register it
from grpokit.rewards.code_tests import code_tests  # noqa: E402

BUILTIN_REWARDS = {"accuracy": accuracy, "format": format_reward, "code_tests": code_tests}
