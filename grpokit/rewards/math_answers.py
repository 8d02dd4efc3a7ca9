"""Find the final answer in a completion and compare it with the ground truth.

Three steps, each usable on its own:

- `extract_answer` pulls the answer text out of a completion (`<answer>` tag, `\\boxed{}`,
  GSM8K `####`, or the last number);
- `normalize_number` parses one number exactly, as a `Fraction`, so `"18" == "18.0" == "$18"`
  and float rounding never decides a reward;
- `answers_match` compares numbers exactly, then falls back to symbolic comparison with
  `math_verify` (for LaTeX answers such as `\\frac{1}{2}` or `(x+1)^2`), then to plain text.

Decisions, on purpose:

- `"18%"` and `"18 percent"` parse as 18, not 0.18: GSM8K-style gold answers to "what
  percentage ..." questions are written `#### 18`, so a model writing `18%` is right.
  The price: `"0.18"` does not match `"18%"`.
- Thousands separators are accepted only as commas between groups of exactly three digits
  (`"1,800"`, `"12,345,678.5"`); `"1,8"` is not a number. A space is never a separator:
  `"1 800"` is not a number, since it can as well be two numbers side by side.
- One or two trailing unit words are ignored (`"18 dollars"`, `"5 square feet"`), except
  words that change the value (`"2 pi"`, `"3 million"`) which make the text not a number.
- Matching numbers is exact: `"0.333"` does not match `"1/3"`.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from fractions import Fraction

from grpokit.errors import GrpokitError

EXTRACT_MODES = ("answer_tag", "boxed", "gsm8k", "last_number", "auto")

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-"})  # unicode minus, en dash

# One decimal number: "1,800" (groups of three only), "1800", "2.5", ".5".
_DEC = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
# A number inside running text, optionally "$"-prefixed. The sign counts only when it does not
# follow a word or a closing bracket, so "5-3" ends with 3 and "x = -3" with -3; the number
# itself never starts in the middle of another one. "3/4" is one number.
_TEXT_NUMBER_RE = re.compile(
    rf"(?:(?<![\w)\]}}])(?P<sign>[-+]))?[$€£¥]?(?<![\d.])(?P<num>(?:{_DEC})(?:/\d+(?:\.\d+)?)?)"
)


def _strip_period(text: str) -> str:
    # "#### 18." or "<answer>18.</answer>": a sentence period, not part of the answer.
    # A bare "." or "..." is left alone so it is not turned into an empty answer.
    if text.endswith(".") and not text.endswith("..") and len(text) > 1:
        return text[:-1].rstrip()
    return text


def _extract_answer_tag(text: str) -> str | None:
    matches = _ANSWER_TAG_RE.findall(text)
    if not matches:
        return None
    return _strip_period(matches[-1].strip()) or None


def _extract_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    # Take the last \boxed{ and walk to its balancing brace. If it never closes (a truncated
    # completion) there is no answer: an earlier box is not what the model ended with.
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip() or None
    return None


def _extract_gsm8k(text: str) -> str | None:
    if "####" not in text:
        return None
    after = text.rsplit("####", 1)[1].strip()
    first_line = after.splitlines()[0].strip() if after else ""
    return _strip_period(first_line) or None


def _extract_last_number(text: str) -> str | None:
    matches = list(_TEXT_NUMBER_RE.finditer(text.translate(_MINUS_SIGNS)))
    if not matches:
        return None
    last = matches[-1]
    return (last.group("sign") or "") + last.group("num")


_EXTRACTORS = {
    "answer_tag": _extract_answer_tag,
    "boxed": _extract_boxed,
    "gsm8k": _extract_gsm8k,
    "last_number": _extract_last_number,
}


def extract_answer(text: str, mode: str = "auto") -> str | None:
    """Return the final answer written in `text`, or None when there is none.

    Modes: `answer_tag` (content of the last `<answer>...</answer>`), `boxed` (content of the
    last `\\boxed{...}` or `\\fbox{...}`, nested braces balanced), `gsm8k` (first line after
    the last `####`), `last_number` (last number in the text, sign and fraction included),
    and `auto` (the first of answer_tag, boxed, gsm8k that finds something, else last_number).
    answer_tag and gsm8k drop a single trailing sentence period (`"18."` gives `"18"`).

    >>> extract_answer("<think>2+2</think><answer> 4 </answer>")
    '4'
    >>> extract_answer("so $\\\\boxed{\\\\frac{1}{2}}$", "boxed")
    '\\\\frac{1}{2}'
    >>> extract_answer("He pays $1,800 and gets -3.", "last_number")
    '-3'
    """
    if mode == "auto":
        for name in ("answer_tag", "boxed", "gsm8k", "last_number"):
            found = _EXTRACTORS[name](text)
            if found is not None:
                return found
        return None
    if mode not in _EXTRACTORS:
        raise GrpokitError(
            f"extract_answer: unknown extraction mode {mode!r}; expected one of "
            f"{', '.join(EXTRACT_MODES)}."
        )
    return _EXTRACTORS[mode](text)


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

# Words that change the value: "2 pi" is not 2 and "3 million" is not 3.
_VALUE_WORDS = {
    "pi", "sqrt", "million", "millions", "billion", "billions", "trillion", "thousand",
    "thousands", "hundred", "hundreds", "dozen", "dozens", "times", "over", "plus", "minus",
    "squared", "cubed", "inf", "infinity", "frac", "half", "halves", "third", "thirds",
    "quarter", "quarters", "and", "or",
}  # fmt: skip
_SIGNED_DEC = rf"[-+]?(?:{_DEC})"
_NUMBER_RE = re.compile(
    rf"""
    (?P<sign>[-+])?\s*
    (?P<currency>[$€£¥])?\s*
    (?P<sign2>[-+])?\s*
    (?:
        \\[dt]?frac\s*\{{\s*(?P<fnum>{_SIGNED_DEC})\s*\}}\s*\{{\s*(?P<fden>{_SIGNED_DEC})\s*\}}
      | (?P<num>{_DEC})(?:\s*/\s*(?P<den>{_DEC}))?
    )
    \s*(?P<unit>%|[A-Za-z]{{2,}}(?:\s+[A-Za-z]{{2,}})?)?
    """,
    re.VERBOSE,
)
# LaTeX wrappers a boxed answer may carry: "18\text{ dollars}", "1{,}800", "1,\!800", "50\%".
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")


def _to_fraction(s: str) -> Fraction:
    return Fraction(s.replace(",", ""))


def normalize_number(s: str) -> Fraction | None:
    """Parse `s` as exactly one number and return it as a `Fraction`, or None.

    Accepts a sign, a currency symbol, thousands commas in groups of three, decimals,
    `a/b`, `\\frac{a}{b}`, a trailing `%` (kept as is: `"18%"` is 18) and one or two trailing
    unit words. Anything else around the number (`"18."`, `"The answer is 18"`, `"1 800"`,
    `"1,8"`) makes it not a number: finding the number is `extract_answer`'s job.

    >>> normalize_number("$1,800.50")
    Fraction(3601, 2)
    >>> normalize_number("-\\\\frac{3}{4}")
    Fraction(-3, 4)
    >>> normalize_number("1,8") is None
    True
    """
    text = s.strip().translate(_MINUS_SIGNS)
    text = text.replace("\\!", "").replace("{,}", ",").replace("\\%", "%").replace("\\$", "$")
    text = _LATEX_TEXT_RE.sub(r" \1 ", text).strip()
    m = _NUMBER_RE.fullmatch(text)
    if m is None or (m.group("sign") and m.group("sign2")):
        return None
    unit = m.group("unit")
    if unit and any(word.lower() in _VALUE_WORDS for word in unit.split()):
        return None
    if m.group("fnum") is not None:
        numerator, denominator = _to_fraction(m.group("fnum")), _to_fraction(m.group("fden"))
    else:
        numerator = _to_fraction(m.group("num"))
        denominator = _to_fraction(m.group("den")) if m.group("den") else Fraction(1)
    if denominator == 0:
        return None
    value = numerator / denominator
    return -value if "-" in (m.group("sign") or "") + (m.group("sign2") or "") else value


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------

# Plain words ("yes", "Paris"): LaTeX parsing would read them as products of one-letter
# symbols, so anagrams would "match". Such answers are compared as text only.
_PROSE_RE = re.compile(r"[A-Za-z\s]*[A-Za-z]{2,}[A-Za-z\s]*")


# Seconds math_verify may spend on one parse or one comparison. Answers like "(10^{10})!" or
# "10^{100000000}" make sympy run for minutes; the timeout turns them into a mismatch.
_SYMBOLIC_TIMEOUT_S = 5


def _math_timeout() -> int | None:
    # math_verify's timeout uses signal.alarm, which only works in the main thread on POSIX
    # (elsewhere it raises, or spawns a process per call on Windows). Off the main thread we
    # run without a timeout rather than fail; such a pathological answer then runs long.
    on_main = threading.current_thread() is threading.main_thread()
    return _SYMBOLIC_TIMEOUT_S if on_main and os.name == "posix" else None


def _as_latex(s: str) -> str:
    # math_verify's parser looks for LaTeX inside delimiters; a bare "(x+1)^2" is not found.
    return s if any(d in s for d in ("$", "\\(", "\\[")) else f"${s}$"


@functools.lru_cache(maxsize=4096)
def _symbolic_match(predicted: str, gold: str) -> bool:
    # Imported here: math_verify pulls in sympy, which most runs never need.
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    timeout = _math_timeout()
    try:
        gold_parsed = parse(_as_latex(gold), parsing_timeout=timeout)
        pred_parsed = parse(_as_latex(predicted), parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        # verify is not symmetric: gold first, as math_verify documents.
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except (Exception, TimeoutException):  # TimeoutException derives from BaseException
        return False


def _normalize_text(s: str) -> str:
    return " ".join(s.split()).casefold()


def answers_match(predicted: str | None, gold: str) -> bool:
    """True when the predicted answer equals the gold answer.

    Numbers compare exactly (`"18" == "18.0" == "$18" == "18 dollars"`, `"0.5" == "1/2"`).
    Otherwise `math_verify` compares them symbolically (`"\\sqrt{4}" == "2"`,
    `"x^2+2x+1" == "(x+1)^2"`); last, the texts compare case- and whitespace-insensitively.
    Results are cached, so the same pair always gets the same answer.

    >>> answers_match("$1,800", "1800"), answers_match("1,8", "18"), answers_match(None, "1")
    (True, False, False)
    """
    if predicted is None or gold is None:
        return False
    predicted, gold = predicted.strip(), str(gold).strip()
    if not predicted or not gold:
        return False
    pred_number, gold_number = normalize_number(predicted), normalize_number(gold)
    if pred_number is not None and gold_number is not None:
        return pred_number == gold_number
    if _normalize_text(predicted) == _normalize_text(gold):
        return True
    if _PROSE_RE.fullmatch(predicted) or _PROSE_RE.fullmatch(gold):
        return False
    if gold_number is not None and "\\" not in predicted:
        # A numeric gold and a plain-text prediction that is not a number ("4+0", "87=3"): a
        # wrong answer. Skipping sympy here matters: a diverging model writes such strings by
        # the thousand, and sympy can spend minutes on some of them in C, beyond any timeout.
        return False
    return _symbolic_match(predicted, gold)
