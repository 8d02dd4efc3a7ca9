"""Turn raw rows into checked `Example`s: a prompt, its ground-truth answer and the other columns.

Row formats (column names follow TRL's conventions):
- standard: `prompt` is a string or a conversation (a list of {"role", "content"} messages) and
  `answer` the ground truth; if `answer` is absent, TRL's `solution` column is used instead;
- conversational: `messages` instead of `prompt`; a trailing assistant message is not part of
  the prompt, its content goes to `fields["completion"]`;
- `dataset_format="gsm8k"`: GSM8K's own rows, `question` and a worked `answer` ending in
  `#### <number>`; the number becomes the answer, the worked text `fields["solution"]`.

Every row is checked and every problem collected, so one `GrpokitError` lists them all and a
user fixes a file in one pass rather than one error per run.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass

from grpokit.data.sources import read_rows
from grpokit.errors import GrpokitError
from grpokit.problems import Problems, describe, did_you_mean

ROLES = ("system", "user", "assistant", "tool")
DATASET_FORMATS = ("auto", "gsm8k")

# Column names other datasets use for the prompt and the answer: when the configured column is
# missing and no name is close by spelling, the error suggests one of these that the row has.
_PROMPT_LIKE = ("question", "problem", "instruction", "query", "input", "text", "messages")
_ANSWER_LIKE = ("solution", "final_answer", "ground_truth", "target", "label", "output")


@dataclass
class Example:
    """One prompt with its ground truth, as the sampler and the reward functions see it."""

    prompt: str | list[dict]
    """The prompt text, or a conversation: a list of {"role": ..., "content": ...} messages."""
    answer: str | None
    """Ground truth as a string (numbers are converted: 18.0 -> "18"); None only where the
    caller allowed rows without an answer (`require_answer=False`)."""
    fields: dict
    """Every other column of the row, passed on to reward functions."""
    source: str
    """Where the row came from, for error messages: "data/train.jsonl:12" or "data.parquet[11]"."""

    def reward_fields(self) -> dict:
        """The keyword arguments reward functions receive: `answer` plus every other column.

        `answer` always holds the ground truth; a different column that happens to be named
        "answer" (when `answer_field` was set to another column) stays readable in `fields`.
        """
        return {**self.fields, "answer": self.answer}


def load_examples(
    source: str | os.PathLike,
    *,
    split: str | None = None,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    dataset_format: str = "auto",
    require_answer: bool = True,
    max_examples: int | None = None,
) -> list[Example]:
    """Load and validate every row of `source`, then keep the first `max_examples`.

    `split` only matters for a saved `DatasetDict`, a folder of split files and the hub; plain
    files ignore it. In the gsm8k format the columns are GSM8K's own (`question`, `answer`) and
    `prompt_field` / `answer_field` are ignored. With `require_answer=False` a missing, None or
    empty answer gives `answer=None` instead of an error.

    Raises GrpokitError listing every problem found (up to 20 distinct ones).
    """
    if dataset_format not in DATASET_FORMATS:
        raise GrpokitError(
            f"dataset_format: expected one of {', '.join(DATASET_FORMATS)}, found "
            f"{dataset_format!r}{did_you_mean(dataset_format, DATASET_FORMATS)}."
        )
    if max_examples is not None and max_examples < 1:
        raise GrpokitError(
            f"max_examples: expected a positive number or None, found {max_examples}."
        )
    problems = Problems()
    rows, label = read_rows(source, split, problems)
    if dataset_format == "gsm8k":
        examples = [_gsm8k_example(where, row, problems) for where, row in rows]
    else:
        examples = [
            _example(where, row, prompt_field, answer_field, require_answer, problems)
            for where, row in rows
        ]
    problems.raise_if_any(label)
    if not examples:
        raise GrpokitError(f"no examples in {label}: it holds no rows (only blank lines, if any).")
    return examples[:max_examples]


# ---- rows to examples ----------------------------------------------------------------------


def _example(
    where: str,
    row: dict,
    prompt_field: str,
    answer_field: str,
    require_answer: bool,
    problems: Problems,
) -> Example:
    """The Example for a standard or `messages` row; problems go to `problems` (the caller
    raises once every row is checked, so a row with problems may hold any values here)."""
    fields = dict(row)
    if prompt_field in fields and prompt_field != "messages":
        prompt = _check_prompt(where, prompt_field, fields.pop(prompt_field), problems)
    elif prompt_field in ("prompt", "messages") and "messages" in fields:
        prompt, completion = _split_messages(where, fields.pop("messages"), problems)
        if completion is not None:
            fields["completion"] = completion
    else:
        prompt = None
        problems.add(where, _missing_field("prompt", prompt_field, row))

    if answer_field in fields:
        name, value = answer_field, fields.pop(answer_field)
    elif answer_field == "answer" and "solution" in fields:
        # TRL's name for the ground truth; it stays in fields for TRL-style reward functions.
        name, value = "solution", fields["solution"]
    else:
        if require_answer:
            problems.add(where, _missing_field("answer", answer_field, row))
        return Example(prompt, None, fields, where)
    answer = _check_answer(where, name, value, require_answer, problems)
    return Example(prompt, answer, fields, where)


def _gsm8k_example(where: str, row: dict, problems: Problems) -> Example:
    fields = dict(row)
    if "question" in fields:
        prompt = _check_prompt(where, "question", fields.pop("question"), problems)
    else:
        prompt = None
        problems.add(where, _missing_field("prompt", "question", row))
    solution = fields.pop("answer", None)
    fields["solution"] = solution
    expected = "field 'answer': expected GSM8K's worked solution ending in '#### <number>', found"
    if not isinstance(solution, str):
        found = describe(solution) if "answer" in row else "no 'answer' field"
        problems.add(where, f"{expected} {found}")
        return Example(prompt, None, fields, where)
    if "####" not in solution:
        problems.add(where, f"{expected} no '####' in {describe(solution)}")
        return Example(prompt, None, fields, where)
    # "#### 1,800": the commas are thousands separators.
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not answer:
        problems.add(where, f"{expected} nothing after '####'")
    return Example(prompt, answer, fields, where)


def _check_prompt(where: str, name: str, value: object, problems: Problems) -> object:
    if isinstance(value, str):
        if not value.strip():
            found = "an empty string" if not value else f"only whitespace {value!r}"
            problems.add(where, f"field '{name}': expected a non-empty prompt, found {found}")
    elif isinstance(value, list):
        _check_messages(where, name, value, problems)
    else:
        problems.add(
            where,
            f"field '{name}': expected a string or a list of {{role, content}} messages, "
            f"found {describe(value)}",
        )
    return value


def _check_messages(where: str, name: str, messages: list, problems: Problems) -> bool:
    """Report every malformed message; True when all are {role, content} dicts."""
    if not messages:
        problems.add(where, f"field '{name}': expected at least one message, found an empty list")
        return False
    ok = True
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            expected = "expected a {role, content} dict"
            problems.add(where, f"field '{name}[{i}]': {expected}, found {describe(message)}")
            ok = False
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            found = "no 'role'" if "role" not in message else describe(role)
            expected = f"expected one of {', '.join(ROLES)}"
            problems.add(where, f"field '{name}[{i}].role': {expected}, found {found}")
            ok = False
        if not isinstance(content, str):
            found = "no 'content'" if "content" not in message else describe(content)
            problems.add(where, f"field '{name}[{i}].content': expected a string, found {found}")
            ok = False
    if ok and not any(m["content"].strip() for m in messages):
        problems.add(where, f"field '{name}': expected some text, found only empty messages")
    return ok


def _split_messages(where: str, messages: object, problems: Problems) -> tuple[object, str | None]:
    """Prompt and completion of a `messages` row: a trailing assistant message is the
    completion (a demonstration), everything before it the prompt."""
    if not isinstance(messages, list):
        found = describe(messages)
        problems.add(where, f"field 'messages': expected a list of messages, found {found}")
        return messages, None
    if not _check_messages(where, "messages", messages, problems):
        return messages, None
    if messages[-1]["role"] != "assistant":
        return messages, None
    if len(messages) == 1:
        problems.add(
            where,
            "field 'messages': expected messages before the final assistant message, found only "
            "the assistant message",
        )
    return messages[:-1], messages[-1]["content"]


def _check_answer(
    where: str, name: str, value: object, require_answer: bool, problems: Problems
) -> str | None:
    """The answer as a string: numbers become canonical strings (18.0 -> "18", 2.5 -> "2.5")."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if require_answer:
            found = "None" if value is None else "an empty string"
            problems.add(where, f"field '{name}': expected the ground-truth answer, found {found}")
        return None
    if isinstance(value, str):
        return value
    # bool is a subclass of int, but True is never meant as a numeric answer.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            problems.add(where, f"field '{name}': expected a finite number, found {value}")
            return None
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    problems.add(where, f"field '{name}': expected a string or a number, found {describe(value)}")
    return None


def _missing_field(kind: str, name: str, row: dict) -> str:
    """'field X is missing' with the row's columns and the setting most likely to fix it."""
    columns = list(row)
    shown = ", ".join(map(repr, columns[:20])) + (", ..." if len(columns) > 20 else "")
    message = f"field {name!r} is missing (the row has columns {shown or 'none'})"
    if kind == "prompt" and "question" in row and name != "question":
        return message + (
            "; for GSM8K rows set dataset_format to 'gsm8k', or set prompt_field to 'question'"
        )
    like = _PROMPT_LIKE if kind == "prompt" else _ANSWER_LIKE
    close = difflib.get_close_matches(name, columns, n=1) or [c for c in like if c in row][:1]
    if close:
        message += f"; did you mean {close[0]!r}? set {kind}_field to {close[0]!r}"
    return message


def check_pairs(examples: list[Example], chosen_field: str = "chosen", rejected_field: str = "rejected") -> None:
    """Preference rows need a non-empty string `chosen` and `rejected` that differ.

    A pair whose two sides are equal teaches nothing and, in DPO, contributes a constant loss:
    almost always a data bug. Every bad row is reported at once, like `load_examples` does.
    """
    problems = Problems()
    for ex in examples:
        values = {}
        for field in (chosen_field, rejected_field):
            value = ex.fields.get(field)
            if field not in ex.fields:
                problems.add(ex.source, f"missing field '{field}' (a preference pair needs '{chosen_field}' and "
                                        f"'{rejected_field}')")
            elif not isinstance(value, str):
                problems.add(ex.source, f"field '{field}' should be a string, found {describe(value)}")
            elif not value.strip():
                problems.add(ex.source, f"field '{field}' is empty")
            else:
                values[field] = value
        if len(values) == 2 and values[chosen_field].strip() == values[rejected_field].strip():
            problems.add(ex.source, f"'{chosen_field}' and '{rejected_field}' are the same text; a pair must differ")
    problems.raise_if_any("preference data")
