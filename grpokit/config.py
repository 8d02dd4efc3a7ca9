"""Configuration: dataclasses are the single source of truth.

A YAML file (loaded safely) and `section.key=value` overrides fill them. Every field carries
its help text in `metadata["help"]`, which `grpokit config` prints. Unknown keys and wrong
types are errors that name the key and suggest the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from grpokit.errors import GrpokitError


def option(default, help: str):
    """A dataclass field with its documentation attached."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    path: str = option("", "Local Hugging Face model folder, a .gguf file (converted once into a cached "
                                 "folder, see grpokit convert-gguf), or a hub name where a network exists.")
    dtype: str = option("float32", "Compute dtype: float32 or bfloat16 (mixed precision: trained parameters stay "
                                   "float32). float16 only for eval (training would need loss scaling).")
    device: str = option("auto", "auto (cuda if available, else cpu), cpu, or cuda[:N].")
    trust_remote_code: bool = option(False, "Allow model code from the model folder to run. Off unless you trust it.")


@dataclass
class DataConfig:
    train: str = option("", "Training prompts: .jsonl/.json/.parquet/.csv file, saved datasets folder, or hub name.")
    eval: str = option("", "Held-out prompts for evaluation (same formats); empty for none.")
    train_split: str | None = option(None, "Split to read from a DatasetDict folder or hub dataset (default train).")
    eval_split: str | None = option(None, "Split for the eval source (default train for folders, as stored).")
    prompt_field: str = option("prompt", "Column holding the prompt (a string or a list of chat messages).")
    answer_field: str = option("answer", "Column holding the ground-truth answer.")
    dataset_format: str = option("auto", "auto (grpokit/TRL columns) or gsm8k (question / answer ending in '#### N').")
    system_prompt: str | None = option(None, "System message added to chat-template prompts that have none.")
    prompt_template: str | None = option(None, "Python format string with {prompt}, used instead of the chat template.")
    max_train_examples: int | None = option(None, "Keep only the first N training rows.")
    max_eval_examples: int | None = option(None, "Keep only the first N eval rows.")
    max_prompt_tokens: int | None = option(None, "Drop rows whose rendered prompt is longer than this many tokens "
                                                 "(counted and reported; none left is an error).")


@dataclass
class SamplingConfig:
    prompts_per_step: int = option(16, "Prompts per step of an online method; the batch is prompts_per_step x "
                                       "group_size completions.")
    group_size: int = option(8, "G: completions sampled per prompt.")
    max_new_tokens: int = option(64, "Longest completion; longer ones are cut and counted as truncated.")
    temperature: float = option(1.0, "Sampling temperature (> 0); the trainer's log-probs use the same value.")
    dynamic: bool = option(False, "DAPO dynamic sampling: groups whose rewards are all equal are dropped and "
                                  "groups for more prompts are sampled until prompts_per_step groups differ "
                                  "(or sampling.max_rounds rounds have run). Costs extra sampling; logged per step.")
    max_rounds: int = option(3, "With sampling.dynamic: at most this many sampling rounds per step.")
    dynamic_filter: str = option("total", "With sampling.dynamic, what must differ within a group for it to count "
                                          "as signal: total (the weighted reward the advantages are computed "
                                          "from: any group with a nonzero GRPO gradient) or pass (the "
                                          "online.pass_reward verdict, DAPO's accuracy filter: a group that "
                                          "differs only in format reward is dropped).")
    engine: str = option("grpokit", "Sampler: grpokit (KV-cached loop, each prompt encoded once per group; models "
                                    "with sliding-window or linear-attention caches fall back to generate), "
                                    "transformers (model.generate), or vllm (needs a GPU and grpokit[vllm]; "
                                    "see the vllm section).")


@dataclass
class GRPOConfig:
    baseline: str = option("mean", "Advantage baseline: mean (GRPO) or leave_one_out. Method rloo always uses "
                                   "leave_one_out without std scaling.")
    scale_by_std: bool = option(True, "Divide advantages by the group std (GRPO); false for Dr. GRPO.")
    std_eps: float = option(1e-4, "Epsilon added to the group std.")
    beta: float = option(0.0, "Weight of the KL to the reference model; the reference is loaded only if > 0.")
    kl_estimator: str = option("k3", "Per-token KL estimator: k3 = exp(ref - logp) - (ref - logp) - 1 (GRPO, TRL; "
                                     "its value estimates KL(pi||ref) but its gradient is that of KL(ref||pi)) or "
                                     "k2 = (logp - ref)^2 / 2 (its gradient is that of KL(pi||ref)).")
    clip_low: float = option(0.2, "Lower clip range: ratio >= 1 - clip_low.")
    clip_high: float = option(0.2, "Upper clip range: ratio <= 1 + clip_high (0.28 for DAPO clip-higher).")
    aggregation: str = option("token", "Token loss averaging: sequence (GRPO), token (DAPO), constant (Dr. GRPO).")
    num_iterations: int = option(1, "Updates per rollout; > 1 reuses the stored old log-probs for the ratio.")
    skip_zero_advantage: bool = option(True, "With beta = 0, skip the forward/backward of completions whose "
                                             "advantage is exactly 0 (same update, less compute).")


@dataclass
class EnvConfig:
    name: str | None = option(None, "Multi-turn rollouts: 'tools' (the built-in tool environment), or your "
                                    "environment class as file.py:Class or package.module:Class. null: one "
                                    "completion per prompt.")
    tools: list = option(["calculator"], "With name: tools, the tools the model may call: built-in names "
                                         "(calculator; python, run in the sandbox) or functions as "
                                         "file.py:function / package.module:function.")
    format: str = option("auto", "Tool-call format: tags (<tool>...</tool>, answered by <result>...</result>), "
                                 "chat_template (the tokenizer's own tool-call template), or auto (chat_template "
                                 "where the tokenizer has one, else tags).")
    max_turns: int = option(4, "Most policy turns per rollout; a rollout still calling tools after them is "
                               "truncated and counted.")
    max_tokens: int = option(256, "Token budget of a whole rollout after the prompt (policy and environment "
                                  "tokens); each policy turn is also capped at sampling.max_new_tokens.")
    tool_timeout: float = option(5.0, "Seconds one tool call may run (in a worker process, killed after).")
    max_result_chars: int = option(200, "Longer tool results are cut to this many characters (and counted).")
    on_tool_error: str = option("reply", "A tool that raises, times out or returns a non-string: reply (the "
                                         "error goes back to the model as the tool's result) or end (the "
                                         "rollout ends there). Either way it is counted.")


@dataclass
class GSPOConfig:
    clip_low: float = option(3e-4, "Sequence-ratio clip: s >= 1 - clip_low (the paper's 3e-4: s is a per-token "
                                   "geometric mean, so it stays very close to 1).")
    clip_high: float = option(4e-4, "Sequence-ratio clip: s <= 1 + clip_high (the paper's 4e-4).")
    level: str = option("sequence", "sequence (GSPO) or sequence_token (GSPO-token: same value and, with one "
                                    "advantage per sequence, same gradient).")
    aggregation: str = option("sequence", "Loss averaging: sequence (the paper's 1/G sum over sequences), token "
                                          "or constant.")


@dataclass
class CISPOConfig:
    clip_low: float | None = option(None, "IS weight >= 1 - clip_low; null: no lower bound (MiniMax-M1, TRL).")
    clip_high: float = option(4.0, "IS weight <= 1 + clip_high (4.0: a cap of 5, TRL's recommended "
                                   "epsilon_high).")


@dataclass
class OnlineConfig:
    pass_reward: str = option("accuracy", "Reward component (its alias if it has one, or a built-in's name) that "
                                          "decides whether a sampled "
                                          "completion passed verification (rft, online_dpo, online_orpo, "
                                          "evaluation); 'total' uses the weighted sum, 'env' a multi-turn "
                                          "environment's own reward.")
    pass_threshold: float = option(1.0, "A completion passes when that reward is at least this.")
    pair_rule: str = option("random", "How online_dpo/online_orpo pair a passing with a failing completion of the "
                                      "same prompt: random (uniform, distinct texts) or reward_gap (highest-reward "
                                      "passing with lowest-reward failing).")
    pairs_per_prompt: int = option(1, "Most pairs built from one prompt's group (each completion used once).")


@dataclass
class OfflineConfig:
    batch_size: int = option(16, "Rows (completions or pairs) per optimiser step of sft, dpo, orpo.")
    completion_field: str = option("completion", "Column with the target completion for sft (a messages row's "
                                                 "final assistant message lands here).")
    chosen_field: str = option("chosen", "Column holding the preferred completion (dpo, orpo).")
    rejected_field: str = option("rejected", "Column holding the dispreferred completion (dpo, orpo).")


@dataclass
class DPOConfig:
    beta: float = option(0.1, "DPO temperature beta (dpo, online_dpo): how far from the reference the policy may "
                              "move.")


@dataclass
class ORPOConfig:
    lam: float = option(0.1, "ORPO lambda (orpo, online_orpo): weight of the odds-ratio term next to the NLL.")


@dataclass
class PPOConfig:
    clip: float = option(0.2, "Policy ratio clip range epsilon.")
    value_clip: float = option(0.2, "Value clip range: V may move at most this far from V_old per rollout.")
    gamma: float = option(1.0, "GAE discount (1: the verified reward at the end counts fully for every token).")
    lam: float = option(0.95, "GAE lambda.")
    kl_coef: float = option(0.05, "Per-token KL penalty to the reference folded into the reward (0: no reference).")
    value_lr: float = option(1e-3, "AdamW learning rate of the value model.")
    epochs: int = option(1, "Optimiser steps per rollout for policy and value model (each on the whole batch).")
    whiten_advantages: bool = option(True, "Normalise advantages to mean 0, std 1 over the batch's tokens.")


@dataclass
class OptimConfig:
    lr: float = option(1e-5, "AdamW peak learning rate.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.999, "AdamW beta2.")
    warmup_steps: int = option(0, "Linear learning-rate warm-up steps.")
    schedule: str = option("constant", "Learning-rate schedule after warm-up: constant, linear or cosine.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables).")
    micro_batch_size: int = option(64, "Sequences per forward/backward pass; gradients accumulate up to the batch.")


@dataclass
class WarmupConfig:
    steps: int = option(0, "SFT warm-up steps on the training rows' reference completions before the method runs.")
    batch_size: int = option(32, "Rows per SFT warm-up step.")
    lr: float = option(1e-3, "SFT warm-up peak learning rate (AdamW).")
    schedule: str = option("cosine", "SFT warm-up learning-rate schedule: constant, linear or cosine (decays to 0, "
                                     "so the warm-up ends in a settled state rather than mid-oscillation).")
    completion_field: str = option("completion", "Column holding the reference completion for the warm-up.")


@dataclass
class VLLMConfig:
    mode: str = option("colocate", "colocate: a vLLM engine inside each training process, on its GPU; server: a "
                                   "separate `vllm serve` reached at vllm.server_url (TRL's VLLMClient).")
    gpu_memory_utilization: float = option(0.3, "colocate: share of the GPU's memory vLLM may take (weights and "
                                                "KV cache); the rest is the trainer's.")
    max_model_len: int | None = option(None, "colocate: vLLM's context length (default: the model's).")
    enable_sleep_mode: bool = option(False, "colocate: free vLLM's weights and KV cache while the trainer "
                                            "updates (slower steps, lower peak memory).")
    server_url: str = option("http://localhost:8000", "server: the vLLM server.")
    server_timeout: float = option(240.0, "server: seconds to wait for the server to come up.")
    importance_correction: str = option(
        "token_truncate", "Correct for vLLM's sampling distribution differing from the trainer's (kernels, "
                          "precision): truncated importance sampling (Yao et al. 2025). none, token_truncate, "
                          "token_mask, sequence_truncate or sequence_mask (grpokit.losses.sampler_importance_weights).")
    importance_cap: float = option(2.0, "C: importance weights above it are truncated to it (or masked).")


@dataclass
class LoRAConfig:
    enabled: bool = option(False, "Train LoRA adapters (peft) instead of every weight. The KL reference is the "
                                  "same model with its adapters switched off: no second copy in memory.")
    r: int = option(16, "LoRA rank.")
    alpha: float = option(32.0, "LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = option(0.0, "Dropout on the adapters' input.")
    target_modules: str = option("all-linear", "Modules that get adapters: all-linear, or comma-separated names "
                                               "such as q_proj,v_proj.")
    save: str = option("merged", "The final model folder: merged (adapters folded into a full model that "
                                 "from_pretrained loads) or adapter (adapter weights only, for peft).")


@dataclass
class EvalConfig:
    every: int = option(0, "Evaluate on the eval set every N steps (0: only before and after).")
    max_new_tokens: int | None = option(None, "Longest eval completion (default: sampling.max_new_tokens).")
    batch_size: int = option(128, "Prompts per generation batch during evaluation.")


@dataclass
class VerifyConfig:
    timeout: float = option(5.0, "Wall-clock limit in seconds for one reward call; a slower call scores None.")
    isolate: bool = option(True, "Run reward functions in a worker process that is killed on timeout or crash.")
    max_error_rate: float = option(0.5, "Stop the run when a reward component fails (error, timeout, NaN) on more "
                                        "than this fraction of a step's samples.")


@dataclass
class TrainConfig:
    method: str = option("grpo", "Update rule. Online (sample and verify each step): grpo, rloo, rft, online_dpo, "
                                 "online_orpo, ppo. Offline (fixed data): sft, dpo, orpo.")
    steps: int = option(100, "Optimisation steps of the method.")
    seed: int = option(0, "Seed for python, numpy and torch.")
    out_dir: str = option("runs/latest", "Run folder: config, metrics, rollouts, checkpoints, plots, summary.")
    save_every: int = option(0, "Save a resumable checkpoint every N steps (0: only the final model).")
    keep_checkpoints: int = option(3, "Keep the newest N checkpoints; older ones are deleted (0 keeps all).")
    resume: bool = option(False, "Continue from the newest complete checkpoint in out_dir (same config).")
    max_consecutive_skips: int = option(3, "Stop after this many optimiser steps in a row skipped for a "
                                           "non-finite loss or gradient norm.")
    log_rollouts: bool = option(True, "Write every sampled completion with its rewards to rollouts.jsonl.")
    progress: bool = option(True, "Show a progress bar.")
    threads: int | None = option(None, "torch CPU threads (default: torch's choice).")
    report_to: str = option("none", "Experiment trackers that receive every metric besides metrics.jsonl: none, or "
                                    "a comma-separated list of tensorboard, wandb (WANDB_MODE=offline works "
                                    "without network).")
    wandb_project: str = option("grpokit", "W&B project of train.report_to=wandb.")
    share_prompt_forward: bool = option(True, "Training forward passes run each distinct prompt of a micro-batch "
                                              "once (a GRPO group, a DPO pair) and let its completions read it "
                                              "from the KV cache: same log-probs and gradients, less compute.")
    fsdp: bool = option(False, "With several processes (torchrun), shard weights, gradients and optimiser state "
                               "across them (FSDP2; grpo and rloo). `accelerate launch` with an FSDP config "
                               "turns it on too.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "The policy model."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Prompts and ground truth."})
    rewards: list = option(
        ["accuracy", "format"],
        "Reward components: names (accuracy, format), dotted paths or file.py:function, or "
        "{name, weight, alias, ...keyword arguments} mappings.",
    )
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "Sampling."})
    grpo: GRPOConfig = field(default_factory=GRPOConfig, metadata={"help": "GRPO update rule."})
    env: EnvConfig = field(default_factory=EnvConfig, metadata={
        "help": "Multi-turn rollouts: an environment (tools) answers the policy's turns."})
    gspo: GSPOConfig = field(default_factory=GSPOConfig, metadata={
        "help": "GSPO: sequence-level ratio and clip (advantages, KL and num_iterations from grpo)."})
    cispo: CISPOConfig = field(default_factory=CISPOConfig, metadata={
        "help": "CISPO: clipped, detached IS weight (advantages, KL, aggregation and num_iterations from grpo)."})
    online: OnlineConfig = field(default_factory=OnlineConfig,
                                 metadata={"help": "Verified groups -> SFT targets or preference pairs."})
    offline: OfflineConfig = field(default_factory=OfflineConfig, metadata={"help": "Offline methods' data."})
    dpo: DPOConfig = field(default_factory=DPOConfig, metadata={"help": "DPO loss (dpo, online_dpo)."})
    orpo: ORPOConfig = field(default_factory=ORPOConfig, metadata={"help": "ORPO loss (orpo, online_orpo)."})
    ppo: PPOConfig = field(default_factory=PPOConfig, metadata={"help": "PPO with a value model."})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "Optimiser."})
    warmup: WarmupConfig = field(default_factory=WarmupConfig, metadata={"help": "SFT warm-up."})
    verify: VerifyConfig = field(default_factory=VerifyConfig, metadata={"help": "How rewards are run."})
    lora: LoRAConfig = field(default_factory=LoRAConfig, metadata={"help": "LoRA adapters (peft)."})
    vllm: VLLMConfig = field(default_factory=VLLMConfig,
                             metadata={"help": "vLLM sampling (sampling.engine: vllm; pip install 'grpokit[vllm]')."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Held-out evaluation."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training loop."})


CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.dataset_format": ("auto", "gsm8k"),
    "grpo.baseline": ("mean", "leave_one_out"),
    "grpo.aggregation": ("sequence", "token", "constant"),
    "grpo.kl_estimator": ("k3", "k2"),
    "gspo.level": ("sequence", "sequence_token"),
    "gspo.aggregation": ("sequence", "token", "constant"),
    "sampling.dynamic_filter": ("total", "pass"),
    "env.format": ("auto", "tags", "chat_template"),
    "env.on_tool_error": ("reply", "end"),
    "sampling.engine": ("grpokit", "transformers", "vllm"),
    "vllm.mode": ("colocate", "server"),
    "vllm.importance_correction": ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
    "lora.save": ("merged", "adapter"),
    "optim.schedule": ("constant", "linear", "cosine"),
    "warmup.schedule": ("constant", "linear", "cosine"),
    "online.pair_rule": ("random", "reward_gap"),
    "train.method": ("grpo", "rloo", "gspo", "cispo", "rft", "online_dpo", "online_orpo", "ppo", "sft", "dpo",
                     "orpo"),
}
POSITIVE = ("train.max_consecutive_skips",
            "sampling.group_size", "sampling.max_new_tokens", "sampling.prompts_per_step", "grpo.num_iterations",
            "sampling.max_rounds", "lora.r",
            "optim.micro_batch_size", "offline.batch_size", "online.pairs_per_prompt", "ppo.epochs",
            "warmup.batch_size", "eval.batch_size", "train.steps")


# ---------------------------------------------------------------------------- walking the tree

def all_keys(cls=Config, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every leaf key as a dotted name -> its field."""
    keys = {}
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else _resolve(cls, f)):
            keys.update(all_keys(_resolve(cls, f), name + "."))
        else:
            keys[name] = f
    return keys


def _resolve(cls, f: dataclasses.Field):
    return typing.get_type_hints(cls)[f.name]


def _unknown_key(key: str, where: str) -> GrpokitError:
    keys = list(all_keys())
    close = difflib.get_close_matches(key, keys, n=1)
    if not close:  # 'betaa=1' -> compare with leaf names, suggest the full dotted key
        by_leaf = {k.split(".")[-1]: k for k in keys}
        close = [by_leaf[m] for m in difflib.get_close_matches(key.split(".")[-1], list(by_leaf), n=1)]
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return GrpokitError(f"{where}: unknown config key '{key}'.{hint} Run `grpokit config` to list every key.")


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check_type(key: str, value, hint, where: str):
    """Return value converted to the field's type, or raise naming the key and both types."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is float and isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "5e-4" (no dot) as a string
        if t is str and isinstance(value, str):
            return value
        if typing.get_origin(t) is list or t is list:
            if isinstance(value, list):
                return value
    expected = " or ".join("null" if t is type(None) else getattr(t, "__name__", str(t)) for t in allowed)
    raise GrpokitError(f"{where}: config key '{key}' expects {expected}, found {type(value).__name__} {value!r}.")


def _fill(obj, data: dict, prefix: str, where: str) -> None:
    if not isinstance(data, dict):
        raise GrpokitError(f"{where}: config section '{prefix.rstrip('.') or '<top>'}' must be a mapping, "
                           f"found {type(data).__name__}.")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = prefix + str(key)
        if key not in names:
            raise _unknown_key(dotted, where)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value, dotted + ".", where)
        else:
            setattr(obj, key, _check_type(dotted, value, hints[key], where))


def _validate(config: Config) -> None:
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise GrpokitError(f"config key '{key}' is {value!r}; expected one of {', '.join(choices)}.")
    for key in POSITIVE:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value < 1:
            raise GrpokitError(f"config key '{key}' is {value!r}; expected an integer of at least 1.")
    # Every other number the run reads, with its allowed range, checked here: before any model loads.
    # Optional keys (None) are skipped; a float must also be finite (.nan and .inf are refused).
    ranges = (("optim.lr", lambda v: v > 0, "a positive number"),
              ("optim.weight_decay", lambda v: v >= 0, "a number >= 0"),
              ("optim.adam_beta1", lambda v: 0 <= v < 1, "a number in [0, 1)"),
              ("optim.adam_beta2", lambda v: 0 <= v < 1, "a number in [0, 1)"),
              ("optim.max_grad_norm", lambda v: v >= 0, "a number >= 0 (0 disables clipping)"),
              ("optim.warmup_steps", lambda v: v >= 0, "an integer >= 0"),
              ("warmup.steps", lambda v: v >= 0, "an integer >= 0"),
              ("warmup.lr", lambda v: v > 0 or (v == 0 and config.warmup.steps == 0),
               "a positive number (warmup.steps is above 0)" if config.warmup.steps else "a number >= 0"),
              ("train.seed", lambda v: 0 <= v < 2**31, "an integer in [0, 2**31)"),
              ("train.threads", lambda v: v >= 0, "an integer >= 0 (0 or null: torch's choice)"),
              ("train.save_every", lambda v: v >= 0, "an integer >= 0 (0: no checkpoints)"),
              ("train.keep_checkpoints", lambda v: v >= 0, "an integer >= 0 (0 keeps all)"),
              ("eval.every", lambda v: v >= 0, "an integer >= 0 (0: only before and after)"),
              ("eval.max_new_tokens", lambda v: v >= 1, "an integer of at least 1, or null"),
              ("verify.timeout", lambda v: v > 0, "a positive number of seconds"),
              ("data.max_train_examples", lambda v: v >= 1, "an integer of at least 1, or null for all rows"),
              ("data.max_eval_examples", lambda v: v >= 1, "an integer of at least 1, or null for all rows"),
              ("data.max_prompt_tokens", lambda v: v >= 1, "an integer of at least 1, or null for no limit"),
              ("grpo.std_eps", lambda v: v >= 0, "a number >= 0"),
              ("lora.alpha", lambda v: v > 0, "a positive number"),
              ("lora.dropout", lambda v: 0 <= v < 1, "a number in [0, 1)"),
              ("vllm.server_timeout", lambda v: v > 0, "a positive number of seconds"),
              ("vllm.max_model_len", lambda v: v >= 1, "an integer of at least 1, or null"))
    for key, allowed, expected in ranges:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and ((isinstance(value, float) and not math.isfinite(value)) or not allowed(value)):
            raise GrpokitError(f"config key '{key}' is {value!r}; expected {expected}.")
    if not config.sampling.temperature > 0 or not math.isfinite(config.sampling.temperature):
        raise GrpokitError("config key 'sampling.temperature' must be a positive number for training.")
    trackers_requested(config.train.report_to)
    if config.sampling.dynamic and config.sampling.group_size < 2:
        raise GrpokitError("sampling.dynamic keeps groups whose rewards differ: it needs sampling.group_size >= 2.")
    if not 0.0 <= config.verify.max_error_rate <= 1.0:
        raise GrpokitError("config key 'verify.max_error_rate' must be between 0 and 1.")
    for key in ("grpo.beta", "grpo.clip_low", "grpo.clip_high", "dpo.beta", "orpo.lam", "ppo.clip", "ppo.value_clip",
                "ppo.kl_coef", "ppo.value_lr", "gspo.clip_low", "gspo.clip_high", "cispo.clip_low", "cispo.clip_high"):
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise GrpokitError(f"config key '{key}' is {value!r}; expected a number >= 0.")
    if not (0.0 <= config.ppo.gamma <= 1.0 and 0.0 <= config.ppo.lam <= 1.0):
        raise GrpokitError("config keys 'ppo.gamma' and 'ppo.lam' must be between 0 and 1.")
    if not isinstance(config.rewards, list) or not config.rewards:
        raise GrpokitError("config key 'rewards' must be a non-empty list of reward components.")
    if not config.vllm.importance_cap >= 1.0:
        raise GrpokitError("config key 'vllm.importance_cap' must be at least 1 (weights are capped at it).")
    if not 0.0 < config.vllm.gpu_memory_utilization < 1.0:
        raise GrpokitError("config key 'vllm.gpu_memory_utilization' must be between 0 and 1 (a share of the GPU).")


# ---------------------------------------------------------------------------- public API

def parse_override(text: str) -> tuple[str, object]:
    """'grpo.beta=0.04' -> ('grpo.beta', 0.04). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise GrpokitError(f"override '{text}' is not of the form key=value (e.g. grpo.beta=0.04).")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise GrpokitError(f"override '{text}': the value is not valid YAML ({e}).") from None
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Build a Config from defaults, then `base` (a dict), then a YAML file, then overrides."""
    config = Config()
    if base:
        _fill(config, base, "", "built-in defaults")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise GrpokitError(f"config file '{path}' does not exist (looked in {Path.cwd()}).")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            # safe_load also rejects !!python/object tags: config files cannot run code.
            raise GrpokitError(f"config file '{path}' is not valid YAML: {e}") from None
        _fill(config, data, "", f"config file '{path}'")
    for text in overrides:
        key, value = parse_override(text)
        nested: dict = {}
        cursor = nested
        parts = key.split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        _fill(config, nested, "", f"override '{text}'")
    _validate(config)
    return config


TRACKERS = ("tensorboard", "wandb")


def trackers_requested(report_to: str) -> list[str]:
    """The trackers named in train.report_to ("none", or a comma-separated list)."""
    names = [n.strip() for n in str(report_to).split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise GrpokitError(f"config key 'train.report_to' names {', '.join(unknown)}; expected none or a "
                           f"comma-separated list of {', '.join(TRACKERS)}.")
    return names


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")


def describe() -> str:
    """Every key with its default and help text (what `grpokit config` prints)."""
    lines = []
    defaults = to_dict(Config())
    for key, f in all_keys().items():
        value = defaults
        for part in key.split("."):
            value = value[part]
        lines.append(f"{key} = {value!r}\n    {f.metadata.get('help', '')}")
    return "\n".join(lines)
