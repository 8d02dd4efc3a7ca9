"""Problems found in a user's input, collected so that one `GrpokitError` lists them all.

A user fixes a file in one pass rather than meeting one error per run. The data loader
(`grpokit.data`) and the JSON Lines reader (`grpokit.jsonl`) both report through `Problems`;
the small message helpers here keep their wording the same wherever a problem is found.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from grpokit.errors import GrpokitError

_MAX_SHOWN = 20  # distinct problems listed in one error
_MAX_WHERE = 3  # locations listed for one repeated problem


class Problems:
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


def describe(value: object) -> str:
    """A short "type value" for messages: "int 5", "list ['a', 'b']", "None"."""
    if value is None:
        return "None"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def not_utf8(raw: bytes, e: UnicodeDecodeError) -> str:
    return f"not valid UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}"


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def missing_path(path: Path) -> GrpokitError:
    """The error for a data path the user named that does not exist."""
    where = "" if path.is_absolute() else f" (relative to the current directory {Path.cwd()})"
    return GrpokitError(f"data file or folder '{path}' does not exist{where}.")
