"""The one training loop: sample -> verify -> advantages -> update, repeated.

Everything the user can get wrong (config, data, reward functions) is checked before the model
is loaded. The loop itself stays short: the maths is in `methods/`, `losses`, `advantages`.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from grpokit.config import Config
from grpokit.data import Example, load_examples, render_prompt
from grpokit.errors import GrpokitError
from grpokit.evaluation import evaluate
from grpokit.methods.grpo import compute_advantages, grpo_update
from grpokit.methods.sft import batch_indices, sft_step
from grpokit.modeling import load_model, load_tokenizer
from grpokit.optim import build_optimizer, build_scheduler
from grpokit.plots import plot_training
from grpokit.rewards import BUILTIN_REWARDS, RewardComponent, build_reward_components, score_completions
from grpokit.run_dir import RunDir, peak_memory_mb
from grpokit.sampler import sample


@dataclass
class Inputs:
    """Everything checked before a model is loaded."""

    components: list[RewardComponent]
    train: list[Example]
    eval: list[Example]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_inputs(config: Config) -> Inputs:
    """Validate rewards and data; raises GrpokitError naming the problem. Loads no model."""
    components = build_reward_components(config.rewards)
    d = config.data
    if not d.train:
        raise GrpokitError("no training data given: set data.train (a .jsonl/.parquet/.csv file or a folder).")
    train = load_examples(d.train, split=d.train_split, prompt_field=d.prompt_field, answer_field=d.answer_field,
                          dataset_format=d.dataset_format, max_examples=d.max_train_examples)
    eval_ = []
    if d.eval:
        eval_ = load_examples(d.eval, split=d.eval_split, prompt_field=d.prompt_field,
                              answer_field=d.answer_field, dataset_format=d.dataset_format,
                              max_examples=d.max_eval_examples)
    if config.warmup.steps > 0:
        field = config.warmup.completion_field
        missing = [ex.source for ex in train if not isinstance(ex.fields.get(field), str) or not ex.fields[field]]
        if missing:
            raise GrpokitError(
                f"warmup.steps is {config.warmup.steps} but {len(missing)} training rows have no non-empty string "
                f"'{field}' (the reference completion the SFT warm-up trains on), e.g. {', '.join(missing[:3])}. "
                "Set warmup.completion_field to the right column, or warmup.steps=0.")
    return Inputs(components, train, eval_)


class Trainer:
    def __init__(self, config: Config, inputs: Inputs, run: RunDir):
        self.config, self.inputs, self.run = config, inputs, run
        self.tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
        self.model = load_model(config.model)
        self.device = next(self.model.parameters()).device
        d = config.data
        render = lambda ex: render_prompt(ex.prompt, self.tokenizer, system_prompt=d.system_prompt,  # noqa: E731
                                          prompt_template=d.prompt_template)
        self.train_prompts = [render(ex) for ex in inputs.train]
        self.eval_prompts = [render(ex) for ex in inputs.eval]
        self.rng = random.Random(config.train.seed)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int, label: str) -> dict | None:
        if not self.inputs.eval:
            return None
        c = self.config
        result = evaluate(self.model, self.tokenizer, self.eval_prompts, [ex.answer for ex in self.inputs.eval],
                          self.inputs.components, max_new_tokens=c.eval.max_new_tokens or c.sampling.max_new_tokens,
                          batch_size=c.eval.batch_size)
        self.run.log_metrics({"step": step, "phase": label, "eval_accuracy": result["accuracy"],
                              "eval_format_rate": result["format_rate"], "eval_mean_length": result["mean_length"],
                              "eval_seconds": result["seconds"]})
        return result

    # ------------------------------------------------------------------ SFT warm-up
    def warmup(self) -> None:
        w, c = self.config.warmup, self.config
        optimizer = build_optimizer(self.model, c.optim, lr=w.lr)
        completions = [ex.fields[w.completion_field] for ex in self.inputs.train]
        self.model.train()
        for i, rows in enumerate(batch_indices(len(self.train_prompts), w.batch_size, w.steps, self.rng)):
            metrics = sft_step(self.model, self.tokenizer, optimizer, [self.train_prompts[r] for r in rows],
                               [completions[r] for r in rows], micro_batch_size=c.optim.micro_batch_size,
                               max_grad_norm=c.optim.max_grad_norm)
            self.run.log_metrics({"step": i + 1, "phase": "warmup", **metrics})

    # ------------------------------------------------------------------ GRPO
    def train_grpo(self, progress: bool) -> None:
        c = self.config
        ref_model = None
        if c.grpo.beta != 0.0:  # the reference is the policy as GRPO starts (after any warm-up)
            ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        optimizer = build_optimizer(self.model, c.optim)
        scheduler = build_scheduler(optimizer, c.optim, total_steps=c.train.steps * c.grpo.num_iterations)
        batches = batch_indices(len(self.train_prompts), c.grpo.prompts_per_step, c.train.steps, self.rng)
        bar = _progress(c.train.steps, progress)
        for step, rows in enumerate(batches, start=1):
            row = self.grpo_step(step, rows, optimizer, scheduler, ref_model)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.2f}", acc=f"{row.get('accuracy', float('nan')):.2f}")
            if c.eval.every and step % c.eval.every == 0 and step != c.train.steps:
                self.evaluate(step, "eval")
            if c.train.save_every and step % c.train.save_every == 0:
                self.save(self.run.path / "checkpoints" / f"step_{step}")
        bar.close()

    def grpo_step(self, step: int, rows: list[int], optimizer, scheduler, ref_model) -> dict:
        c, G = self.config, self.config.sampling.group_size
        t0 = time.perf_counter()
        prompts = [self.train_prompts[r] for r in rows]
        rollout = sample(self.model, self.tokenizer, prompts, group_size=G,
                         max_new_tokens=c.sampling.max_new_tokens, temperature=c.sampling.temperature)
        t1 = time.perf_counter()
        examples = [self.inputs.train[r] for r in rows for _ in range(G)]
        scores = score_completions(self.inputs.components, [p for p in prompts for _ in range(G)],
                                   rollout.completions, [ex.reward_fields() for ex in examples])
        rewards_B = torch.tensor(scores.total, dtype=torch.float32)
        advantages_B, zero_variance = compute_advantages(rewards_B, G, c.grpo)
        t2 = time.perf_counter()
        self.model.train()
        update = grpo_update(self.model, optimizer, scheduler, rollout, advantages_B, c, ref_model)
        t3 = time.perf_counter()

        lengths = rollout.completion_lengths_B.float()
        row = {"step": step, "phase": "train", "reward": rewards_B.mean().item()}
        for name, values in scores.components.items():
            present = [v for v in values if v is not None]
            row[f"reward/{name}"] = sum(present) / len(present) if present else None
        for builtin, key in (("accuracy", "accuracy"), ("format", "format_rate")):
            component = next((x for x in self.inputs.components if x.fn is BUILTIN_REWARDS[builtin]), None)
            if component is not None:  # found by function, so an alias does not hide it
                row[key] = row[f"reward/{component.name}"]
        row.update({
            "reward_std": rewards_B.std().item(),
            "zero_variance_fraction": zero_variance,
            "mean_length": lengths.mean().item(),
            "truncation_rate": rollout.truncated_B.float().mean().item(),
            **update,
            "lr": scheduler.get_last_lr()[0],
            "tokens_generated": int(lengths.sum().item()),
            "time_sampling": t1 - t0, "time_scoring": t2 - t1, "time_training": t3 - t2,
            "peak_memory_mb": peak_memory_mb(self.device),
        })
        self.run.log_metrics(row)
        if c.train.log_rollouts:
            self.run.log_rollouts([
                {"step": step, "prompt": self.train_prompts[rows[i // G]], "answer": examples[i].answer,
                 "completion": rollout.completions[i], "rewards": {k: v[i] for k, v in scores.components.items()},
                 "reward": scores.total[i], "advantage": advantages_B[i].item(),
                 "truncated": bool(rollout.truncated_B[i])}
                for i in range(len(examples))
            ])
        return row

    def save(self, path: Path) -> Path:
        """A Hugging Face model folder (safetensors) that `from_pretrained` loads directly."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="grpo", disable=not enabled, dynamic_ncols=True)


def train(config: Config, out_dir: str | None = None) -> dict:
    """Run a whole training job; returns (and writes) summary.json."""
    if out_dir:
        config.train.out_dir = out_dir
    inputs = prepare_inputs(config)  # before the model: bad input fails fast
    start = time.perf_counter()
    set_seed(config.train.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    run = RunDir(config.train.out_dir)
    run.start(config)
    trainer = Trainer(config, inputs, run)
    summary: dict = {"run_dir": str(run.path), "method": config.train.method, "steps": config.train.steps}
    if config.warmup.steps > 0:
        summary["eval_initial"] = _brief(trainer.evaluate(0, "initial"))
        t = time.perf_counter()
        trainer.warmup()
        summary["warmup_seconds"] = time.perf_counter() - t
    summary["eval_before"] = _brief(trainer.evaluate(0, "before"))
    t = time.perf_counter()
    trainer.train_grpo(config.train.progress)
    summary["train_seconds"] = time.perf_counter() - t
    summary["eval_after"] = _brief(trainer.evaluate(config.train.steps, "after"))
    summary["model_dir"] = str(trainer.save(run.path / "final"))
    summary["plot"] = str(plot_training(run.path))
    summary["peak_memory_mb"] = peak_memory_mb(trainer.device)
    summary["wall_seconds"] = time.perf_counter() - start
    run.write_json("summary.json", summary)
    return summary


def _brief(result: dict | None) -> dict | None:
    """The eval numbers that go in summary.json (without the sample completions)."""
    return None if result is None else {k: v for k, v in result.items() if k != "samples"}
