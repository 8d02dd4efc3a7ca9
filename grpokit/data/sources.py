"""Read a data source into raw rows: a file, a folder, or a Hugging Face hub dataset.

- `*.jsonl` / `*.ndjson`: JSON Lines, one object per line; blank lines are skipped;
- `*.json`: a JSON list of objects, or JSON Lines;
- `*.csv`: a header row, then one row per example (every value is a string);
- `*.parquet`;
- a folder written by `datasets.Dataset.save_to_disk` or `DatasetDict.save_to_disk` (`split`
  picks the split, default "train"), or a folder holding `<split>.jsonl|.json|.csv|.parquet`;
- anything else is a Hugging Face hub dataset, `owner/name` or `owner/name:config`.

Each row comes with its location for error messages: `file:LINE` (1-based) for JSON Lines and
CSV, and `file[i]` (0-based, as in `dataset[i]`) for JSON lists, Parquet and datasets. Problems
in the file itself go to the caller's `Problems`, next to those the row checks find.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import urllib.parse
from pathlib import Path

from grpokit.errors import GrpokitError
from grpokit.jsonl import parse_jsonl
from grpokit.problems import Problems, describe, did_you_mean, missing_path, not_utf8

FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
# owner/name or name, optionally :config; hub names never start with "." or "~".
_HUB_NAME = re.compile(r"[\w-][\w.-]*(/[\w.-]+)?(:[\w.-]+)?")


def read_rows(
    source: str | os.PathLike, split: str | None, problems: Problems
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
    raise missing_path(path)


def _read_file(path: Path, problems: Problems) -> list[tuple[str, dict]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return [(f"{path}:{n}", row) for n, row in parse_jsonl(path, problems)]
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


def _read_json(path: Path, problems: Problems) -> list[tuple[str, dict]]:
    """A .json file holds either a list of objects or, like many exports, JSON Lines."""
    data = path.read_bytes()
    if not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return [(f"{path}:{n}", row) for n, row in parse_jsonl(path, problems)]
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
            problems.add(f"{path}[{i}]", f"expected a JSON object, found {describe(item)}")
    return rows


def _decode(path: Path, data: bytes, problems: Problems) -> str | None:
    """The file's text, or None after reporting every line that is not valid UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.add(f"{path}:{lineno}", not_utf8(raw, e))
    return None


def _read_csv(path: Path, problems: Problems) -> list[tuple[str, dict]]:
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
    path: Path, split: str | None, problems: Problems
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
                    f"{', '.join(map(repr, loaded))}{did_you_mean(split, loaded)}."
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
