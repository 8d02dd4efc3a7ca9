"""The one training loop: load, warm up, then for each step sample -> score -> update -> log ->
evaluate -> checkpoint.

Everything the user can get wrong is checked before the model loads (`grpokit.inputs`). The parts
live elsewhere: how the model is spread over processes in `grpokit.parallel`, sampling and scoring
in `grpokit.collector`, the update rules in `grpokit.methods`, a step's log rows in
`grpokit.step_log`, checkpoint files in `grpokit.checkpoint`.

Resume: the state that is not in the model (optimizer, schedule, RNGs, step, positions in the log
files, the summary so far) lives in the checkpoint. The order of training prompts is a pure function
of the seed, so the step number alone says where in the data the run was.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from grpokit.batching import batch_indices
from grpokit.checkpoint import (
    MANIFEST,
    check_reference,
    discard_incomplete,
    find_resumable,
    load_checkpoint,
    write_failure,
    write_manifest,
    write_run_checkpoint,
)
from grpokit.collector import RolloutCollector
from grpokit.config import Config
from grpokit.envs import make_environments
from grpokit.errors import GrpokitError
from grpokit.evaluation import eval_reward_specs, evaluate, make_eval_scorer
from grpokit.inputs import Inputs, check_world, prepare_inputs, report_inputs
from grpokit.methods import METHODS, Method, ScoredGroups, shardable_methods
from grpokit.methods.sft import sft_step
from grpokit.modeling import AdapterDisabledReference, apply_lora, autocast, load_lora, load_model, model_folder
from grpokit.multiturn import MultiTurnSampler
from grpokit.optim import build_optimizer, build_scheduler
from grpokit.parallel import choose_backend, single_process, world
from grpokit.plots import plot_dashboard, plot_training
from grpokit.rewards import make_scorer
from grpokit.rewards.passing import passed, resolve_pass_reward
from grpokit.run_dir import RunDir, peak_memory_mb
from grpokit.sampler import LocalSampler
from grpokit.step_log import StepRecord, error_metrics, rollout_records, step_metrics
from grpokit.trackers import open_trackers


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Holds the model, optimiser and run folder of one job; `run_job()` does the whole job."""

    def __init__(self, config: Config, inputs: Inputs, run: RunDir, resume_from: Path | None = None):
        self.config, self.inputs, self.run, self.resume_from = config, inputs, run, resume_from
        self.backend = choose_backend(config, world(), shardable_methods())  # the one place that decides
        self.world = self.backend.world
        self.tokenizer = inputs.tokenizer
        self.model = self._load_policy()
        self.device = next(self.model.parameters()).device
        self.summary: dict = {"run_dir": str(run.path), "method": config.train.method, "steps": config.train.steps}
        self.consecutive_skips = 0
        self.train_seconds = 0.0  # time in the method's steps, evaluations and checkpoints excluded
        self.started = time.perf_counter()  # wall time counts from here, plus time before any resume
        self.wall_before = 0.0
        v = config.verify
        self.scorer = make_scorer(config.rewards, timeout=v.timeout, isolate=v.isolate)
        self.sampler = None  # started with an online method (train_method)
        self.eval_envs = None  # multi-turn evaluation's environments, made at the first evaluation
        self.eval_scorer = None  # the rewards evaluation reads, made at the first evaluation

    @property
    def lora_base_dir(self) -> Path:
        """With LoRA and a warm-up: the warm-up's adapters merged into the base, which the method's adapters sit on."""
        return self.run.path / "lora_base"

    def _load_policy(self):
        c = self.config
        if not c.lora.enabled:
            model = load_model(c.model, path=str(self.resume_from) if self.resume_from else None, trainable=True)
            return self.backend.prepare_model(model)
        if self.resume_from is None:
            return apply_lora(load_model(c.model, trainable=True), c.lora, seed=c.train.seed)
        base = str(self.lora_base_dir) if c.warmup.steps > 0 else None  # the warm-up merged into the base
        return load_lora(load_model(c.model, path=base, trainable=True), str(self.resume_from))

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    # ------------------------------------------------------------------ the whole job
    def run_job(self) -> dict:
        try:
            with autocast(self.config.model, self.device):
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
        finally:
            self.scorer.close()
            if self.eval_scorer not in (None, self.scorer):
                self.eval_scorer.close()
            if self.eval_envs is not None:
                self.eval_envs.close()
            if self.sampler is not None:
                self.sampler.close()
            self.run.close_trackers()

    def warmup(self) -> None:
        """Short SFT on the rows' reference completions (not checkpointed: a kill here redoes it)."""
        w, c = self.config.warmup, self.config
        optimizer = build_optimizer(self.model, c.optim, lr=w.lr)
        scheduler = build_scheduler(optimizer, w.steps, warmup_steps=0, schedule=w.schedule)
        completions = [ex.fields[w.completion_field] for ex in self.inputs.train]
        prompts = self.inputs.train_prompts
        envs = make_environments(c, self.tokenizer)  # multi-turn demonstrations: tool results are not targets
        self.model.train()
        for i, rows in enumerate(batch_indices(len(prompts), w.batch_size, w.steps, random.Random(c.train.seed))):
            rows = self.world.shard(rows)
            metrics = sft_step(self.model, self.tokenizer, optimizer, [prompts[r] for r in rows],
                               [completions[r] for r in rows], backend=self.backend,
                               micro_batch_size=c.optim.micro_batch_size, max_grad_norm=c.optim.max_grad_norm,
                               scheduler=scheduler, share_prompts=c.train.share_prompt_forward,
                               context_spans=envs.context_spans if envs else None)
            self.run.log_metrics({"step": i + 1, "phase": "warmup", **metrics})
        if envs:
            envs.close()

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
        self.method: Method = METHODS[c.train.method](c, self.model, self.tokenizer, self.backend)
        ref_model = self._reference()
        optimizer = build_optimizer(self.model, c.optim)
        # DeepSpeed takes the model and AdamW from here on (the warm-up ran without)
        self.backend.attach_optimizer(self.model, optimizer, max_grad_norm=c.optim.max_grad_norm)
        scheduler = build_scheduler(optimizer, c.train.steps * self.method.optimizer_steps_per_step(),
                                    warmup_steps=c.optim.warmup_steps, schedule=c.optim.schedule)
        if self.method.online:
            self.sampler = self._sampler()
            collector = RolloutCollector(c, self.inputs, self.sampler, self.scorer, self.run, self.world)
        rows_per_step = c.sampling.prompts_per_step if self.method.online else c.offline.batch_size
        # Data order depends only on the seed (its own generator), so a resumed run sees the same rows.
        batches = batch_indices(len(self.inputs.train_prompts), rows_per_step, c.train.steps,
                                random.Random(c.train.seed + 1))
        first_step = 1 if self.resume_from is None else self._resume(optimizer, scheduler)
        bar = _progress(c.train.steps, c.train.progress, initial=first_step - 1)
        for step in range(first_step, c.train.steps + 1):
            self.method.step = step
            t = time.perf_counter()
            rows = self.world.shard(batches[step - 1])  # whole groups per process
            if self.method.online:
                row = self.online_step(step, collector.collect(step, rows), optimizer, scheduler, ref_model, t)
            else:
                row = self.offline_step(step, rows, optimizer, scheduler, ref_model, t)
            self.train_seconds += time.perf_counter() - t
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.2f}" for k in ("reward", "accuracy", "loss") if row.get(k) is not None})
            if c.eval.every and step % c.eval.every == 0 and step != c.train.steps:
                self.evaluate(step, "eval")
            if c.train.save_every and step % c.train.save_every == 0:
                self.checkpoint(step, optimizer, scheduler)
        bar.close()
        self.backend.check_in_sync(self.model)
        self.summary.update(self.backend.describe())
        self.summary["train_seconds"] = self.train_seconds
        # measured after training: AdamW allocates its moments at the first step
        self.summary["trained_state_mb"] = (self.backend.trained_state_bytes(self.model, optimizer)
                                            + (self.backend.parameter_bytes(ref_model) if ref_model is not None else 0)
                                            + self.method.extra_state_bytes()) / 2**20

    def _reference(self):
        """The frozen KL reference: the policy as the method starts (after any warm-up), or None."""
        c = self.config
        if not self.method.needs_reference(c):
            return None
        if c.lora.enabled:
            return AdapterDisabledReference(self.model)  # the base model: no second copy
        reference_dir = self.run.path / "reference"
        if self.resume_from is None:
            self.backend.save_model(self.model, reference_dir)
            if self.world.is_main:
                write_manifest(reference_dir)  # checksummed like a checkpoint: a resume verifies it (train())
        self.world.barrier()  # written before any process reads it
        ref_model = load_model(c.model, path=str(reference_dir)).eval().requires_grad_(False)
        return self.backend.prepare_reference(ref_model)

    def _sampler(self):
        c = self.config
        if c.sampling.engine == "vllm":
            from grpokit.vllm_engine import VLLMSampler  # vLLM is an optional extra

            engine = VLLMSampler(c, model_folder(c.model.path), self.backend, seed=c.train.seed, model=self.model,
                                 tokenizer=self.tokenizer)
        else:
            engine = LocalSampler(self.model, self.tokenizer, c, self.backend)
        envs = make_environments(c, self.tokenizer)  # multi-turn: an environment answers each conversation
        return engine if envs is None else MultiTurnSampler(engine, self.tokenizer, envs, c)

    def _resume(self, optimizer, scheduler) -> int:
        """Restore what the checkpoint holds beyond the weights; returns the first step to run."""
        c = self.config
        self.method.load_extra(self.resume_from)
        state = load_checkpoint(self.resume_from, self.model, optimizer, self.backend)  # restores RNGs last
        scheduler.load_state_dict(state["scheduler"])
        self.train_seconds, self.consecutive_skips = state["train_seconds"], state["consecutive_skips"]
        if self.world.rank > 0:  # the checkpoint holds rank 0's streams: the others start fresh, per rank
            set_seed(c.train.seed + 1_000_003 * self.world.rank + state["step"] + 1)
        return state["step"] + 1

    # ------------------------------------------------------------------ one step
    def online_step(self, step: int, collected, optimizer, scheduler, ref_model, t0: float) -> dict:
        """Hand the step's scored groups to the method, then log what they were and what it did."""
        c, G = self.config, self.config.sampling.group_size
        rollout, scores, kept = collected.rollout, collected.scores, collected.kept
        synced_before = self.sampler.sync_seconds  # pushing weights into vLLM, part of sampling
        pass_key = resolve_pass_reward(c.online.pass_reward, self.inputs.components, env=bool(c.env.name))
        passed_B = passed(scores, pass_key, c.online.pass_threshold) if pass_key is not None else None
        scored_B = torch.tensor(scores.verified(), dtype=torch.bool)  # a failed verification is not a wrong answer
        kept_rows = [g * G + j for g in kept for j in range(G)]
        rewards_B = torch.tensor(scores.total, dtype=torch.float32)
        t2 = time.perf_counter()
        self.model.train()
        lr = scheduler.get_last_lr()[0]  # the rate this step's first update uses
        groups = ScoredGroups(rollout.select_groups(kept) if len(kept) < len(collected.rows) else rollout,
                              rewards_B[kept_rows], None if passed_B is None else passed_B[kept_rows], G,
                              scored_B[kept_rows])
        update = self.method.update(optimizer, scheduler, ref_model, groups)
        self.sampler.after_update()  # vLLM: the next sampling pushes the new weights first
        t3 = time.perf_counter()
        self._guard(step, update.metrics)
        advantages = None  # per sampled completion; None for a group dynamic sampling dropped
        if update.advantages_B is not None:
            advantage_of = dict(zip(kept_rows, update.advantages_B.tolist()))
            advantages = [advantage_of.get(i) for i in range(len(scores.total))]
        record = StepRecord(collected.rows, scores, rollout.completion_lengths_B.tolist(), rollout.truncated_B.tolist(),
                            rollout.completions, None if passed_B is None else passed_B.tolist(), advantages, len(kept),
                            scored_B.tolist(), rollout.env_stats)
        record = StepRecord.merge(self.world.gather(record))  # every process's groups, for the step's metrics
        if not self.world.is_main:
            return {}
        row = step_metrics(step, record, G, self.inputs.components, {**update.metrics, "lr": lr})
        seconds = collected.seconds
        row.update({"time_sampling": seconds["sampling"], "time_scoring": seconds["scoring"],
                    "time_training": t3 - t2,
                    **({"time_weight_sync": self.sampler.sync_seconds - synced_before}
                       if c.sampling.engine == "vllm" else {}),
                    "peak_memory_mb": peak_memory_mb(self.device),
                    **error_metrics(record.scores, self.scorer.restarts)})
        if c.sampling.dynamic:  # what filling the batch with informative groups cost
            row.update({"sampling_rounds": collected.rounds, "groups_sampled": len(record.rows),
                        "groups_trained": record.groups_trained})
        if c.train.log_rollouts:
            self.run.log_rollouts(rollout_records(step, record, G, self.inputs.train_prompts, self.inputs.train))
        row["time_step"] = time.perf_counter() - t0  # the whole step, logging included
        self.run.log_metrics(row)
        return row

    def offline_step(self, step: int, rows: list[int], optimizer, scheduler, ref_model, t0: float) -> dict:
        self.model.train()
        lr = scheduler.get_last_lr()[0]
        data = ([self.inputs.train_prompts[r] for r in rows], [self.inputs.train[r] for r in rows])
        update = self.method.update(optimizer, scheduler, ref_model, data)
        self._guard(step, update.metrics)
        row = {"step": step, "phase": "train", **update.metrics, "lr": lr, "time_training": time.perf_counter() - t0,
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

    # ------------------------------------------------------------------ evaluation and saving
    def evaluate(self, step: int, label: str) -> dict | None:
        """Held-out accuracy, by the main process on whole weights (the others wait where the weights are split)."""
        if not self.inputs.eval:
            return None
        if not self.backend.lockstep:
            return self._evaluate(step, label, self.model) if self.world.is_main else None  # the others go on
        with self.backend.full_weights(self.model) as whole:
            result = self._evaluate(step, label, whole) if self.world.is_main else None
            self.world.barrier()
        return result

    def _evaluate(self, step: int, label: str, model) -> dict:
        c = self.config
        conversations = None  # multi-turn: each answer is a greedy conversation with the environment
        if c.env.name:
            self.eval_envs = self.eval_envs or make_environments(c, self.tokenizer)
            conversations = MultiTurnSampler(LocalSampler(model, self.tokenizer, c, single_process()),
                                             self.tokenizer, self.eval_envs, c)
        if self.eval_scorer is None:  # scored as training scores (worker, time limits, sandbox), by the pass rule
            v, reads_all = c.verify, eval_reward_specs(c.rewards, c.online.pass_reward) == list(c.rewards)
            self.eval_scorer = self.scorer if reads_all else make_eval_scorer(
                c.rewards, c.online.pass_reward, timeout=v.timeout, isolate=v.isolate)
        result = evaluate(model, self.tokenizer, self.inputs.eval_prompts, [ex.answer for ex in self.inputs.eval],
                          max_new_tokens=c.eval.max_new_tokens or c.sampling.max_new_tokens,
                          batch_size=c.eval.batch_size, engine=c.sampling.engine, sampler=conversations,
                          rows=[ex.reward_fields() for ex in self.inputs.eval], scorer=self.eval_scorer,
                          pass_reward=c.online.pass_reward, pass_threshold=c.online.pass_threshold)
        if result["errors"]:  # completions left unscored, in the errors log with the training ones
            self.run.append(self.run.errors_path, [{"step": step, "phase": label, **e} for e in result["errors"]])
        self.run.log_metrics({"step": step, "phase": label, "eval_accuracy": result["accuracy"],
                              "eval_format_rate": result["format_rate"], "eval_mean_length": result["mean_length"],
                              **({"eval_unscored": result["unscored"]} if result["unscored"] else {}),
                              **({"eval_tool_call_rate": result["tool_call_rate"]} if conversations else {}),
                              "eval_seconds": result["seconds"], "train_seconds": self.train_seconds})
        return {k: v for k, v in result.items() if k not in ("samples", "errors")}

    def checkpoint(self, step: int, optimizer, scheduler) -> Path | None:
        state = {"scheduler": scheduler.state_dict(), "train_seconds": self.train_seconds,
                 "consecutive_skips": self.consecutive_skips, "log_offsets": self.run.offsets(),
                 "summary": self.summary, "wall_seconds": self.wall_seconds()}
        return write_run_checkpoint(self.run.path / "checkpoints", step, backend=self.backend, model=self.model,
                                    tokenizer=self.tokenizer, optimizer=optimizer, state=state,
                                    keep=self.config.train.keep_checkpoints, save_extra=self.method.save_extra)

    def save(self, path: Path) -> Path:
        """A Hugging Face model folder (safetensors) that `from_pretrained` loads directly; with
        lora.save=adapter, the adapter folder that peft's `PeftModel.from_pretrained` loads."""
        if self.config.lora.enabled and self.config.lora.save == "merged":
            self.model = self.model.merge_and_unload()  # the last use of the model: training is over
        self.backend.save_model(self.model, path)
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


def _progress(total: int, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", disable=not enabled, dynamic_ncols=True)


def train(config: Config, out_dir: str | None = None, *, overwrite: bool = False,
          allow_config_change: bool = False) -> dict:
    """Run (or, with train.resume, continue) a whole training job; returns and writes summary.json.

    The run folder is locked (run.lock) for the whole job. `overwrite`: start over in a folder that
    holds a finished run or checkpoints (what the earlier run wrote is deleted first).
    `allow_config_change`: on resume, accept changed keys that define the run, where the new value
    can act (recorded in config_changes.jsonl; docs/run-folder.md lists the keys)."""
    if out_dir:
        config.train.out_dir = out_dir
    if overwrite and config.train.resume:
        raise GrpokitError("--overwrite starts the run over and --resume (train.resume=true) continues it: use one.")
    inputs = prepare_inputs(config)  # before the model: bad input fails fast
    check_world(config, world())
    report_inputs(inputs, config)
    started = time.perf_counter()
    set_seed(config.train.seed + world().rank)  # several processes: a random stream each (rank 0: the seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    run = RunDir(config.train.out_dir, writer=world().is_main)
    held_by_other = world().gather(run.lock() if world().is_main else None)[0]  # every process learns it
    if held_by_other:
        raise GrpokitError(held_by_other)
    try:
        return _train_in(run, config, inputs, started, overwrite, allow_config_change)
    except (OSError, RuntimeError) as e:  # a full disk while writing logs, reference/ or final/
        failure = write_failure(e, run.path, run.path / "checkpoints", what=f"into the run folder {run.path}",
                                any_os_error=False)
        if failure is None:
            raise
        raise failure from None
    finally:
        run.unlock()


def _train_in(run: RunDir, config: Config, inputs: Inputs, started: float, overwrite: bool,
              allow_config_change: bool) -> dict:
    """The job, in a run folder this process holds: start it, start it over, or continue it."""
    checkpoints = run.path / "checkpoints"
    if world().is_main:
        removed = discard_incomplete(checkpoints)  # a kill or a full disk mid-write left them; never read
        if removed:
            print(f"grpokit: removed unfinished checkpoint writes in {checkpoints}: {', '.join(removed)}.",
                  file=sys.stderr)
    world().barrier()
    resume_from = find_resumable(checkpoints) if config.train.resume else None
    cut_rows, resumed_at = [], None  # on resume: the metrics rows the trackers already have, and from where
    if resume_from is None:
        problem = None if overwrite else run.fresh_start_problem(config.train.resume)
        if problem:
            raise GrpokitError(problem)
        if config.train.resume:
            print(f"grpokit: no checkpoint in {checkpoints} (no step was saved); starting from the beginning.",
                  file=sys.stderr)
        run.start(config)  # removes what an earlier attempt (or the run --overwrite discards) wrote
        world().barrier()
        trainer = Trainer(config, inputs, run)
    else:
        state = json.loads((resume_from / "state.json").read_text(encoding="utf-8"))
        resumed_at = state["step"]
        changes = run.config_on_resume(config, resumed_at, allow_config_change)
        run.check_logs(state["log_offsets"], resume_from)
        if (run.path / "reference").exists():
            check_reference(run.path / "reference")  # before anything in the folder changes
        world().barrier()  # every process has checked before the main one cuts the logs
        cut_rows = run.resume(state["log_offsets"])
        if world().is_main:
            run.record_config_changes(changes, resumed_at, allow_config_change)
            (run.path / "final" / MANIFEST).unlink(missing_ok=True)  # final/ is written again: not finished
        print(f"grpokit: resuming from {resume_from} (step {resumed_at})"
              + "".join(f"; {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
              + (" (recorded in config_changes.jsonl)" if changes else "") + ".", file=sys.stderr)
        trainer = Trainer(config, inputs, run, resume_from=resume_from)
        trainer.summary = {**state["summary"], "steps": config.train.steps,
                           "resumed_at_steps": [*state["summary"].get("resumed_at_steps", []), resumed_at]}
        trainer.wall_before = state["wall_seconds"]
    trainer.started = started
    if world().is_main:
        run.trackers = open_trackers(run.path, config, resumed_at=resumed_at, already_logged=cut_rows)
    summary = trainer.run_job()
    summary["wall_seconds"] = trainer.wall_seconds()
    if world().is_main:
        write_manifest(run.path / "final")  # checksummed like a checkpoint; with summary.json: finished
    run.write_json("summary.json", summary)
    world().barrier()  # every process finishes the job before any returns
    return summary
