"""Load prompts with their ground-truth answers, validate them, and render prompts as model text.

`load_examples(source)` turns a data source into a list of `Example`s:
- `*.jsonl` / `*.ndjson`: JSON Lines, one object per line; blank lines are skipped;
- `*.json`: a JSON list of objects, or JSON Lines;
- `*.csv`: a header row, then one row per example (every value is a string);
- `*.parquet`;
- a folder written by `datasets.Dataset.save_to_disk` or `DatasetDict.save_to_disk` (`split`
  picks the split, default "train"), or a folder holding `<split>.jsonl|.json|.csv|.parquet`;
- anything else is a Hugging Face hub dataset, `owner/name` or `owner/name:config`.

Row formats (column names follow TRL's conventions):
- standard: `prompt` is a string or a conversation (a list of {"role", "content"} messages) and
  `answer` the ground truth; if `answer` is absent, TRL's `solution` column is used instead;
- conversational: `messages` instead of `prompt`; a trailing assistant message is not part of
  the prompt, its content goes to `fields["completion"]`;
- `dataset_format="gsm8k"`: GSM8K's own rows, `question` and a worked `answer` ending in
  `#### <number>`; the number becomes the answer, the worked text `fields["solution"]`.

Every row is checked and every problem collected, so one `GrpokitError` lists them all and a
user fixes a file in one pass rather than one error per run. A problem is located as
`file:LINE` (1-based) for JSON Lines and CSV, and `file[i]` (0-based, as in `dataset[i]`) for
JSON lists, Parquet and datasets.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
import re
import socket
import string
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from grpokit.errors import GrpokitError

ROLES = ("system", "user", "assistant", "tool")
DATASET_FORMATS = ("auto", "gsm8k")
FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")

# Column names other datasets use for the prompt and the answer: when the configured column is
# missing and no name is close by spelling, the error suggests one of these that the row has.
_PROMPT_LIKE = ("question", "problem", "instruction", "query", "input", "text", "messages")
_ANSWER_LIKE = ("solution", "final_answer", "ground_truth", "target", "label", "output")
_MAX_SHOWN = 20  # distinct problems listed in one error
_MAX_WHERE = 3  # locations listed for one repeated problem
# owner/name or name, optionally :config; hub names never start with "." or "~".
_HUB_NAME = re.compile(r"[\w-][\w.-]*(/[\w.-]+)?(:[\w.-]+)?")


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
            f"{dataset_format!r}{_did_you_mean(dataset_format, DATASET_FORMATS)}."
        )
    if max_examples is not None and max_examples < 1:
        raise GrpokitError(
            f"max_examples: expected a positive number or None, found {max_examples}."
        )
    problems = _Problems()
    rows, label = _read_rows(source, split, problems)
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


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """Read a JSON Lines file into (1-based line number, object) pairs; blank lines are skipped.

    An empty file gives an empty list. Raises GrpokitError naming every line that is not valid
    UTF-8, not valid JSON, or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing_path(path)
    problems = _Problems()
    rows = _read_jsonl(path, problems)
    problems.raise_if_any(str(path))
    return rows


def render_prompt(
    prompt: str | list[dict],
    tokenizer,
    *,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
) -> str:
    """The exact text the model sees for `prompt`, in this order of precedence:

    1. `prompt_template` (string prompts only) is a format string with one placeholder,
       `{prompt}`: "Question: {prompt}\\nAnswer:". A `system_prompt` goes before it, then "\\n".
    2. A tokenizer with a chat template renders the conversation (a string prompt becomes one
       user message; `system_prompt` is added first unless a system message exists) and opens
       the assistant's turn (`add_generation_prompt=True`).
    3. Otherwise a string prompt is used as it is, after `system_prompt` and "\\n" if given.
       A conversation is an error here: joining messages into a layout the model never saw in
       training would quietly hurt it, so the user must choose a template.
    """
    if prompt_template is not None:
        if not isinstance(prompt, str):
            raise GrpokitError(
                "prompt_template applies to string prompts, but this prompt is a conversation "
                "(a list of messages); unset prompt_template to render it with the tokenizer's "
                "chat template."
            )
        text = _fill_template(prompt_template, prompt)
        return _with_bos(f"{system_prompt}\n{text}" if system_prompt else text, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = list(prompt)
        if system_prompt and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        from jinja2 import TemplateError

        try:
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except TemplateError as e:
            raise GrpokitError(
                f"the tokenizer's chat template failed on a prompt with roles "
                f"{[m.get('role') for m in messages]}: {e}"
            ) from e
    if isinstance(prompt, str):
        return _with_bos(f"{system_prompt}\n{prompt}" if system_prompt else prompt, tokenizer)
    raise GrpokitError(
        "this prompt is a conversation (a list of messages) but the tokenizer has no chat "
        "template to render it; use a tokenizer with a chat template, or string prompts with a "
        "prompt_template such as 'Question: {prompt}\\nAnswer:'."
    )


def _with_bos(text: str, tokenizer) -> str:
    """Prepend the BOS text when the tokenizer itself would add BOS (Llama, Gemma base models).

    Prompts are tokenised with add_special_tokens=False (a chat template already writes its own
    BOS), so a plain prompt must carry the BOS the model was trained with.
    """
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or text.startswith(bos):
        return text
    ids = tokenizer("x")["input_ids"]
    return bos + text if ids and ids[0] == tokenizer.bos_token_id else text


# ---- problems ------------------------------------------------------------------------------


class _Problems:
    """Problems found so far, as location + message. A repeated message (a column missing from
    every row) is kept once with its first few locations and a count, so the error stays short."""

    def __init__(self) -> None:
        self._where: dict[str, list[str]] = {}  # message -> first _MAX_WHERE locations
        self._count: dict[str, int] = {}
        self._hidden = 0  # problems whose message did not fit among the _MAX_SHOWN listed

    def add(self, where: str, message: str) -> None:
        if message not in self._where and len(self._where) >= _MAX_SHOWN:
            self._hidden += 1
            return
        locations = self._where.setdefault(message, [])
        if len(locations) < _MAX_WHERE:
            locations.append(where)
        self._count[message] = self._count.get(message, 0) + 1

    def raise_if_any(self, label: str) -> None:
        total = sum(self._count.values()) + self._hidden
        if not total:
            return
        lines = [f"{total} problem{'s' if total > 1 else ''} in {label}:"]
        # Reading finds some problems and row checks the rest: list them in file order.
        for message, locations in sorted(self._where.items(), key=lambda i: _in_order(i[1][0])):
            more = self._count[message] - len(locations)
            where = ", ".join(locations) + (f" and {more} more" if more else "")
            lines.append(f"  {where}: {message}")
        if self._hidden:
            lines.append(f"  ... and {self._hidden} more")
        raise GrpokitError("\n".join(lines))


def _in_order(where: str) -> list:
    """Sort key putting "f.jsonl:2" before "f.jsonl:11": digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", where)]


def _describe(value: object) -> str:
    """A short "type value" for messages: "int 5", "list ['a', 'b']", "None"."""
    if value is None:
        return "None"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _not_utf8(raw: bytes, e: UnicodeDecodeError) -> str:
    return f"not valid UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}"


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---- reading sources -----------------------------------------------------------------------


def _read_rows(
    source: str | os.PathLike, split: str | None, problems: _Problems
) -> tuple[list[tuple[str, dict]], str]:
    """Rows of `source` as (location, row) pairs, and the label naming the source in errors."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path, split, problems)
    if path.is_file():
        return _read_file(path, problems), str(path)
    name = os.fspath(source)
    if _HUB_NAME.fullmatch(name) and not name.lower().endswith(FILE_SUFFIXES):
        return _read_hub(name, split)
    raise _missing_path(path)


def _missing_path(path: Path) -> GrpokitError:
    where = "" if path.is_absolute() else f" (relative to the current directory {Path.cwd()})"
    return GrpokitError(f"data file or folder '{path}' does not exist{where}.")


def _read_file(path: Path, problems: _Problems) -> list[tuple[str, dict]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return [(f"{path}:{n}", row) for n, row in _read_jsonl(path, problems)]
    if suffix == ".json":
        return _read_json(path, problems)
    if suffix == ".csv":
        return _read_csv(path, problems)
    if suffix == ".parquet":
        return _read_parquet(path)
    raise GrpokitError(
        f"{path}: cannot tell the data format from the extension {suffix!r}; expected one of "
        f"{', '.join(FILE_SUFFIXES)}, or a folder saved with datasets' save_to_disk."
    )


def _read_jsonl(path: Path, problems: _Problems) -> list[tuple[int, dict]]:
    rows = []
    with open(path, "rb") as f:
        # Decode line by line so one bad byte is reported with its line, not as a crash.
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                problems.add(where, _not_utf8(raw, e))
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text.rstrip())  # a trailing newline would move the error
            except json.JSONDecodeError as e:
                problems.add(where, f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(row, dict):
                problems.add(where, f"expected a JSON object on each line, found {_describe(row)}")
                continue
            rows.append((lineno, row))
    return rows


def _read_json(path: Path, problems: _Problems) -> list[tuple[str, dict]]:
    """A .json file holds either a list of objects or, like many exports, JSON Lines."""
    data = path.read_bytes()
    if not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return [(f"{path}:{n}", row) for n, row in _read_jsonl(path, problems)]
    text = _decode(path, data, problems)
    if text is None:
        return []
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        problems.add(f"{path}:{e.lineno}", f"malformed JSON: {e.msg} at column {e.colno}")
        return []
    rows = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            rows.append((f"{path}[{i}]", item))
        else:
            problems.add(f"{path}[{i}]", f"expected a JSON object, found {_describe(item)}")
    return rows


def _decode(path: Path, data: bytes, problems: _Problems) -> str | None:
    """The file's text, or None after reporting every line that is not valid UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.add(f"{path}:{lineno}", _not_utf8(raw, e))
    return None


def _read_csv(path: Path, problems: _Problems) -> list[tuple[str, dict]]:
    text = _decode(path, path.read_bytes(), problems)
    if text is None:
        return []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        rows = []
        start = reader.line_num + 1  # a quoted cell may span lines: a row starts after the last
        for cells in reader:
            where, start = f"{path}:{start}", reader.line_num + 1
            if not cells:
                continue  # blank line
            if len(cells) != len(header):
                found = len(cells)
                problems.add(where, f"expected {len(header)} cells as in the header, found {found}")
                continue
            rows.append((where, dict(zip(header, cells))))
    except csv.Error as e:
        problems.add(f"{path}:{reader.line_num}", f"malformed CSV: {e}")
        return []
    return rows


def _read_parquet(path: Path) -> list[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise GrpokitError(f"{path} is not a readable Parquet file: {e}") from e
    return [(f"{path}[{i}]", row) for i, row in enumerate(table.to_pylist())]


def _read_folder(
    path: Path, split: str | None, problems: _Problems
) -> tuple[list[tuple[str, dict]], str]:
    """A datasets save_to_disk folder (Dataset or DatasetDict), or a folder of split files."""
    split = split or "train"
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises many kinds; all mean an unreadable folder
            raise GrpokitError(f"could not load the saved dataset in {path}: {e}") from e
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise GrpokitError(
                    f"{path}: split {split!r} not found; the saved dataset has splits "
                    f"{', '.join(map(repr, loaded))}{_did_you_mean(split, loaded)}."
                )
            loaded, label = loaded[split], f"{path}/{split}"
        else:
            label = str(path)  # one saved Dataset: there is no split to choose
        return [(f"{label}[{i}]", row) for i, row in enumerate(loaded.to_list())], label
    for suffix in FILE_SUFFIXES:
        if (path / f"{split}{suffix}").is_file():
            file = path / f"{split}{suffix}"
            return _read_file(file, problems), str(file)
    inside = sorted(p.name for p in path.iterdir())[:10]
    raise GrpokitError(
        f"folder {path} is not a dataset saved with save_to_disk and holds no file for split "
        f"{split!r} ({split}.jsonl, {split}.json, {split}.csv or {split}.parquet); it holds: "
        f"{', '.join(inside) or 'nothing'}."
    )


def _read_hub(name: str, split: str | None) -> tuple[list[tuple[str, dict]], str]:
    """A hub dataset `owner/name[:config]`; the split defaults to "train"."""
    repo, _, config = name.partition(":")
    split = split or "train"
    not_local = (
        f"'{name}' is not a local file or folder (relative to the current directory "
        f"{Path.cwd()}) and could not be loaded from the Hugging Face hub"
    )
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    if not offline:
        reason = _hub_unreachable()
        if reason:
            raise GrpokitError(
                f"{not_local}: {reason}. To use a copy in the local cache, set HF_HUB_OFFLINE=1."
            )
    import datasets

    try:
        loaded = datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:  # network, missing repo, missing config or split: all wrapped alike
        raise GrpokitError(f"{not_local}{' (offline mode is on)' if offline else ''}: {e}") from e
    label = f"{name}/{split}"
    return [(f"{label}[{i}]", row) for i, row in enumerate(loaded.to_list())], label


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached, or None. Without this 3-second check a machine with no
    network spends about 25 s in huggingface_hub's retries before failing."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the hub may be reachable only through the proxy: let datasets try
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=3):
            return None
    except OSError as e:
        return f"cannot connect to {url.hostname}:{port} ({e})"


# ---- rows to examples ----------------------------------------------------------------------


def _example(
    where: str,
    row: dict,
    prompt_field: str,
    answer_field: str,
    require_answer: bool,
    problems: _Problems,
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


def _gsm8k_example(where: str, row: dict, problems: _Problems) -> Example:
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
        found = _describe(solution) if "answer" in row else "no 'answer' field"
        problems.add(where, f"{expected} {found}")
        return Example(prompt, None, fields, where)
    if "####" not in solution:
        problems.add(where, f"{expected} no '####' in {_describe(solution)}")
        return Example(prompt, None, fields, where)
    # "#### 1,800": the commas are thousands separators.
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not answer:
        problems.add(where, f"{expected} nothing after '####'")
    return Example(prompt, answer, fields, where)


def _check_prompt(where: str, name: str, value: object, problems: _Problems) -> object:
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
            f"found {_describe(value)}",
        )
    return value


def _check_messages(where: str, name: str, messages: list, problems: _Problems) -> bool:
    """Report every malformed message; True when all are {role, content} dicts."""
    if not messages:
        problems.add(where, f"field '{name}': expected at least one message, found an empty list")
        return False
    ok = True
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            expected = "expected a {role, content} dict"
            problems.add(where, f"field '{name}[{i}]': {expected}, found {_describe(message)}")
            ok = False
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            found = "no 'role'" if "role" not in message else _describe(role)
            expected = f"expected one of {', '.join(ROLES)}"
            problems.add(where, f"field '{name}[{i}].role': {expected}, found {found}")
            ok = False
        if not isinstance(content, str):
            found = "no 'content'" if "content" not in message else _describe(content)
            problems.add(where, f"field '{name}[{i}].content': expected a string, found {found}")
            ok = False
    if ok and not any(m["content"].strip() for m in messages):
        problems.add(where, f"field '{name}': expected some text, found only empty messages")
    return ok


def _split_messages(where: str, messages: object, problems: _Problems) -> tuple[object, str | None]:
    """Prompt and completion of a `messages` row: a trailing assistant message is the
    completion (a demonstration), everything before it the prompt."""
    if not isinstance(messages, list):
        found = _describe(messages)
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
    where: str, name: str, value: object, require_answer: bool, problems: _Problems
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
    problems.add(where, f"field '{name}': expected a string or a number, found {_describe(value)}")
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


def _fill_template(template: str, prompt: str) -> str:
    """`template.format(prompt=prompt)`, refusing templates that would drop the prompt or need
    values that do not exist."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise GrpokitError(
            f"prompt_template {template!r} is not a valid format string ({e}); write {{{{ and }}}} "
            "for literal braces."
        ) from None
    if names != {"prompt"}:
        others = sorted(names - {"prompt"})
        found = f"the placeholders {', '.join('{' + n + '}' for n in others)}" if others else "none"
        raise GrpokitError(
            f"prompt_template {template!r}: expected exactly one placeholder, {{prompt}}, found "
            f"{found}; write {{{{ and }}}} for literal braces."
        )
    return template.format(prompt=prompt)


def check_pairs(examples: list[Example], chosen_field: str = "chosen", rejected_field: str = "rejected") -> None:
    """Preference rows need a non-empty string `chosen` and `rejected` that differ.

    A pair whose two sides are equal teaches nothing and, in DPO, contributes a constant loss:
    almost always a data bug. Every bad row is reported at once, like `load_examples` does.
    """
    problems = _Problems()
    for ex in examples:
        values = {}
        for field in (chosen_field, rejected_field):
            value = ex.fields.get(field)
            if field not in ex.fields:
                problems.add(ex.source, f"missing field '{field}' (a preference pair needs '{chosen_field}' and "
                                        f"'{rejected_field}')")
            elif not isinstance(value, str):
                problems.add(ex.source, f"field '{field}' should be a string, found {_describe(value)}")
            elif not value.strip():
                problems.add(ex.source, f"field '{field}' is empty")
            else:
                values[field] = value
        if len(values) == 2 and values[chosen_field].strip() == values[rejected_field].strip():
            problems.add(ex.source, f"'{chosen_field}' and '{rejected_field}' are the same text; a pair must differ")
    problems.raise_if_any("preference data")
