"""grpokit against TRL's GRPOTrainer on a real model (SmolLM2-135M-Instruct): full fine-tuning and LoRA.

    python benchmarks/real_vs_trl.py [MODEL_DIR] [--out runs/bench_real_vs_trl] [--steps 5] [--rounds 1]
                                     [--variants full lora] [--resume] [--tables-only]
    make bench-real          # converts the GGUF into .grpokit/smollm2/model first, then runs this

MODEL_DIR is a Hugging Face model folder (default .grpokit/smollm2/model, what
`grpokit convert-gguf <gguf> .grpokit/smollm2/model` writes). For each variant (full fine-tuning,
LoRA) each tool runs `--steps` GRPO steps in its own process (`--worker`, so peak memory is that
run's alone), alternating which tool goes first from one variant and round to the next so that
drift in machine speed hits both. Reported per tool and variant, over steps 2-4 of every round (the
first step's lazy initialisation left out): the median seconds per step, completions per step over that
median, the median sampling time and the mean generated tokens per step; and the peak RSS of the
process tree (the trainer plus grpokit's reward worker), sampled every 20 ms (benchmarks/worker.py:
PeakRSS). Raw results go to OUT/<run>.json, the table to OUT/results.md.

The work, identical for both tools (REAL below; how each tool spells it: benchmarks/settings.py,
the same mapping the tiny-model benchmark uses, plus the extras noted in `run_trl`):
- the model folder, float32 on the CPU, `--threads` torch threads (default 2);
- prompts given as chat messages, [{"role": "user", "content": "What is 14 + 9? Answer with just the
  number."}], a and b in 1..30, rendered by each tool through the model's own chat template (which
  adds SmolLM2's default system message); 2 prompts x 8 completions per step, at most 48 new tokens,
  temperature 1, no top-k / top-p / repetition penalty;
- one reward: grpokit's builtin `accuracy` with `extract: last_number` (the last number in the
  completion must equal a + b), the same Python function called by both;
- GRPO: beta 0.04 (k3 KL to the starting model), clip 0.2 both sides, advantages
  (r - group mean) / (group std + 1e-4), token-level loss over the batch (TRL `loss_type="dapo"`,
  grpokit `aggregation: token`), one update per rollout, the 16 completions in one micro-batch;
- AdamW lr 1e-6 constant (no warm-up), betas (0.9, 0.999), no weight decay, clipping at 1.0;
- LoRA: r 16, alpha 32, dropout 0, every linear layer of the blocks (peft "all-linear"); the KL
  reference is the model with its adapters switched off in both tools. Full fine-tuning: both
  keep a second, frozen copy of the model as the reference.
- no gradient checkpointing (TRL's default is on; grpokit has none), no held-out evaluation.

What cannot be matched, and why:
- Which prompts and completions a step sees. Each tool shuffles the prompts its own way and
  consumes the random stream differently (and grpokit samples by inverse CDF, TRL through
  `generate`'s multinomial), so step n of the two runs has different prompts and completions. On
  a real model the completion lengths drive the step time (a completion that rambles to 48
  tokens costs more sampling and a longer training forward than one that stops after "23"), so
  the table reports generated tokens per step next to the times. Only more steps and rounds
  average this out (`--steps`, `--rounds`).
- LoRA initialisation. Both use peft's LoraConfig with the same settings, but the random A
  matrices come from different seeds (grpokit seeds them from train.seed in a forked stream).
- Sampling engines. grpokit's KV-cached loop (grpokit.decoding) against TRL's `model.generate`;
  both draw from softmax(logits / T) exactly, but with different code and random draws.
- Reward calls. grpokit scores in a worker process with a timeout per call (its default, so a
  hanging verifier cannot stop training); TRL calls the function in its own process. The
  worker's memory is in grpokit's peak RSS.
- Bookkeeping. TRL computes token entropies in its training forward (for its logs) and logs
  aggregated metrics every 10 steps; grpokit writes every step's metrics and all completions to
  disk. Both are inside the step times, as each tool does them by default.
- Tokenisation path. TRL tokenises the conversation with apply_chat_template(tokenize=True);
  grpokit renders the template to text and tokenises it without adding special tokens. For this
  template the ids are the same.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from settings import grpokit_overrides, trl_arguments  # noqa: E402

DEFAULT_MODEL = ".grpokit/smollm2/model"
INSTRUCTION = "Answer with just the number."
# The GRPO work both tools run (keys as benchmarks/settings.py's SETTINGS).
REAL = {
    "prompts_per_step": 2,
    "group_size": 8,
    "max_new_tokens": 48,
    "temperature": 1.0,
    "lr": 1e-6,
    "beta": 0.04,
    "clip": 0.2,
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
    "adam_betas": (0.9, 0.999),
    "reward_weights": {"accuracy": 1.0},
}
REWARDS = [{"name": "accuracy", "extract": "last_number"}]
LORA = {"r": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": "all-linear"}
VARIANTS = ("full", "lora")
TOOLS = ("grpokit", "trl")
MEASURED = slice(1, 4)  # steps 2-4: the first step pays lazy initialisation


def write_task(folder: Path, rows: int = 400, seed: int = 0) -> Path:
    """Addition prompts as chat messages, with their answers, into folder/data/train.jsonl."""
    rng = random.Random(seed)
    path = folder / "data" / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for _ in range(rows):
            a, b = rng.randint(1, 30), rng.randint(1, 30)
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"What is {a} + {b}? {INSTRUCTION}"}],
                                "answer": str(a + b)}) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Workers: one run of one tool, in its own process.
# ---------------------------------------------------------------------------------------------

def run_grpokit(args) -> list[dict]:
    from grpokit.config import load_config
    from grpokit.trainer import train

    out_dir = Path(args.out).with_suffix("")
    overrides = grpokit_overrides(args.model, Path(args.home), args.steps, 0, args.seed, str(out_dir), settings=REAL)
    # no held-out evaluation (this measures training steps only); the same thread count as TRL
    overrides += ["data.eval=", f"train.threads={args.threads}"]
    if args.variant == "lora":
        overrides += ["lora.enabled=true", f"lora.r={LORA['r']}", f"lora.alpha={LORA['alpha']}",
                      f"lora.dropout={LORA['dropout']}", f"lora.target_modules={LORA['target_modules']}",
                      "lora.save=adapter"]
    train(load_config(None, overrides, base={"rewards": REWARDS}))
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{"total": r["time_step"], "sampling": r["time_sampling"], "tokens": r["tokens_generated"],
             "completions": REAL["prompts_per_step"] * REAL["group_size"]}
            for r in rows if r.get("phase") == "train"]


def run_trl(args) -> list[dict]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    from grpokit.rewards.builtin import accuracy

    def accuracy_reward(prompts, completions, answer, **_):
        # conversational prompts: each completion is [{"role": "assistant", "content": text}]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [accuracy(text, answer=gold, **{k: v for k, v in REWARDS[0].items() if k != "name"})
                for text, gold in zip(texts, answer)]

    accuracy_reward.__name__ = "accuracy"
    rows = [json.loads(line) for line in (Path(args.home) / "data" / "train.jsonl").read_text().splitlines()]
    config = trl_arguments(args.steps, args.seed, str(Path(args.out).with_suffix("")), settings=REAL)
    config["gradient_checkpointing"] = False  # TRL's GRPOConfig turns it on by default; grpokit has none
    peft_config = None
    if args.variant == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32),
                          processing_class=AutoTokenizer.from_pretrained(args.model),
                          reward_funcs=[accuracy_reward], train_dataset=Dataset.from_list(rows),
                          args=GRPOConfig(**config), peft_config=peft_config)

    clock = {"sampling": 0.0, "tokens": 0}
    generate = trainer._generate

    def timed_generate(prompts):
        t = time.perf_counter()
        out = generate(prompts)
        clock["sampling"] += time.perf_counter() - t
        clock["tokens"] += sum(len(ids) for ids in out[1])  # completion ids, EOS included (as grpokit counts)
        return out

    trainer._generate = timed_generate
    steps, state = [], {}

    class Timing(TrainerCallback):
        """A step lasts from its start to the next one's (TRL's per-step overhead included)."""

        def close(self):
            if "start" in state:
                steps.append({"total": time.perf_counter() - state.pop("start"), **clock,
                              "completions": REAL["prompts_per_step"] * REAL["group_size"]})
                clock.update(sampling=0.0, tokens=0)

        def on_step_begin(self, *a, **k):
            self.close()
            state["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.close()

    for printer in (PrinterCallback, ProgressCallback):  # its logs are not needed; printing them costs time
        trainer.remove_callback(printer)
    trainer.add_callback(Timing())
    trainer.train()
    return steps


def worker(args) -> None:
    import torch
    import transformers
    from worker import PeakRSS, _versions

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    with PeakRSS() as rss:
        steps = (run_grpokit if args.worker == "grpokit" else run_trl)(args)
    Path(args.out).write_text(json.dumps({"tool": args.worker, "variant": args.variant, "steps": steps,
                                          "peak_rss_mb": rss.peak_mb, "threads": args.threads,
                                          "seed": args.seed, "versions": _versions()}, indent=1))


# ---------------------------------------------------------------------------------------------
# Orchestration and the table.
# ---------------------------------------------------------------------------------------------

def run_one(args, tool: str, variant: str, round_: int, out: Path) -> None:
    name = f"{variant}_{tool}_{round_}"
    command = [sys.executable, str(Path(__file__).resolve()), args.model, "--worker", tool, "--variant", variant,
               "--home", str(out), "--steps", str(args.steps), "--seed", str(round_),
               "--threads", str(args.threads), "--out", str(out / f"{name}.json")]
    print(f"bench-real: {name} ({args.steps} steps)", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"bench-real: {name} failed (exit {code}); see {out / f'{name}.log'}")
    print(f"bench-real: {name} done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def summarise(runs: list[dict]) -> dict:
    # Medians, not sums: on a shared machine one step can take several times the others.
    measured = [s for r in runs for s in r["steps"][MEASURED]]
    s_per_step = statistics.median(s["total"] for s in measured)
    return {"s_per_step": s_per_step, "sampling": statistics.median(s["sampling"] for s in measured),
            "completions_per_s": statistics.mean(s["completions"] for s in measured) / s_per_step,
            "tokens_per_step": statistics.mean(s["tokens"] for s in measured),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "steps": len(measured)}


def table(out: Path) -> str:
    lines = ["| variant | run | s/step (median, steps 2-4) | sampling s/step | completions/s | "
             "generated tokens/step | peak RSS (MB) |", "|---|---|---:|---:|---:|---:|---:|"]
    for variant in VARIANTS:
        rows = {}
        for tool in TOOLS:
            files = sorted(out.glob(f"{variant}_{tool}_[0-9]*.json"))  # every round run so far
            if files:
                rows[tool] = summarise([json.loads(f.read_text()) for f in files])
                rows[tool]["rounds"] = len(files)
        label = {"full": "full fine-tuning", "lora": f"LoRA r={LORA['r']}"}[variant]
        for tool, r in rows.items():
            name = f"{'TRL GRPOTrainer' if tool == 'trl' else 'grpokit'} ({r['rounds']} run{'s' * (r['rounds'] > 1)})"
            lines.append(f"| {label} | {name} | {r['s_per_step']:.1f} | "
                         f"{r['sampling']:.1f} | {r['completions_per_s']:.2f} | {r['tokens_per_step']:.0f} | "
                         f"{r['peak_rss_mb']:.0f} |")
        if len(rows) == 2:
            g, t = rows["grpokit"], rows["trl"]
            lines.append(f"| {label} | **grpokit / TRL** | {g['s_per_step'] / t['s_per_step']:.2f} | "
                         f"{g['sampling'] / t['sampling']:.2f} | {g['completions_per_s'] / t['completions_per_s']:.2f} "
                         f"| {g['tokens_per_step'] / t['tokens_per_step']:.2f} | "
                         f"{g['peak_rss_mb'] / t['peak_rss_mb']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model folder (default {DEFAULT_MODEL})")
    parser.add_argument("--out", default="runs/bench_real_vs_trl")
    parser.add_argument("--steps", type=int, default=5, help="GRPO steps per run (steps 2-4 are measured)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per tool and variant")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both tools")
    parser.add_argument("--resume", action="store_true", help="skip runs whose result is already in --out")
    parser.add_argument("--tables-only", action="store_true", help="run nothing: rebuild the table from --out")
    # internal: one run in this process
    parser.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, default="full", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.steps < 4:
        parser.error("--steps must be at least 4 (steps 2-4 are measured)")
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"bench-real: {args.model} is not a model folder; convert the GGUF first: "
                         f"grpokit convert-gguf <file.gguf> {DEFAULT_MODEL}")
    out = Path(args.out)
    started = time.perf_counter()
    if not args.tables_only:
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit("bench-real: TRL is not installed; `pip install -e '.[bench]'`.") from None
        out.mkdir(parents=True, exist_ok=True)
        write_task(out)
        for r in range(args.rounds):
            for variant in args.variants:  # alternate which tool goes first, variant after variant, round after round
                for tool in (TOOLS if (r + VARIANTS.index(variant)) % 2 == 0 else TOOLS[::-1]):
                    if args.resume and (out / f"{variant}_{tool}_{r}.json").is_file():
                        continue
                    run_one(args, tool, variant, r, out)
    text = (f"Model {args.model}; {json.dumps(REAL)}; LoRA {json.dumps(LORA)}; torch threads {args.threads}; "
            f"{args.steps} steps per run; medians over every round found in {out}.\n\n" + table(out))
    if not args.tables_only:
        text += f"\n\nTotal benchmark wall time: {time.perf_counter() - started:.0f} s."
    (out / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
