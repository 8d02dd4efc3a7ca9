"""Tests for grpokit.jsonl: the one JSON Lines reader, strict for user files, tolerant of a torn
last line in the run's own logs."""

import pytest

from grpokit.errors import GrpokitError
from grpokit.jsonl import read_jsonl, read_log
from grpokit.run_dir import RunDir


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_jsonl_returns_line_numbers(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": 2}\r\n')  # a BOM and a CRLF line are fine
    assert read_jsonl(path) == [(1, {"a": 1}), (3, {"a": 2})]
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    assert read_jsonl(tmp_path / "empty.jsonl") == []


def test_read_jsonl_reports_every_bad_line(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", ['{"a": 1}', "[1]", "{oops}", '"text"'])
    with pytest.raises(GrpokitError) as info:
        read_jsonl(path)
    assert str(info.value).splitlines() == [
        f"3 problems in {path}:",
        f"  {path}:2: expected a JSON object on each line, found list [1]",
        f"  {path}:3: malformed JSON: Expecting property name enclosed in double quotes "
        "at column 2",
        f"  {path}:4: expected a JSON object on each line, found str 'text'",
    ]
    with pytest.raises(GrpokitError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_read_jsonl_reports_a_cut_last_line_in_user_data(tmp_path):
    # In a user's file a cut last line is a broken file, not a crash to forgive.
    path = tmp_path / "c.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b', encoding="utf-8")
    with pytest.raises(GrpokitError, match=r"c.jsonl:2: malformed JSON"):
        read_jsonl(path)


def test_read_log_drops_the_line_a_crash_cut_in_half(tmp_path):
    run = RunDir(tmp_path)
    run.log_metrics({"step": 1, "reward": 0.5})
    run.log_metrics({"step": 2, "reward": 0.75})
    with run.metrics_path.open("ab") as f:  # a kill mid-write: no closing brace, no newline
        f.write(b'{"step": 3, "rew')
    assert read_log(run.metrics_path) == [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.75}]
    with run.metrics_path.open("ab") as f:  # a cut inside a multi-byte character
        f.write(b'ard": "\xc3')
    assert [r["step"] for r in read_log(run.metrics_path)] == [1, 2]


def test_read_log_keeps_a_complete_last_line_and_reports_damage_elsewhere(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}', encoding="utf-8")  # whole, only the newline missing
    assert read_log(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n', encoding="utf-8")  # not the last line
    with pytest.raises(GrpokitError, match=r"metrics.jsonl:2: malformed JSON"):
        read_log(path)
    with pytest.raises(FileNotFoundError):
        read_log(tmp_path / "missing.jsonl")
