"""The embedded default: a tiny model and an arithmetic task, built locally with no network."""

from __future__ import annotations

import json
from pathlib import Path

from grpokit.tiny.model import build_tiny, build_tokenizer
from grpokit.tiny.task import CARRY_SLIP, make_splits, write_task
from grpokit.tiny.tool_task import write_tool_task

TASK_VERSION = 5  # 2: warm-up demonstrations with forgotten carries; 3: pairs.jsonl; 4: the tool-use task;
# 5: test (1,000) and valid (500) splits for `grpokit compare`, taken from train

# The demo's config; its relative paths point into the default home, `.grpokit/tiny`.
DEMO_CONFIG = Path(__file__).parent / "demo.yaml"


def ensure_tiny(home: str | Path, size: str = "demo", force: bool = False, carry_slip: float = CARRY_SLIP
                ) -> dict[str, Path]:
    """Build the tiny model into home/model and the task into home/data unless already there."""
    home = Path(home)
    paths = {"model": home / "model", "train": home / "data" / "train.jsonl", "eval": home / "data" / "eval.jsonl",
             "pairs": home / "data" / "pairs.jsonl", "test": home / "data" / "test.jsonl",
             "valid": home / "data" / "valid.jsonl", "tool_train": home / "data" / "tool_train.jsonl",
             "tool_eval": home / "data" / "tool_eval.jsonl"}
    if force or not (paths["model"] / "config.json").is_file():
        build_tiny(paths["model"], size=size)
    # The task has changed between versions: rebuild data written by another version or setting.
    stamp = home / "data" / "task.json"
    wanted = {"task_version": TASK_VERSION, "carry_slip": carry_slip}
    current = json.loads(stamp.read_text()) if stamp.is_file() else None
    if force or current != wanted or not all(paths[k].is_file() for k in paths if k != "model"):
        write_task(home / "data", carry_slip=carry_slip)
        write_tool_task(home / "data")
        stamp.write_text(json.dumps(wanted))
    return paths


__all__ = ["DEMO_CONFIG", "TASK_VERSION", "build_tiny", "build_tokenizer", "ensure_tiny", "make_splits", "write_task",
           "write_tool_task"]
