"""The embedded arithmetic task: "What is 37 + 48?" -> "85".

Each row carries the prompt, the ground-truth answer, and a reference completion in the
`<think>…</think><answer>…</answer>` format for the SFT warm-up. The think part is a
column-by-column scratchpad ("7+8=15 3+4+1=8"), the same procedure a person uses; it
gives a small model a path to the answer that a bare guess would not.
Splits are disjoint by (a, b) pair, so held-out accuracy measures generalisation, not recall.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def scratchpad(a: int, b: int) -> str:
    """Column addition, least significant digit first.

    >>> scratchpad(37, 48)
    '7+8=15 3+4+1=8'
    """
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    return " ".join(steps)


def make_row(a: int, b: int) -> dict:
    answer = str(a + b)
    return {
        "prompt": f"What is {a} + {b}?",
        "answer": answer,
        "completion": f"<think>{scratchpad(a, b)}</think><answer>{answer}</answer>",
    }


def make_splits(seed: int = 0, max_operand: int = 99, eval_size: int = 200) -> dict[str, list[dict]]:
    """All pairs (a, b) with 0 <= a, b <= max_operand, shuffled and split into train / eval."""
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    random.Random(seed).shuffle(pairs)
    rows = [make_row(a, b) for a, b in pairs]
    return {"eval": rows[:eval_size], "train": rows[eval_size:]}


def write_task(out_dir: str | Path, seed: int = 0, eval_size: int = 200) -> dict[str, Path]:
    """Write train.jsonl and eval.jsonl into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in make_splits(seed=seed, eval_size=eval_size).items():
        path = out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[split] = path
    return paths
