"""`grpokit doctor`: a pre-flight check of a config on a few real groups, before a long run.

Most failed GRPO runs fail for reasons visible in the first few groups: a chat template that
already opens `<think>` (so the format reward can never fire), completions cut at
max_new_tokens, a verifier that never agrees with the model's answer format, groups whose
rewards are all equal (no signal), a micro-batch that will not fit. This samples a few groups
with the training settings and shows all of that, ending with warnings and their fixes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from grpokit.advantages import zero_variance_groups
from grpokit.config import Config
from grpokit.envs import make_environments
from grpokit.inputs import prepare_inputs
from grpokit.methods import METHODS
from grpokit.modeling import apply_lora, autocast, load_model
from grpokit.multiturn import MultiTurnSampler
from grpokit.parallel import single_process
from grpokit.rewards import BUILTIN_REWARDS, make_scorer
from grpokit.rewards.builtin import DEFAULT_FORMAT_PATTERN
from grpokit.rewards.scoring import forwarded_fields
from grpokit.run_dir import peak_memory_mb
from grpokit.sampler import LocalSampler, sample
from grpokit.step_log import env_metrics

# Thresholds for warnings; each warning states the number it saw.
MAX_TRUNCATION_RATE = 0.10
MAX_ZERO_VARIANCE_FRACTION = 0.50


@dataclass
class Report:
    prompts: list[dict]  # the first rendered prompts: text and token count
    samples: list[dict]  # completions of the first group with what each reward received and returned
    stats: dict  # truncation, zero-variance fraction, per-component means and whether they vary, ...
    memory: dict  # the estimate's parts and the measured peak of one training micro-batch
    warnings: list[str] = field(default_factory=list)
    conversation: dict | None = None  # multi-turn: the tools offered and one conversation, trained tokens marked


def marked_conversation(rollout, row: int, tokenizer) -> str:
    """Row `row` of a multi-turn rollout as text, the environment's tokens in [[env: ...]]: everything
    outside the brackets is the policy's own and trained on."""
    ids = rollout.tokens.completion_ids_BC[row].tolist()
    policy = rollout.tokens.trained_mask_BC[row].tolist()
    n = int(rollout.tokens.completion_mask_BC[row].sum())
    parts, start = [], 0
    for i in range(1, n + 1):
        if i == n or policy[i] != policy[start]:
            text = tokenizer.decode(ids[start:i], skip_special_tokens=False)
            parts.append(text if policy[start] else f"[[env: {text}]]")
            start = i
    return "".join(parts)


def prefills_think(prompt: str) -> bool:
    """True when the rendered prompt already opens the reasoning block (e.g. Qwen3 / DeepSeek-R1 templates)."""
    return prompt.rstrip().endswith("<think>")


def format_requires_think(components) -> bool:
    """True when a `format` reward's pattern asks the completion itself to contain `<think>`."""
    for c in components:
        if c.fn is BUILTIN_REWARDS["format"]:
            return "<think>" in c.kwargs.get("pattern", DEFAULT_FORMAT_PATTERN)
    return False


def memory_estimate(model, config: Config, prompt_tokens: int, completion_tokens: int) -> dict:
    """Bytes of what training holds, from the model's own sizes. Activations are a rough rule:
    per token and layer about 16 hidden-size vectors kept for backward, plus the logits in float32."""
    c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights = params * 4  # trained parameters stay float32 (grpokit.modeling.load_model)
    gradients_and_adam = trainable * 4 * 3  # gradient + two AdamW moments
    ref_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}[config.model.dtype]
    method = METHODS[config.train.method]
    reference = params * ref_bytes if method.needs_reference(config) and not config.lora.enabled else 0  # LoRA: off
    value_model = params * 4 * 4 if method.trains_value_model else 0  # weights, gradients, AdamW
    tokens = config.optim.micro_batch_size * (prompt_tokens + completion_tokens)
    hidden, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    activation_bytes = 2 if config.model.dtype != "float32" else 4
    activations = tokens * layers * hidden * 16 * activation_bytes
    logits = config.optim.micro_batch_size * completion_tokens * vocab * 4 * 2  # logits and log-softmax
    parts = {"weights": weights, "gradients_and_adamw": gradients_and_adam, "reference": reference,
             "value_model": value_model, "activations_per_micro_batch": activations, "logits_per_micro_batch": logits}
    return {**{k: v / 2**20 for k, v in parts.items()}, "total_mb": sum(parts.values()) / 2**20}


def run_doctor(config: Config, *, num_groups: int = 4, show_prompts: int = 2, show_samples: int = 3) -> Report:
    """Sample `num_groups` groups with the training settings, score them, and diagnose."""
    inputs = prepare_inputs(config)
    s, G = config.sampling, config.sampling.group_size
    prompts = inputs.train_prompts[:num_groups]
    examples = inputs.train[:num_groups]
    tokenizer = inputs.tokenizer
    shown = [{"text": p, "tokens": len(tokenizer(p, add_special_tokens=False)["input_ids"])}
             for p in prompts[:show_prompts]]
    model = load_model(config.model, trainable=True)
    if config.lora.enabled:  # only the adapters train, as in the run
        model = apply_lora(model, config.lora, seed=config.train.seed)
    device = next(model.parameters()).device
    torch.manual_seed(config.train.seed)
    envs = make_environments(config, tokenizer)
    with autocast(config.model, device):
        started = time.perf_counter()
        if envs is None:
            rollout = sample(model, tokenizer, prompts, group_size=G, max_new_tokens=s.max_new_tokens,
                             temperature=s.temperature, engine=s.engine)
        else:  # multi-turn: conversations with the environment, as training samples them
            sampler = MultiTurnSampler(LocalSampler(model, tokenizer, config, single_process()), tokenizer, envs,
                                       config)
            rollout = sampler.sample(prompts, G, rows=[ex.reward_fields() for ex in examples])
            sampler.close()
        sampling_seconds = time.perf_counter() - started
    fields = [ex.reward_fields() for ex in examples for _ in range(G)]
    with make_scorer(config.rewards, timeout=config.verify.timeout, isolate=config.verify.isolate) as scorer:
        scores = scorer.score([p for p in prompts for _ in range(G)], rollout.completions, fields)
    samples = [{"completion": rollout.completions[i],
                # what the reward receives besides completion and prompt (a row's own "completion", e.g.
                # an SFT target, is not forwarded)
                "fields": {k: v for k, v in forwarded_fields(fields[i]).items()
                           if isinstance(v, (str, int, float)) or v is None},
                "rewards": {name: values[i] for name, values in scores.components.items()},
                "total": scores.total[i], "truncated": bool(rollout.truncated_B[i])}
               for i in range(min(show_samples, len(rollout.completions)))]
    totals_NG = torch.tensor(scores.total).view(-1, G)
    varies = {name: len({v for v in values if v is not None}) > 1 for name, values in scores.components.items()}
    means = {name: (sum(v for v in values if v is not None) / max(1, sum(v is not None for v in values)))
             for name, values in scores.components.items()}
    lengths = rollout.completion_lengths_B.float()
    stats = {
        "groups": len(prompts), "group_size": G, "max_new_tokens": s.max_new_tokens,
        "truncation_rate": rollout.truncated_B.float().mean().item(),
        "mean_completion_tokens": lengths.mean().item(),
        "zero_variance_fraction": zero_variance_groups(totals_NG).float().mean().item() if G > 1 else None,
        "reward_means": means, "reward_varies": varies, "reward_error_rate": scores.error_rate(),
        "reward_errors": {k: v for k, v in scores.error_counts.items() if v},
        "prefills_think": prefills_think(prompts[0]), "sampling_seconds": sampling_seconds,
        "answer_tag_rate": sum("<answer>" in c for c in rollout.completions) / len(rollout.completions),
        "never_scored": [name for name, values in scores.components.items() if all(v is None for v in values)],
    }
    memory = memory_estimate(model, config, rollout.tokens.prompt_ids_BP.shape[1],
                             rollout.tokens.completion_ids_BC.shape[1])
    memory["measured_peak_mb"] = _measure_micro_batch(model, rollout, config)
    memory["measured_on"] = device.type
    report = Report(shown, samples, stats, memory)
    if envs is not None:
        # the conversation with the most environment tokens shows the masking best
        row = max(range(len(rollout.env_stats)), key=lambda i: rollout.env_stats[i]["env_tokens"])
        report.conversation = {"offered": envs.describe(), "format": getattr(envs.format, "name", "custom"),
                               "text": marked_conversation(rollout, row, tokenizer), "row": row,
                               "stats": env_metrics(rollout.env_stats)}
    report.warnings = warnings_for(report, config, inputs.components)
    return report


def _measure_micro_batch(model, rollout, config: Config) -> float:
    """Peak memory after one training forward and backward on a micro-batch of these completions."""
    from grpokit.logprobs import token_logprobs

    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = list(range(min(config.optim.micro_batch_size, len(rollout.tokens))))
    batch = rollout.tokens.to(device).select(rows)
    model.train()
    with autocast(config.model, device):
        logp = token_logprobs(model, batch, config.sampling.temperature, config.train.share_prompt_forward)
    (logp * batch.completion_mask_BC).sum().backward()
    model.zero_grad(set_to_none=True)
    return peak_memory_mb(device)


def warnings_for(report: Report, config: Config, components) -> list[str]:
    st, out = report.stats, []
    if st["truncation_rate"] > MAX_TRUNCATION_RATE:
        out.append(f"{st['truncation_rate']:.0%} of completions hit sampling.max_new_tokens={st['max_new_tokens']} "
                   "before ending: they are cut mid-answer and usually score 0. Raise sampling.max_new_tokens, or ask "
                   "for shorter answers in data.system_prompt.")
    zv = st["zero_variance_fraction"]
    if zv is not None and zv > MAX_ZERO_VARIANCE_FRACTION:
        out.append(f"{zv:.0%} of groups have all-equal rewards, which give GRPO no signal. If everything scores 0 the "
                   "task is too hard for the model (add an SFT warm-up, or easier data); if everything scores 1 it is "
                   "too easy. sampling.dynamic=true samples more prompts to fill the batch; a larger "
                   "sampling.group_size makes mixed groups likelier.")
    for name in st["never_scored"]:
        out.append(f"reward '{name}' returned None (not applicable) or failed for every completion: it contributes "
                   "nothing. Check the fields it needs (e.g. an answer column) and its messages in errors.jsonl.")
    for name, varies in st["reward_varies"].items():
        if not varies and name not in st["never_scored"]:
            value = st["reward_means"][name]
            out.append(f"reward '{name}' gave the same value ({value:g}) to every completion: it adds nothing to the "
                       "advantages. Check that it reads the model's actual output format (see the samples above).")
    if st["prefills_think"] and format_requires_think(components):
        out.append("the chat template already opens '<think>' in the prompt, so completions never contain it and the "
                   "format reward's pattern (which starts with <think>) can never match. Give the format reward a "
                   "pattern without the opening tag, e.g. "
                   "{name: format, pattern: '.*?</think>\\s*<answer>.*?</answer>'}.")
    if st["reward_error_rate"] > 0:
        out.append(f"{st['reward_error_rate']:.0%} of reward calls failed ({st['reward_errors']}); run "
                   "`grpokit score` on a few completions to see the messages.")
    if st["answer_tag_rate"] == 0 and any(
            c.fn is BUILTIN_REWARDS["accuracy"] and c.kwargs.get("extract") == "answer_tag" for c in components):
        out.append("accuracy extracts the answer from <answer>…</answer>, but no sampled completion has that tag: "
                   "every answer scores 0. Ask for the tags in data.system_prompt, or use extract: auto.")
    available = _available_memory_mb(config)
    if available is not None and report.memory["total_mb"] > 0.9 * available:
        out.append(f"the memory estimate ({report.memory['total_mb']:.0f} MB) is close to or above what is available "
                   f"({available:.0f} MB): lower optim.micro_batch_size (gradients accumulate to the same update), "
                   "or use model.dtype=bfloat16.")
    return out


def _available_memory_mb(config: Config) -> float | None:
    if torch.cuda.is_available() and config.model.device != "cpu":
        return torch.cuda.get_device_properties(0).total_memory / 2**20
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def format_report(report: Report) -> str:
    lines = ["== prompts, exactly as the model sees them =="]
    for i, p in enumerate(report.prompts):
        lines += [f"[prompt {i}] {p['tokens']} tokens:", repr(p["text"])]
    lines.append("\n== what the rewards receive and return (first group) ==")
    for i, sample_ in enumerate(report.samples):
        rewards = ", ".join(f"{k}={v!r}" for k, v in sample_["rewards"].items())
        lines += [f"[completion {i}]{' (truncated)' if sample_['truncated'] else ''} {sample_['completion']!r}",
                  f"    fields (besides completion and prompt): {sample_['fields']}",
                  f"    rewards: {rewards} -> total {sample_['total']:g}"]
    st = report.stats
    lines += ["\n== statistics ==",
              f"groups sampled: {st['groups']} x {st['group_size']} in {st['sampling_seconds']:.1f} s",
              f"truncated at max_new_tokens={st['max_new_tokens']}: {st['truncation_rate']:.0%}; "
              f"mean completion length {st['mean_completion_tokens']:.1f} tokens",
              "groups with all-equal rewards: "
              + (f"{st['zero_variance_fraction']:.0%}" if st["zero_variance_fraction"] is not None else "n/a (G = 1)"),
              "reward means: " + ", ".join(f"{k} {v:.3f}{'' if st['reward_varies'][k] else ' (never varies)'}"
                                           for k, v in st["reward_means"].items()),
              f"reward call failures: {st['reward_error_rate']:.0%}; completions with <answer>: "
              f"{st['answer_tag_rate']:.0%}",
              f"chat template pre-fills <think>: {'yes' if st['prefills_think'] else 'no'}"]
    if report.conversation is not None:
        conv = report.conversation
        lines += [f"\n== one conversation ({conv['format']} format; trained tokens plain, the environment's "
                  "in [[env: ...]]) ==", f"offered: {conv['offered'] or '(nothing described)'}",
                  f"[completion {conv['row']}] {conv['text']!r}",
                  "multi-turn: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in conv["stats"].items())]
    m = report.memory
    lines += ["\n== memory ==",
              "estimate for one micro-batch step (MB): " + ", ".join(
                  f"{k} {m[k]:.1f}" for k in ("weights", "gradients_and_adamw", "reference", "value_model",
                                              "activations_per_micro_batch", "logits_per_micro_batch"))
              + f"; total {m['total_mb']:.1f}",
              f"measured peak after one training micro-batch ({m['measured_on']}): {m['measured_peak_mb']:.0f} MB"
              + (" (whole process: includes the Python runtime and libraries)" if m["measured_on"] == "cpu" else "")]
    lines.append("\n== warnings ==")
    lines += [f"- {w}" for w in report.warnings] or ["none: the config looks ready to train."]
    return "\n".join(lines)
