"""One benchmark run of one tool, in its own process (so its peak memory is its own).

    python benchmarks/worker.py --tool grpokit|trl --model DIR --home DIR --steps N
                                [--eval-every K] [--seed S] --out RESULT.json

Both tools: the same warmed-up model folder, the same rendered prompts and reward functions, the
same held-out evaluation (grpokit.evaluation.evaluate, greedy, evaluation time excluded from
training time). Each step's wall time is split into sampling, scoring, the reference model's
no-grad pass, and the rest (policy forward, backward, optimiser step and the tool's own
bookkeeping). Peak memory is the largest resident set summed over this process and its children
(grpokit scores in a child process), sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from settings import DEMO_CONFIG, SETTINGS, grpokit_overrides, trl_arguments  # noqa: E402


class PeakRSS:
    """Largest RSS of this process plus all its descendants, polled in a background thread."""

    def __init__(self, interval_s: float = 0.02):
        import psutil

        self.process, self.interval_s, self.peak = psutil.Process(), interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.process, *self.process.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:  # a child that has just exited
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def eval_inputs(model_dir: str, home: Path):
    """Rendered prompts, the gold answers and the reward components, exactly as grpokit's trainer sees them."""
    from grpokit.config import load_config
    from grpokit.inputs import prepare_inputs

    config = load_config(DEMO_CONFIG, grpokit_overrides(model_dir, home, 1, 0, 0, "unused"))
    return config, prepare_inputs(config)


def run_grpokit(args) -> dict:
    from grpokit.config import load_config
    from grpokit.trainer import train

    out_dir = Path(args.out).with_suffix("")
    config = load_config(DEMO_CONFIG, grpokit_overrides(args.model, Path(args.home), args.steps, args.eval_every,
                                                        args.seed, str(out_dir)) + args.set)
    summary = train(config)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    group = SETTINGS["group_size"]
    steps = [{"total": r["time_step"], "sampling": r["time_sampling"], "scoring": r["time_scoring"],
              "reference": r["time_reference"], "tokens": r["tokens_generated"],
              "completions": r.get("groups_sampled", SETTINGS["prompts_per_step"]) * group}
             for r in rows if r.get("phase") == "train"]
    evals = [{"step": r["step"], "train_seconds": r["train_seconds"], "accuracy": r["eval_accuracy"]}
             for r in rows if r.get("phase") in ("before", "eval", "after")]
    return {"steps": steps, "evals": evals, "accuracy_before": summary["eval_before"]["accuracy"],
            "accuracy_after": summary["eval_after"]["accuracy"], "train_seconds": summary["train_seconds"]}


def run_trl(args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from grpokit.evaluation import evaluate

    config, inputs = eval_inputs(args.model, Path(args.home))
    answers = [ex.answer for ex in inputs.eval]
    components = {c.name: c for c in inputs.components}
    assert list(components) == list(SETTINGS["reward_weights"]), "reward components differ from SETTINGS"

    def reward_function(component):
        def score(prompts, completions, answer, **_):
            return [component.fn(text, answer=gold, **component.kwargs) for text, gold in zip(completions, answer)]
        score.__name__ = component.name
        return score

    def held_out(model) -> float:
        return evaluate(model, inputs.tokenizer, inputs.eval_prompts, answers, inputs.components,
                        max_new_tokens=SETTINGS["max_new_tokens"], batch_size=config.eval.batch_size)["accuracy"]

    dataset = Dataset.from_list([{"prompt": p, "answer": ex.answer}
                                 for p, ex in zip(inputs.train_prompts, inputs.train)])
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, processing_class=inputs.tokenizer, train_dataset=dataset,
                          reward_funcs=[reward_function(c) for c in components.values()],
                          args=GRPOConfig(**trl_arguments(args.steps, args.seed, str(Path(args.out).with_suffix("")))))

    clock = {"sampling": 0.0, "scoring": 0.0, "reference": 0.0, "tokens": 0}

    def timed(bucket: str, fn, only_without_grad: bool = False):
        def wrapper(*a, **k):
            if only_without_grad and torch.is_grad_enabled():  # the policy's own forward: part of the update
                return fn(*a, **k)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock[bucket] += time.perf_counter() - t
        return wrapper

    generate = timed("sampling", trainer._generate)

    def counting_generate(prompts):
        out = generate(prompts)
        clock["tokens"] += sum(len(ids) for ids in out[1])  # completion ids, EOS included (as grpokit counts)
        return out

    trainer._generate = counting_generate
    trainer._calculate_rewards = timed("scoring", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = timed("reference", trainer._get_per_token_logps_and_entropies,
                                                       only_without_grad=True)
    steps, evals = [], []
    state = {"train_seconds": 0.0}

    class Timing(TrainerCallback):
        """Step time = from one step's start to the next one's (TRL's per-step overhead included),
        minus any evaluation run in between."""

        def _close_step(self):
            if "start" in state:
                total = time.perf_counter() - state.pop("start")
                state["train_seconds"] += total
                steps.append({"total": total, **clock,
                              "completions": SETTINGS["prompts_per_step"] * SETTINGS["group_size"]})
                for k in clock:
                    clock[k] = 0.0

        def on_step_begin(self, args_, state_, control, **kw):
            self._close_step()
            state["start"] = time.perf_counter()

        def on_step_end(self, args_, state_, control, **kw):
            step = state_.global_step
            if args.eval_every and step % args.eval_every == 0 and step != args.steps:
                self._close_step()  # the step ends here; the evaluation is not training time
                evals.append({"step": step, "train_seconds": state["train_seconds"],
                              "accuracy": held_out(trainer.model)})
                trainer.model.train()

        def on_train_end(self, args_, state_, control, **kw):
            self._close_step()

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for printer in (PrinterCallback, ProgressCallback):  # the logs are not needed; printing them costs time
        trainer.remove_callback(printer)
    trainer.add_callback(Timing())
    before = held_out(trainer.model)
    evals.append({"step": 0, "train_seconds": 0.0, "accuracy": before})
    trainer.train()
    after = held_out(trainer.model)
    evals.append({"step": args.steps, "train_seconds": state["train_seconds"], "accuracy": after})
    return {"steps": steps, "evals": evals, "accuracy_before": before, "accuracy_after": after,
            "train_seconds": state["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tool", choices=("grpokit", "trl"), required=True)
    parser.add_argument("--model", required=True, help="warmed-up model folder")
    parser.add_argument("--home", required=True, help="tiny task folder (data/train.jsonl, data/eval.jsonl)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra grpokit config override (ablations); not allowed with --tool trl")
    args = parser.parse_args()
    if args.set and args.tool == "trl":
        parser.error("--set changes grpokit's config only")
    torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    with PeakRSS() as rss:
        result = (run_grpokit if args.tool == "grpokit" else run_trl)(args)
    result.update({"tool": args.tool, "overrides": args.set, "peak_rss_mb": rss.peak_mb, "threads": args.threads,
                   "seed": args.seed, "versions": _versions()})
    Path(args.out).write_text(json.dumps(result, indent=1))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "trl", "grpokit"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    main()
