"""The one JSON Lines reader, for a user's files and for the run's own logs.

Both read the same way (blank lines skipped, a BOM on line 1 allowed, every line an object) and
differ only in what a bad line means:
- a user's file (`read_jsonl`): every bad line is the user's to fix, so each is named in one
  `GrpokitError`;
- a run log such as metrics.jsonl (`read_log`): a crash mid-write leaves a torn last line, one
  with no newline at its end, which is dropped; any other bad line is still an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from grpokit.problems import Problems, describe, missing_path, not_utf8


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """Read a JSON Lines file into (1-based line number, object) pairs; blank lines are skipped.

    An empty file gives an empty list. Raises GrpokitError naming every line that is not valid
    UTF-8, not valid JSON, or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_path(path)
    problems = Problems()
    rows = parse_jsonl(path, problems)
    problems.raise_if_any(str(path))
    return rows


def read_log(path: str | os.PathLike) -> list[dict]:
    """The rows of one of the run's own logs, without a last line a crash left half-written.

    A missing log raises FileNotFoundError: the run wrote it, so its absence is not the user's
    mistake to be worded as one.
    """
    path = Path(path)
    problems = Problems()
    rows = parse_jsonl(path, problems, torn_tail_ok=True)
    problems.raise_if_any(str(path))
    return [row for _, row in rows]


def parse_jsonl(path: Path, problems: Problems, *, torn_tail_ok: bool = False) -> list[tuple[int, dict]]:
    """(line number, object) pairs of `path`; every bad line goes to `problems`.

    With `torn_tail_ok`, a last line that lacks its newline and does not parse is skipped
    silently: a writer appends whole lines ending in a newline, so only an interrupted write
    leaves such a line.
    """
    rows = []
    with open(path, "rb") as f:
        # Decode line by line so one bad byte is reported with its line, not as a crash.
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            torn = torn_tail_ok and not raw.endswith(b"\n")
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                if not torn:  # a cut can split a multi-byte character
                    problems.add(where, not_utf8(raw, e))
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text.rstrip())  # a trailing newline would move the error
            except json.JSONDecodeError as e:
                if not torn:
                    problems.add(where, f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(row, dict):
                problems.add(where, f"expected a JSON object on each line, found {describe(row)}")
                continue
            rows.append((lineno, row))
    return rows
