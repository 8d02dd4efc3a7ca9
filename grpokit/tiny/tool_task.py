"""The embedded tool-use task: "What is 37 * 48?" -> "1776", with a calculator the model may call.

Two-digit multiplication is beyond the tiny model's own arithmetic (it has no scratchpad for it
and ~0.9M parameters), but copying operands into a call and copying the result out is not. The
warm-up demonstrations use the tool only sometimes (`tool_rate`, 30% by default):

    <tool>calculator(37*48)</tool><result>1776</result><answer>1776</answer>   (with the tool)
    <answer>1776</answer>                                                     (without)

The warm-up trains on the policy's part only: the `<result>` span is the environment's and is masked
out (`EnvironmentFactory.context_spans`). After it the model calls the tool on about that share of
prompts and answers the rest from memory, mostly wrongly. GRPO, rewarded only on the verified final
answer, has to find out that calling pays (configs/tiny/tool_use.yaml).

Splits are disjoint by (a, b) pair.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOOL_RATE = 0.3


def make_row(a: int, b: int, use_tool: bool) -> dict:
    call = f"<tool>calculator({a}*{b})</tool><result>{a * b}</result>" if use_tool else ""
    return {"prompt": f"What is {a} * {b}?", "answer": str(a * b), "completion": f"{call}<answer>{a * b}</answer>"}


def make_tool_splits(seed: int = 0, eval_size: int = 200, tool_rate: float = TOOL_RATE) -> dict[str, list[dict]]:
    """All pairs 10 <= a, b <= 99, shuffled and split into train / eval."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    rows = [make_row(a, b, use_tool=rng.random() < tool_rate) for a, b in pairs]
    return {"eval": rows[:eval_size], "train": rows[eval_size:]}


def write_tool_task(out_dir: str | Path, seed: int = 0, eval_size: int = 200, tool_rate: float = TOOL_RATE
                    ) -> dict[str, Path]:
    """Write tool_train.jsonl and tool_eval.jsonl into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in make_tool_splits(seed=seed, eval_size=eval_size, tool_rate=tool_rate).items():
        path = out / f"tool_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[f"tool_{split}"] = path
    return paths
