"""The real-model task: small addition, "What is 14 + 9? Answer with just the number." -> "23".

Operands run from 1 to 30. The prompt goes through SmolLM2's own chat template (which inserts
its default system message) and the completion ends at <|im_end|>. The reward is the builtin
`accuracy` with `extract: last_number`: the last number the model writes must equal a + b.

Why this task (measured on SmolLM2-135M-Instruct, 100 prompts each, greedy at 32 new tokens;
"signal" is the fraction of groups of 8 samples at temperature 0.7 whose rewards are not all
equal, over 10 groups; all rows use the default system message unless noted):

| task | instruction | greedy acc | truncated | mean len | signal (T=0.7) |
|---|---|---|---|---|---|
| a + b, a, b in 1..30 | "Answer with just the number." in the prompt | 34% | 29% | 16.9 | 70% |
| a + b, a, b in 1..30 | same sentence as data.system_prompt | 11% | 77% | 29.3 | 40% |
| two-digit + two-digit | in the prompt | 17% | 58% | 23.6 | 60% |
| two-digit + two-digit | none | 9% | 78% | 31.2 | 38% (T=1, 16 groups) |
| two-digit + one-digit | in the prompt | 11% | 64% | 24.9 | 20% |
| two-digit - two-digit | in the prompt | 6% | 43% | 20.3 | 20% |
| one-digit * two-digit | in the prompt | 13% | 41% | 24.2 | 40% |
| words ("seven plus twelve") | in the prompt | 7% | 5% | 12.9 | 20% |

(With a `<think>`/`<answer>` system prompt the model never writes the tags, see
/work/shared/REAL_MODEL_NOTES.md, so every group is all-equal and GRPO gets no signal.)

Small addition is the only candidate well above 0 and below 60% with most groups mixed: the
model often answers "14 + 9 = 23" and stops, but as often writes a wrong sum ("3 + 25 = 6") or
rambles on ("This is a classic example of ...") with numbers that end up last. Both are things
verified rewards can push on. Putting the instruction in the user message beat putting it in
the system prompt (34% vs 11%): replacing the default system message makes the model ramble.

GRPO moves it quickly (grpokit/smollm2/demo.yaml: 8 prompts x 8 samples at T=0.7, 32 new
tokens, reward = verified last number, LoRA r 16 lr 3e-4, 6 steps). Held-out greedy accuracy on
the 300 prompts, before 34.0% (SE 2.7):

| run | after 6 steps | gain (SE of the gain) |
|---|---|---|
| LoRA, seed 0 | 65.0% (53.3% after 3 steps) | +31.0 (3.9), 8.0 SE |
| LoRA, seed 1 | 70.7% (54.3% after 3 steps) | +36.7 (3.8), 9.7 SE |
| LoRA, seed 2 | 69.7% (64.3% after 3 steps) | +35.7 (3.8), 9.4 SE |
| full fine-tuning lr 5e-6, seed 1 | 51.0% | +17.0 (4.0), 4.3 SE |
| full fine-tuning lr 5e-6, seed 2 | 54.0% | +20.0 (4.0), 5.0 SE |

(SE per evaluation sqrt(p(1-p)/300); the gain's SE combines both.) These runs, made while the
recipe was chosen, used an inverse-CDF sampler since reverted (the same distribution, other draws
per seed); the README has the demo re-measured with the sampler as it is. Each run trained for
223-255 s (6 steps) and took ~10 min in all with its three 300-prompt evaluations, on a 2-core
CPU shared with other jobs, one thread. LoRA moved faster than full fine-tuning per step and per
second (cheaper updates, no AdamW state for 135M weights), so the demo uses LoRA.

What GRPO teaches is mostly to answer briefly and stop (mean length 17 -> 11 tokens, truncated
31% -> 1-3%), which removes rambling whose numbers came last; how much of the gain is better sums rather
than better stopping was not measured separately.

Splits are disjoint by unordered pair {a, b}: no held-out question appears in training, not
even with its operands swapped. The held-out set takes one orientation of `eval_size` pairs;
training gets both orientations of the remaining pairs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

LOW, HIGH = 1, 30
INSTRUCTION = "Answer with just the number."


def make_row(a: int, b: int) -> dict:
    return {"prompt": f"What is {a} + {b}? {INSTRUCTION}", "answer": str(a + b)}


def make_splits(seed: int = 0, eval_size: int = 300, low: int = LOW, high: int = HIGH
                ) -> dict[str, list[dict]]:
    """Unordered pairs {a, b} with low <= a <= b <= high, shuffled and split into eval / train."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(low, high + 1) for b in range(a, high + 1)]
    if eval_size >= len(pairs):
        raise ValueError(f"eval_size {eval_size} leaves no training pairs out of {len(pairs)}")
    rng.shuffle(pairs)
    eval_rows = [make_row(*((a, b) if rng.random() < 0.5 else (b, a))) for a, b in pairs[:eval_size]]
    train_pairs = [p for a, b in pairs[eval_size:] for p in sorted({(a, b), (b, a)})]
    rng.shuffle(train_pairs)
    return {"train": [make_row(a, b) for a, b in train_pairs], "eval": eval_rows}


def write_task(out_dir: str | Path, seed: int = 0, eval_size: int = 300) -> dict[str, Path]:
    """Write train.jsonl and eval.jsonl into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in make_splits(seed=seed, eval_size=eval_size).items():
        path = out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        paths[split] = path
    return paths
