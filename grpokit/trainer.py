"""The one training loop: sample -> verify -> advantages -> update, repeated.

Everything the user can get wrong (config, data, reward functions) is checked before the model
is loaded. The loop itself stays short: the maths is in `methods/`, `losses`, `advantages`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from grpokit import zero
from grpokit.advantages import zero_variance_groups
from grpokit.batching import batch_indices
from grpokit.checkpoint import find_resumable, load_checkpoint, save_checkpoint
from grpokit.config import Config
from grpokit.data import Example, check_pairs, load_examples, render_prompt
from grpokit.distributed import world
from grpokit.errors import GrpokitError
from grpokit.evaluation import evaluate
from grpokit.methods import METHODS, ONLINE, PAIR_DATA, Method, ScoredGroups
from grpokit.methods.sft import sft_step
from grpokit.methods.verified import check_pass_reward, passed, resolve_pass_reward
from grpokit.modeling import (
    AdapterDisabledReference,
    apply_lora,
    autocast,
    load_lora,
    load_model,
    load_tokenizer,
    model_folder,
)
from grpokit.optim import build_optimizer, build_scheduler
from grpokit.plots import plot_dashboard, plot_training
from grpokit.rewards import BUILTIN_REWARDS, RewardComponent, build_reward_components, check_error_rate, make_scorer
from grpokit.rewards.scoring import Scores
from grpokit.run_dir import RunDir, peak_memory_mb
from grpokit.sampler import Rollout, sample, stop_token_ids
from grpokit.sharding import (
    check_launch,
    fsdp_from_launcher,
    full_model_state,
    full_weights,
    local_numel,
    optimizer_state,
    save_model,
    shard_model,
)
from grpokit.trackers import open_trackers
from grpokit.value_model import parameter_bytes


@dataclass
class Inputs:
    """Everything checked before a model is loaded: rewards, rows, and prompts rendered as the model sees them."""

    components: list[RewardComponent]
    train: list[Example]
    eval: list[Example]
    tokenizer: object
    train_prompts: list[str]
    eval_prompts: list[str]
    dropped: dict[str, int]  # rows removed by data.max_prompt_tokens, per split


def render_and_filter(examples: list[Example], tokenizer, config: Config, split: str
                      ) -> tuple[list[Example], list[str], int]:
    """Render every prompt (template errors surface here, before the model) and drop prompts
    longer than data.max_prompt_tokens; an empty result is an error naming the filter."""
    d = config.data
    prompts = [render_prompt(ex.prompt, tokenizer, system_prompt=d.system_prompt, prompt_template=d.prompt_template)
               for ex in examples]
    if d.max_prompt_tokens is None or not examples:
        return examples, prompts, 0
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    kept = [i for i, n in enumerate(lengths) if n <= d.max_prompt_tokens]
    if not kept:
        raise GrpokitError(
            f"the {split} data is empty after filtering: all {len(examples)} prompts are longer than "
            f"data.max_prompt_tokens={d.max_prompt_tokens} tokens (shortest {min(lengths)}, e.g. "
            f"{examples[lengths.index(min(lengths))].source}). Raise data.max_prompt_tokens or shorten the prompts.")
    return [examples[i] for i in kept], [prompts[i] for i in kept], len(examples) - len(kept)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_inputs(config: Config) -> Inputs:
    """Validate rewards and data; raises GrpokitError naming the problem. Loads no model."""
    if config.model.dtype == "float16":
        raise GrpokitError("model.dtype float16 is not supported for training (it would need loss scaling); "
                           "use bfloat16, or float16 only with `grpokit eval`.")
    components = build_reward_components(config.rewards)
    d, method, o = config.data, config.train.method, config.offline
    if method in ("rft", "online_dpo", "online_orpo"):  # they train on "passed"; the others only report it
        check_pass_reward(config.online.pass_reward, components)
    if not d.train:
        raise GrpokitError("no training data given: set data.train (a .jsonl/.parquet/.csv file or a folder).")
    # What each method needs of a training row: online methods verify answers against ground
    # truth; offline ones learn from given completions or pairs.
    train = load_examples(d.train, split=d.train_split, prompt_field=d.prompt_field, answer_field=d.answer_field,
                          dataset_format=d.dataset_format, max_examples=d.max_train_examples,
                          require_answer=method in ONLINE)
    if method in PAIR_DATA:
        check_pairs(train, o.chosen_field, o.rejected_field)
    eval_ = []
    if d.eval:
        eval_ = load_examples(d.eval, split=d.eval_split, prompt_field=d.prompt_field,
                              answer_field=d.answer_field, dataset_format=d.dataset_format,
                              max_examples=d.max_eval_examples)
    targets = [("warmup.completion_field", config.warmup.completion_field, "the SFT warm-up")] \
        if config.warmup.steps > 0 else []
    if method == "sft":
        targets.append(("offline.completion_field", o.completion_field, "sft"))
    for key, field, user in targets:
        missing = [ex.source for ex in train if not isinstance(ex.fields.get(field), str) or not ex.fields[field]]
        if missing:
            raise GrpokitError(
                f"{len(missing)} training rows have no non-empty string '{field}' (the reference completion {user} "
                f"trains on), e.g. {', '.join(missing[:3])}. Set {key} to the right column"
                + (", or warmup.steps=0." if key.startswith("warmup") else "; a messages row's final assistant "
                   "message is read as 'completion'."))
    # The tokenizer (not the model) is needed to render prompts exactly as the model will see them.
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
    train, train_prompts, dropped_train = render_and_filter(train, tokenizer, config, "training")
    eval_, eval_prompts, dropped_eval = render_and_filter(eval_, tokenizer, config, "eval")
    return Inputs(components, train, eval_, tokenizer, train_prompts, eval_prompts,
                  {"train": dropped_train, "eval": dropped_eval})


@dataclass
class StepRecord:
    """What one step sampled, scored and trained on, per completion: enough for its metrics and rollouts.
    With several processes each holds its own groups; `merge` joins them in rank order."""

    rows: list[int]  # training row of each group
    scores: Scores
    lengths: list[int]
    truncated: list[bool]
    completions: list[str]
    passed: list[bool] | None
    advantages: list[float | None] | None  # None for a group dynamic sampling dropped
    groups_trained: int

    @staticmethod
    def merge(parts: list[StepRecord]) -> StepRecord:
        if len(parts) == 1:
            return parts[0]

        def joined(name):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else [v for part in values for v in part]

        return StepRecord(joined("rows"), Scores.concat([p.scores for p in parts]), joined("lengths"),
                          joined("truncated"), joined("completions"), joined("passed"), joined("advantages"),
                          sum(p.groups_trained for p in parts))


class Trainer:
    """Holds the model, optimiser and run folder of one job; `run()` does the whole job.

    Resume: the state that is not in the model (optimizer, schedule, RNGs, step, positions in the
    log files, the summary so far) lives in the checkpoint. The order of training prompts is a
    pure function of the seed, so the step number alone says where in the data the run was.
    """

    def __init__(self, config: Config, inputs: Inputs, run: RunDir, resume_from: Path | None = None):
        self.config, self.inputs, self.run, self.resume_from = config, inputs, run, resume_from
        self.world = world()
        self.tokenizer = inputs.tokenizer
        self.model = self._load_policy()
        self.device = next(self.model.parameters()).device
        self.train_prompts, self.eval_prompts = inputs.train_prompts, inputs.eval_prompts
        self.summary: dict = {"run_dir": str(run.path), "method": config.train.method, "steps": config.train.steps}
        self.consecutive_skips = 0
        self.train_seconds = 0.0  # time in the method's steps, evaluations and checkpoints excluded
        self.started = time.perf_counter()  # wall time counts from here, plus time before any resume
        self.wall_before = 0.0
        v = config.verify
        self.scorer = make_scorer(config.rewards, timeout=v.timeout, isolate=v.isolate)
        self.vllm = None  # sampling.engine: vllm; started with an online method (train_method)

    @property
    def lora_base_dir(self) -> Path:
        """With LoRA and a warm-up: the warm-up's adapters merged into the base, which the method's adapters sit on."""
        return self.run.path / "lora_base"

    @property
    def fsdp(self) -> bool:
        return (self.config.train.fsdp or fsdp_from_launcher()) and self.world.size > 1

    @property
    def zero_stage(self) -> int | None:
        """The DeepSpeed ZeRO stage `accelerate launch` asked for (several processes only)."""
        return zero.stage_from_launcher() if self.world.size > 1 else None

    @property
    def lockstep(self) -> bool:
        """Every process must make the same model calls (sharded weights or DeepSpeed's engine)."""
        return self.fsdp or self.zero_stage is not None

    def _load_policy(self):
        c = self.config
        check_launch(c)
        if not c.lora.enabled:
            model = load_model(c.model, path=str(self.resume_from) if self.resume_from else None, trainable=True)
            return shard_model(model, self.world.size) if self.fsdp else model
        if self.resume_from is None:
            return apply_lora(load_model(c.model, trainable=True), c.lora, seed=c.train.seed)
        base = str(self.lora_base_dir) if c.warmup.steps > 0 else None  # the warm-up merged into the base
        return load_lora(load_model(c.model, path=base, trainable=True), str(self.resume_from))

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int, label: str) -> dict | None:
        if not self.inputs.eval:
            return None
        if self.lockstep:  # the main process evaluates on gathered weights; the others wait for it
            with full_weights(self.model) as whole:
                result = self._evaluate(step, label, whole) if self.world.is_main else None
                self.world.barrier()
            return result
        return self._evaluate(step, label) if self.world.is_main else None  # the others go on

    def _evaluate(self, step: int, label: str, model=None) -> dict:
        c = self.config
        model = model if model is not None else self.model  # under ZeRO-3: a plain copy on the gathered weights
        result = evaluate(model, self.tokenizer, self.eval_prompts, [ex.answer for ex in self.inputs.eval],
                          self.inputs.components, max_new_tokens=c.eval.max_new_tokens or c.sampling.max_new_tokens,
                          batch_size=c.eval.batch_size, engine=c.sampling.engine)
        self.run.log_metrics({"step": step, "phase": label, "eval_accuracy": result["accuracy"],
                              "eval_format_rate": result["format_rate"], "eval_mean_length": result["mean_length"],
                              "eval_seconds": result["seconds"], "train_seconds": self.train_seconds})
        return {k: v for k, v in result.items() if k != "samples"}

    # ------------------------------------------------------------------ SFT warm-up
    def warmup(self) -> None:
        """Short SFT on the rows' reference completions (not checkpointed: a kill here redoes it)."""
        w, c = self.config.warmup, self.config
        optimizer = build_optimizer(self.model, c.optim, lr=w.lr)
        scheduler = build_scheduler(optimizer, w.steps, warmup_steps=0, schedule=w.schedule)
        completions = [ex.fields[w.completion_field] for ex in self.inputs.train]
        self.model.train()
        rng = random.Random(c.train.seed)
        for i, rows in enumerate(batch_indices(len(self.train_prompts), w.batch_size, w.steps, rng)):
            rows = self.world.shard(rows)
            metrics = sft_step(self.model, self.tokenizer, optimizer, [self.train_prompts[r] for r in rows],
                               [completions[r] for r in rows], micro_batch_size=c.optim.micro_batch_size,
                               max_grad_norm=c.optim.max_grad_norm, scheduler=scheduler,
                               share_prompts=c.train.share_prompt_forward)
            self.run.log_metrics({"step": i + 1, "phase": "warmup", **metrics})

    # ------------------------------------------------------------------ the method
    def train_method(self) -> None:
        c = self.config
        if c.lora.enabled and c.warmup.steps > 0 and self.resume_from is None:
            # Fold the warm-up's adapters into the base and start fresh ones, so that "adapters off"
            # is the policy as the method starts: the same reference as without LoRA.
            merged = self.model.merge_and_unload()
            if self.world.is_main:
                merged.save_pretrained(self.lora_base_dir)  # a resume rebuilds the base from here
            self.model = apply_lora(merged, c.lora, seed=c.train.seed)  # the same on every process
        # Built when the method starts, after any warm-up: PPO's value model copies the policy then.
        self.method: Method = METHODS[c.train.method](c, self.model, self.tokenizer)
        if c.sampling.engine == "vllm" and self.method.online:
            from grpokit.vllm_engine import VLLMSampler  # vLLM is an optional extra

            self.vllm = VLLMSampler(c, model_folder(c.model.path), self.world, seed=c.train.seed)
        reference_dir = self.run.path / "reference"
        ref_model = None
        if self.method.needs_reference() and c.lora.enabled:
            ref_model = AdapterDisabledReference(self.model)  # the base model: no second copy
        elif self.method.needs_reference():  # the reference is the policy as the method starts (after any warm-up)
            if self.resume_from is None:
                save_model(self.model, reference_dir, is_main=self.world.is_main)
            self.world.barrier()  # written before any process reads it
            ref_model = load_model(c.model, path=str(reference_dir)).eval().requires_grad_(False)
            if self.fsdp:  # sharded too: the training passes call it the same number of times on every process
                ref_model = shard_model(ref_model, self.world.size)
        optimizer = build_optimizer(self.model, c.optim)
        if self.zero_stage is not None:  # DeepSpeed takes the model and AdamW from here on (the warm-up ran without)
            zero.attach(self.model, optimizer, max_grad_norm=c.optim.max_grad_norm, world_size=self.world.size)
        scheduler = build_scheduler(optimizer, c.train.steps * self.method.optimizer_steps_per_step(),
                                    warmup_steps=c.optim.warmup_steps, schedule=c.optim.schedule)
        rows_per_step = c.sampling.prompts_per_step if self.method.online else c.offline.batch_size
        # Data order depends only on the seed (its own generator), so a resumed run sees the same rows.
        batches = batch_indices(len(self.train_prompts), rows_per_step, c.train.steps, random.Random(c.train.seed + 1))
        first_step = 1
        if self.resume_from is not None:
            self.method.load_extra(self.resume_from)
            saved_by_deepspeed = (self.resume_from / "deepspeed").is_dir()
            if saved_by_deepspeed != (self.zero_stage is not None):
                raise GrpokitError(
                    f"{self.resume_from} was written by a run {'with' if saved_by_deepspeed else 'without'} "
                    f"DeepSpeed; this run is {'without' if saved_by_deepspeed else 'with'} it. Resume with the same "
                    "launch settings (accelerate config) as the run that wrote it.")
            if self.zero_stage is not None:
                zero.load_state(self.model, self.resume_from / "deepspeed")
            state = load_checkpoint(self.resume_from, self.model, optimizer)  # restores RNGs last, after model loading
            scheduler.load_state_dict(state["scheduler"])
            first_step, self.train_seconds = state["step"] + 1, state["train_seconds"]
            if self.world.rank > 0:  # the checkpoint holds rank 0's streams: the others start fresh, per rank
                set_seed(c.train.seed + 1_000_003 * self.world.rank + first_step)
            self.consecutive_skips = state["consecutive_skips"]
        step_fn = self.online_step if self.method.online else self.offline_step
        bar = _progress(c.train.steps, c.train.progress, initial=first_step - 1)
        for step in range(first_step, c.train.steps + 1):
            self.method.step = step
            t = time.perf_counter()
            row = step_fn(step, batches[step - 1], optimizer, scheduler, ref_model)
            self.train_seconds += time.perf_counter() - t
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.2f}" for k in ("reward", "accuracy", "loss") if row.get(k) is not None})
            if c.eval.every and step % c.eval.every == 0 and step != c.train.steps:
                self.evaluate(step, "eval")
            if c.train.save_every and step % c.train.save_every == 0:
                self.checkpoint(step, optimizer, scheduler)
        bar.close()
        self._check_processes_in_sync()
        self.summary["train_seconds"] = self.train_seconds
        # measured after training: AdamW allocates its moments at the first step
        self.summary["trained_state_mb"] = self.trained_state_bytes(optimizer, ref_model) / 2**20

    def _check_processes_in_sync(self) -> None:
        """Several processes must end with the same weights (they apply the same summed gradients);
        a difference means something process-local leaked into the update. Checked, not assumed."""
        if self.world.size == 1:
            return
        self.summary["processes"], self.summary["fsdp"] = self.world.size, self.fsdp
        if self.zero_stage is not None:
            self.summary["zero_stage"] = self.zero_stage
        if self.fsdp or self.zero_stage == 3:  # sharded: each process holds different weights by design
            return
        checksum = sum(p.detach().double().abs().sum().item() for p in self.model.parameters() if p.requires_grad)
        sums = self.world.gather(checksum)
        if max(sums) - min(sums) > 1e-9 * max(1.0, abs(sums[0])):
            raise GrpokitError(f"the {self.world.size} processes ended training with different weights (parameter "
                               f"checksums {sums}); please report this with the config.")

    def trained_state_bytes(self, optimizer, ref_model) -> int:
        """Bytes of the tensors the method keeps: policy weights and gradients, optimiser state,
        the frozen reference, and the method's extra models (PPO's value model and its optimiser).
        Counted from the live tensors, so a method that holds more models shows it. Per process:
        under FSDP, the shards this process holds."""
        optimizer_bytes = sum(local_numel(t) * t.element_size() for s in optimizer.state.values()
                              for t in s.values() if torch.is_tensor(t))
        reference = parameter_bytes(ref_model) if ref_model is not None else 0
        if zero.engine_of(self.model) is not None:  # DeepSpeed's own partitions, plus the AdamW moments
            held = zero.state_bytes(self.model)
            return held["weights"] + held["masters"] + held["gradients"] + optimizer_bytes + reference
        gradients = sum(local_numel(p) * p.element_size() for p in self.model.parameters() if p.requires_grad)
        return (parameter_bytes(self.model) + gradients + optimizer_bytes
                + reference + self.method.extra_state_bytes())

    def sample_and_score(self, step: int, rows: list[int], clock: dict) -> tuple[Rollout, Scores]:
        """A group of completions for each of these training rows, scored; adds to clock's times.
        Every process logs its own reward failures (each scores its own groups)."""
        c, G = self.config, self.config.sampling.group_size
        t0 = time.perf_counter()
        prompts = [self.train_prompts[r] for r in rows]
        if self.vllm is not None:
            rollout = self.vllm.sample(self.model, self.tokenizer, prompts, group_size=G,
                                       max_new_tokens=c.sampling.max_new_tokens, temperature=c.sampling.temperature,
                                       stop_ids=stop_token_ids(self.tokenizer, self.model))
        else:
            rollout = sample(self.model, self.tokenizer, prompts, group_size=G,
                             max_new_tokens=c.sampling.max_new_tokens, temperature=c.sampling.temperature,
                             engine=c.sampling.engine)
        t1 = time.perf_counter()
        examples = [self.inputs.train[r] for r in rows for _ in range(G)]
        scores = self.scorer.score([p for p in prompts for _ in range(G)], rollout.completions,
                                   [ex.reward_fields() for ex in examples])
        if scores.errors:  # logged before the error-rate check, whose message points here
            rank = {"rank": self.world.rank} if self.world.size > 1 else {}
            self.run.append(self.run.errors_path, [{"step": step, **rank, **e} for e in scores.errors],
                            every_process=True)
        check_error_rate(scores, c.verify.max_error_rate)  # before the update: never step on a broken verifier
        clock["sampling"] += t1 - t0
        clock["scoring"] += time.perf_counter() - t1
        clock["rounds"] += 1
        return rollout, scores

    def dynamic_sampling(self, step: int, rows: list[int], rollout: Rollout, scores: Scores, clock: dict
                         ) -> tuple[list[int], Rollout, Scores, list[int]]:
        """DAPO's dynamic sampling: while fewer than prompts_per_step groups have rewards that differ,
        sample groups for more training prompts (at most sampling.max_rounds rounds in all).

        Returns every row sampled, their rollout and scores (in sampling order), and the groups to
        train on: the first prompts_per_step groups with signal, or, if no group has any, the first
        round's groups (the update then sees what it would have seen without dynamic sampling).
        The extra prompts are drawn by a generator seeded by (seed, step, round), so a resumed run
        draws the same ones. With several processes each round is decided together: every process
        says how many prompts it still needs, one draw from the prompts no process has used this
        step is split between them, and the rounds end for all when nobody needs more.
        """
        c, G, want = self.config, self.config.sampling.group_size, len(rows)  # this process's share of the step
        parts = [(rows, rollout, scores)]
        used = {r for process_rows in self.world.gather(rows) for r in process_rows}  # step-wide
        for round_ in range(1, c.sampling.max_rounds):
            totals = torch.tensor([t for _, _, s in parts for t in s.total]).view(-1, G)
            with_signal = int((~zero_variance_groups(totals)).sum())
            rate = max(with_signal / len(totals), 0.25)  # expected share of new groups with signal
            need = 0 if with_signal >= want else min(want, math.ceil((want - with_signal) / rate))
            needs = self.world.gather(need)
            pool = [r for r in range(len(self.train_prompts)) if r not in used]
            draw = random.Random(f"dynamic/{c.train.seed}/{step}/{round_}").sample(pool, min(len(pool), sum(needs)))
            if not draw:  # nobody needs more, or no prompt is left
                break
            start = sum(needs[: self.world.rank])
            more = draw[start: start + need]
            used.update(draw)
            if more:
                parts.append((more, *self.sample_and_score(step, more, clock)))
        all_rows = [r for part_rows, _, _ in parts for r in part_rows]
        rollout = Rollout.concat([r for _, r, _ in parts]) if len(parts) > 1 else rollout
        scores = Scores.concat([s for _, _, s in parts]) if len(parts) > 1 else scores
        signal = (~zero_variance_groups(torch.tensor(scores.total).view(-1, G))).nonzero().flatten().tolist()
        return all_rows, rollout, scores, signal[:want] or list(range(len(rows)))

    def online_step(self, step: int, rows: list[int], optimizer, scheduler, ref_model) -> dict:
        """Sample a group per prompt, verify it, and hand the scored groups to the method."""
        c, G = self.config, self.config.sampling.group_size
        t0 = time.perf_counter()
        rows = self.world.shard(rows)  # whole groups per process: advantages are computed where they live
        clock = {"sampling": 0.0, "scoring": 0.0, "rounds": 0}
        synced_before = self.vllm.sync_seconds if self.vllm is not None else 0.0
        rollout, scores = self.sample_and_score(step, rows, clock)
        kept = list(range(len(rows)))  # the groups the update sees
        if c.sampling.dynamic:
            rows, rollout, scores, kept = self.dynamic_sampling(step, rows, rollout, scores, clock)
        rewards_B = torch.tensor(scores.total, dtype=torch.float32)
        pass_key = resolve_pass_reward(c.online.pass_reward, self.inputs.components)
        passed_B, scored_B = (passed(scores.components, scores.total, pass_key, c.online.pass_threshold)
                              if pass_key is not None else (None, None))
        kept_rows = [g * G + j for g in kept for j in range(G)]
        t2 = time.perf_counter()
        self.model.train()
        lr = scheduler.get_last_lr()[0]  # the rate this step's first update uses
        groups = ScoredGroups(rollout.select_groups(kept) if len(kept) < len(rows) else rollout,
                              rewards_B[kept_rows], None if passed_B is None else passed_B[kept_rows], G,
                              None if scored_B is None else scored_B[kept_rows])
        update = self.method.update(optimizer, scheduler, ref_model, groups)
        if self.vllm is not None:
            self.vllm.mark_stale()  # the next sampling pushes the new weights first
        t3 = time.perf_counter()
        self._guard(step, update)
        advantages_B = update.pop("advantages_B", None)
        update.pop("zero_variance_fraction", None)  # the trainer's is over every sampled group of every process
        advantage_of = {} if advantages_B is None else dict(zip(kept_rows, advantages_B.tolist()))

        record = StepRecord(rows, scores, rollout.completion_lengths_B.tolist(), rollout.truncated_B.tolist(),
                            rollout.completions, None if passed_B is None else passed_B.tolist(),
                            None if advantages_B is None else [advantage_of.get(i) for i in range(len(scores.total))],
                            len(kept))
        record = StepRecord.merge(self.world.gather(record))  # every process's groups, for the step's metrics
        if not self.world.is_main:
            return {}
        scores, rewards_B = record.scores, torch.tensor(record.scores.total, dtype=torch.float32)
        lengths = torch.tensor(record.lengths, dtype=torch.float32)
        row = {"step": step, "phase": "train", "reward": rewards_B.mean().item()}
        for name, component_summary in scores.summary().items():
            row[f"reward/{name}"] = component_summary["mean"]  # over the samples it could score
        for builtin, key in (("accuracy", "accuracy"), ("format", "format_rate")):
            component = next((x for x in self.inputs.components if x.fn is BUILTIN_REWARDS[builtin]), None)
            if component is not None:  # found by function, so an alias does not hide it
                row[key] = row[f"reward/{component.name}"]
        row.update({
            "reward_std": rewards_B.std().item(),
            "pass_rate": sum(record.passed) / len(record.passed) if record.passed is not None else None,
            "zero_variance_fraction": (zero_variance_groups(rewards_B.view(-1, G)).float().mean().item()
                                       if G > 1 else None),  # a group of one has no variance to speak of
            "mean_length": lengths.mean().item(),
            "truncation_rate": sum(record.truncated) / len(record.truncated),
            **update,
            "lr": lr,
            "tokens_generated": int(lengths.sum().item()),
            "time_sampling": clock["sampling"], "time_scoring": clock["scoring"], "time_training": t3 - t2,
            # pushing the policy's weights into vLLM, part of time_sampling
            **({"time_weight_sync": self.vllm.sync_seconds - synced_before} if self.vllm is not None else {}),
            "peak_memory_mb": peak_memory_mb(self.device),
        })
        for name, kinds in scores.error_counts.items():
            for kind, count in kinds.items():
                row[f"reward_errors/{name}/{kind}"] = count
        row["reward_error_rate"] = scores.error_rate()
        row["reward_worker_restarts"] = self.scorer.restarts
        if c.sampling.dynamic:  # what filling the batch with informative groups cost
            row.update({"sampling_rounds": clock["rounds"], "groups_sampled": len(record.rows),
                        "groups_trained": record.groups_trained})
        if c.train.log_rollouts:
            self.run.log_rollouts([
                {"step": step, "prompt": self.train_prompts[record.rows[i // G]],
                 "answer": self.inputs.train[record.rows[i // G]].answer, "completion": record.completions[i],
                 "rewards": {k: v[i] for k, v in scores.components.items()}, "reward": scores.total[i],
                 "passed": record.passed[i] if record.passed is not None else None,
                 **({"advantage": record.advantages[i]} if record.advantages is not None else {}),
                 "truncated": record.truncated[i]}
                for i in range(len(record.completions))
            ])
        row["time_step"] = time.perf_counter() - t0  # the whole step, logging included
        self.run.log_metrics(row)
        return row

    def offline_step(self, step: int, rows: list[int], optimizer, scheduler, ref_model) -> dict:
        t0 = time.perf_counter()
        rows = self.world.shard(rows)
        self.model.train()
        lr = scheduler.get_last_lr()[0]
        update = self.method.update(optimizer, scheduler, ref_model,
                                    ([self.train_prompts[r] for r in rows], [self.inputs.train[r] for r in rows]))
        self._guard(step, update)
        row = {"step": step, "phase": "train", **update, "lr": lr, "time_training": time.perf_counter() - t0,
               "peak_memory_mb": peak_memory_mb(self.device)}
        self.run.log_metrics(row)
        return row

    def _guard(self, step: int, update: dict) -> None:
        """Count optimiser steps skipped for non-finite values; stop after too many in a row."""
        skipped, trailing = update["skipped_updates"], update["trailing_skips"]
        if skipped == 0:
            self.consecutive_skips = 0
            return
        all_skipped = skipped == update["optimizer_steps"]
        self.consecutive_skips = self.consecutive_skips + skipped if all_skipped else trailing
        print(f"grpokit: step {step}: skipped {skipped} optimiser step(s): loss {update['loss']}, "
              f"gradient norm {update['grad_norm']} (not finite); parameters left unchanged.", file=sys.stderr)
        limit = self.config.train.max_consecutive_skips
        if self.consecutive_skips >= limit:
            raise GrpokitError(
                f"stopping at step {step}: {self.consecutive_skips} optimiser steps in a row had a non-finite loss "
                f"or gradient norm (limit train.max_consecutive_skips={limit}). The model is diverging or a reward "
                "produces extreme values: lower optim.lr, check the rewards, or inspect rollouts.jsonl for this step.")

    # ------------------------------------------------------------------ saving
    def checkpoint(self, step: int, optimizer, scheduler) -> Path | None:
        """The main process writes it (every process holds the same state, or, under FSDP, gathers the
        shards first: a collective); the others wait for it."""
        model_state = full_model_state(self.model)
        optimizer_state_ = optimizer_state(self.model, optimizer)
        save_extra = self.method.save_extra
        if self.zero_stage is not None:  # every process writes its part of DeepSpeed's state; moved in below
            staging = self.run.path / "checkpoints" / f".deepspeed_step_{step}"
            if self.world.is_main:  # also what a crash between writing and moving left behind
                for stale in staging.parent.glob(".deepspeed_step_*"):
                    shutil.rmtree(stale, ignore_errors=True)
            self.world.barrier()
            zero.save_state(self.model, staging)
            self.world.barrier()

            def save_extra(folder: Path, method_extra=self.method.save_extra) -> None:
                method_extra(folder)
                shutil.move(str(staging), str(folder / "deepspeed"))
        if not self.world.is_main:
            self.world.barrier()
            return None
        state = {
            "scheduler": scheduler.state_dict(),
            "train_seconds": self.train_seconds,
            "consecutive_skips": self.consecutive_skips,
            "log_offsets": self.run.offsets(),
            "summary": self.summary,
            "wall_seconds": self.wall_seconds(),
        }
        path = save_checkpoint(self.run.path / "checkpoints", step, model=self.model, tokenizer=self.tokenizer,
                               optimizer_state=optimizer_state_, state=state, keep=self.config.train.keep_checkpoints,
                               save_extra=save_extra, model_state=model_state)
        self.world.barrier()
        return path

    def save(self, path: Path) -> Path:
        """A Hugging Face model folder (safetensors) that `from_pretrained` loads directly; with
        lora.save=adapter, the adapter folder that peft's `PeftModel.from_pretrained` loads."""
        if self.config.lora.enabled and self.config.lora.save == "merged":
            self.model = self.model.merge_and_unload()  # the last use of the model: training is over
        save_model(self.model, path, is_main=self.world.is_main)
        if not self.world.is_main:
            return path
        adapter_config = path / "adapter_config.json"
        if adapter_config.is_file() and (self.lora_base_dir / "config.json").is_file():
            # the adapters sit on the warm-up merged into the base, not on model.path: say so
            config = json.loads(adapter_config.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = str(self.lora_base_dir.resolve())
            adapter_config.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.tokenizer.save_pretrained(path)
        return path

    # ------------------------------------------------------------------ the whole job
    def run_job(self) -> dict:
        try:
            with autocast(self.config.model, self.device):
                return self._run_job()
        finally:
            self.scorer.close()
            if self.vllm is not None:
                self.vllm.close()
            self.run.close_trackers()

    def _run_job(self) -> dict:
        c = self.config
        if self.resume_from is None:
            if c.warmup.steps > 0:
                self.summary["eval_initial"] = self.evaluate(0, "initial")
                t = time.perf_counter()
                self.warmup()
                self.summary["warmup_seconds"] = time.perf_counter() - t
            self.summary["eval_before"] = self.evaluate(0, "before")
        self.train_method()
        self.summary["eval_after"] = self.evaluate(c.train.steps, "after")
        self.summary["model_dir"] = str(self.save(self.run.path / "final"))
        if self.world.is_main:
            self.summary["plot"] = str(plot_training(self.run.path))
            self.summary["dashboard"] = str(plot_dashboard(self.run.path))
        self.summary["peak_memory_mb"] = peak_memory_mb(self.device)
        return self.summary


def _progress(total: int, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", disable=not enabled, dynamic_ncols=True)


def train(config: Config, out_dir: str | None = None) -> dict:
    """Run (or, with train.resume, continue) a whole training job; returns and writes summary.json."""
    if out_dir:
        config.train.out_dir = out_dir
    inputs = prepare_inputs(config)  # before the model: bad input fails fast
    check_world(config, world())
    for split, count in inputs.dropped.items():
        if count:
            print(f"grpokit: dropped {count} {split} rows whose prompt is longer than data.max_prompt_tokens="
                  f"{config.data.max_prompt_tokens}.", file=sys.stderr)
    started = time.perf_counter()
    set_seed(config.train.seed + world().rank)  # several processes: a random stream each (rank 0: the seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    run = RunDir(config.train.out_dir, writer=world().is_main)
    resume_from = find_resumable(run.path / "checkpoints") if config.train.resume else None
    cut_rows, resumed_at = [], None  # on resume: the metrics rows the trackers already have, and from where
    if resume_from is None:
        if config.train.resume:
            print(f"grpokit: no checkpoint in {run.path / 'checkpoints'}; starting from the beginning.",
                  file=sys.stderr)
        if (run.path / "checkpoints").is_dir() and any((run.path / "checkpoints").iterdir()):
            raise GrpokitError(
                f"run folder {run.path} already holds checkpoints of an earlier run. Continue it with --resume "
                "(train.resume=true), or choose another folder with --out (train.out_dir).")
        run.start(config)
        trainer = Trainer(config, inputs, run)
    else:
        state = json.loads((resume_from / "state.json").read_text(encoding="utf-8"))
        cut_rows, resumed_at = run.resume(config, state["log_offsets"]), state["step"]
        print(f"grpokit: resuming from {resume_from} (step {state['step']}).", file=sys.stderr)
        trainer = Trainer(config, inputs, run, resume_from=resume_from)
        trainer.summary = {**state["summary"], "resumed_at_steps": [*state["summary"].get("resumed_at_steps", []),
                                                                     state["step"]]}
        trainer.wall_before = state["wall_seconds"]
    trainer.started = started
    if world().is_main:
        run.trackers = open_trackers(run.path, config, resumed_at=resumed_at, already_logged=cut_rows)
    summary = trainer.run_job()
    summary["wall_seconds"] = trainer.wall_seconds()
    run.write_json("summary.json", summary)
    world().barrier()  # every process finishes the job before any returns
    return summary


def check_world(config: Config, w) -> None:
    """With several processes, a step's prompts (or rows) must split evenly over them."""
    if w.size == 1:
        return
    c = config
    batch = ("sampling.prompts_per_step", c.sampling.prompts_per_step) if c.train.method in ONLINE \
        else ("offline.batch_size", c.offline.batch_size)
    for key, value in (batch, ("warmup.batch_size", c.warmup.batch_size if c.warmup.steps else w.size)):
        if value % w.size:
            raise GrpokitError(f"config key '{key}' is {value}, which does not split evenly over {w.size} processes; "
                               f"use a multiple of {w.size}.")
