"""The one GRPO configuration both tools run, and how each tool spells it.

Every hyperparameter that changes the work or the result is set explicitly on both sides, so a
default that differs between the tools cannot slip in. What could not be matched exactly is listed
in benchmarks/README.md.
"""

from __future__ import annotations

from pathlib import Path

# The embedded demo's GRPO phase (grpokit/tiny/demo.yaml), with the LR warm-up removed: the two
# tools' warm-up formulas differ by one step (HF starts at 0, grpokit at lr/steps).
SETTINGS = {
    "prompts_per_step": 16,
    "group_size": 8,
    "max_new_tokens": 40,
    "temperature": 0.7,
    "lr": 5e-5,
    "beta": 0.04,
    "clip": 0.2,
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
    "adam_betas": (0.9, 0.999),
    "reward_weights": {"accuracy": 1.0, "format": 0.1},
}

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "grpokit" / "tiny" / "demo.yaml"


def grpokit_overrides(model_dir: str, home: Path, steps: int, eval_every: int, seed: int, out_dir: str,
                      settings: dict | None = None) -> list[str]:
    """`grpokit train DEMO_CONFIG <overrides>` runs exactly SETTINGS (or `settings`, a dict with the same
    keys: benchmarks/real_vs_trl.py) from `model_dir`."""
    s = settings or SETTINGS
    return [
        f"model.path={model_dir}",
        f"data.train={home / 'data' / 'train.jsonl'}", f"data.eval={home / 'data' / 'eval.jsonl'}",
        "train.method=grpo", f"train.steps={steps}", f"train.seed={seed}", f"train.out_dir={out_dir}",
        "train.progress=false", "train.save_every=0", "warmup.steps=0", f"eval.every={eval_every}",
        f"sampling.prompts_per_step={s['prompts_per_step']}", f"sampling.group_size={s['group_size']}",
        f"sampling.max_new_tokens={s['max_new_tokens']}", f"sampling.temperature={s['temperature']}",
        f"optim.lr={s['lr']}", "optim.warmup_steps=0", "optim.schedule=constant",
        f"optim.max_grad_norm={s['max_grad_norm']}", f"optim.weight_decay={s['weight_decay']}",
        f"optim.adam_beta1={s['adam_betas'][0]}", f"optim.adam_beta2={s['adam_betas'][1]}",
        # the whole batch in one micro-batch, as TRL below (per_device_train_batch_size = 128)
        f"optim.micro_batch_size={s['prompts_per_step'] * s['group_size']}",
        f"grpo.beta={s['beta']}", f"grpo.clip_low={s['clip']}", f"grpo.clip_high={s['clip']}",
        "grpo.aggregation=token", "grpo.scale_by_std=true", "grpo.num_iterations=1",
    ]


def trl_arguments(steps: int, seed: int, out_dir: str, settings: dict | None = None) -> dict:
    """Keyword arguments of trl.GRPOConfig for the same run (SETTINGS, or `settings`)."""
    s = settings or SETTINGS
    batch = s["prompts_per_step"] * s["group_size"]
    return dict(
        output_dir=out_dir, max_steps=steps, seed=seed, data_seed=seed,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=s["group_size"], max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"], top_p=1.0, top_k=0, repetition_penalty=1.0,
        learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        max_grad_norm=s["max_grad_norm"], weight_decay=s["weight_decay"],
        adam_beta1=s["adam_betas"][0], adam_beta2=s["adam_betas"][1],
        beta=s["beta"], epsilon=s["clip"], epsilon_high=s["clip"], num_iterations=1,
        # "dapo": token losses summed over the batch and divided by its token count = grpokit's "token"
        loss_type="dapo", scale_rewards="group", mask_truncated_completions=False,
        reward_weights=list(s["reward_weights"].values()),
        use_cpu=True, bf16=False, fp16=False, disable_dropout=True,
        logging_steps=10, report_to="none", save_strategy="no", log_completions=False,
        dataloader_num_workers=0, remove_unused_columns=False,
    )
