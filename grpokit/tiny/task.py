"""The embedded arithmetic task: "What is 37 + 48?" -> "85".

Each row carries the prompt, the ground-truth answer, and a reference completion in the
`<think>…</think><answer>…</answer>` format for the SFT warm-up. The think part is a
column-by-column scratchpad ("7+8=15 3+4+1=8"), the procedure a person uses.

The reference completions are deliberately flawed, like demonstrations from a careless
annotator: in `carry_slip` of the rows that need a carry (60% by default) the demonstrator
forgets it ("7+8=15 3+4=7", answer 75). The `answer` column is always right. SFT imitates the
demonstrations, slip included; GRPO, rewarded only when the final answer verifies, has to
discover that carrying pays. That is the point of the demo: sampling plus verification fixes
what imitation of imperfect data cannot.

Splits are disjoint by (a, b) pair, so held-out accuracy measures generalisation, not recall:
`eval` (200 prompts) is what `grpokit demo` evaluates every 25 steps (cheap, but one evaluation's
standard error is about 3.5 points); `test` (1,000, standard error at most 1.6 points) is what
`grpokit compare` reports; `valid` (500) is where `compare --sweep` picks each method's learning
rate, apart from the test prompts. The rest is `train`.
`pairs.jsonl` holds, for every training row where forgetting the carry gives a wrong answer,
a preference pair for the offline methods (dpo, orpo): the correct scratchpad chosen over the
one that forgets the carry.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CARRY_SLIP = 0.6


def scratchpad(a: int, b: int, forget_carry: bool = False) -> tuple[str, int]:
    """Column addition, least significant digit first; returns (scratchpad, its result).

    >>> scratchpad(37, 48)
    ('7+8=15 3+4+1=8', 85)
    >>> scratchpad(37, 48, forget_carry=True)
    ('7+8=15 3+4=7', 75)
    """
    steps, carry, digits = [], 0, []
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = 0 if forget_carry else total // 10
        digits.append(total % 10)
    if total >= 10:
        digits.append(total // 10)  # the last column writes its full sum
    return " ".join(steps), int("".join(str(d) for d in reversed(digits)))


def needs_carry(a: int, b: int) -> bool:
    return a % 10 + b % 10 >= 10


def make_row(a: int, b: int, forget_carry: bool = False) -> dict:
    think, result = scratchpad(a, b, forget_carry=forget_carry)
    return {
        "prompt": f"What is {a} + {b}?",
        "answer": str(a + b),
        "completion": f"<think>{think}</think><answer>{result}</answer>",
    }


def make_splits(seed: int = 0, max_operand: int = 99, eval_size: int = 200, test_size: int = 1000,
                valid_size: int = 500, carry_slip: float = CARRY_SLIP) -> dict[str, list[dict]]:
    """All pairs (a, b) with 0 <= a, b <= max_operand, shuffled and split into eval / test / valid / train.

    The eval rows come first, so the demo's 200 held-out prompts do not depend on the other sizes.
    """
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    rng.shuffle(pairs)
    rows = [make_row(a, b, forget_carry=needs_carry(a, b) and rng.random() < carry_slip) for a, b in pairs]
    held = eval_size + test_size + valid_size
    if held >= len(pairs):
        raise ValueError(f"eval, test and valid take {held} of the {len(pairs)} pairs: nothing left to train on")
    preference = [{**row, "chosen": make_row(a, b)["completion"],
                   "rejected": make_row(a, b, forget_carry=True)["completion"]}
                  for (a, b), row in zip(pairs[held:], rows[held:])
                  if scratchpad(a, b, forget_carry=True)[1] != a + b]  # 6+9: the last column writes 15 anyway
    return {"eval": rows[:eval_size], "test": rows[eval_size:eval_size + test_size],
            "valid": rows[eval_size + test_size:held], "train": rows[held:], "pairs": preference}


def write_task(out_dir: str | Path, seed: int = 0, eval_size: int = 200, carry_slip: float = CARRY_SLIP
               ) -> dict[str, Path]:
    """Write train.jsonl, eval.jsonl, test.jsonl, valid.jsonl and pairs.jsonl into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in make_splits(seed=seed, eval_size=eval_size, carry_slip=carry_slip).items():
        path = out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[split] = path
    return paths
