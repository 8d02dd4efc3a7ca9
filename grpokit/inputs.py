"""Everything checked before a model loads: the method's own rules, rewards, data rows, and the
prompts rendered exactly as the model will see them. A mistake in any of them fails here, fast,
with a message naming the key, file or row.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from grpokit.config import Config
from grpokit.data import Example, check_pairs, load_examples, render_prompt
from grpokit.envs import check_environment
from grpokit.errors import GrpokitError
from grpokit.methods import method_class
from grpokit.modeling import load_tokenizer
from grpokit.rewards import RewardComponent, build_reward_components
from grpokit.rewards.passing import check_pass_reward


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
    warnings: list[str]  # what may still run but is likely a mistake (printed once by report_inputs)


def render_and_filter(examples: list[Example], tokenizer, config: Config, split: str,
                      tools: list[dict] | None = None) -> tuple[list[Example], list[str], int]:
    """Render every prompt (template errors surface here, before the model) and drop prompts
    longer than data.max_prompt_tokens; an empty result is an error naming the filter."""
    d = config.data
    prompts = [render_prompt(ex.prompt, tokenizer, system_prompt=d.system_prompt, prompt_template=d.prompt_template,
                             tools=tools) for ex in examples]
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


def prepare_inputs(config: Config) -> Inputs:
    """Validate rewards and data; raises GrpokitError naming the problem. Loads no model."""
    if config.model.dtype == "float16":
        raise GrpokitError("model.dtype float16 is not supported for training (it would need loss scaling); "
                           "use bfloat16, or float16 only with `grpokit eval`.")
    method = method_class(config)
    components = build_reward_components(config.rewards)
    d, o = config.data, config.offline
    filters_on_pass = method.online and config.sampling.dynamic and config.sampling.dynamic_filter == "pass"
    if method.trains_on_passed or filters_on_pass:  # the others only report "passed"
        check_pass_reward(config.online.pass_reward, components, env=bool(config.env.name))
    if not d.train:
        raise GrpokitError("no training data given: set data.train (a .jsonl/.parquet/.csv file or a folder).")
    # What each method needs of a training row: online methods verify answers against ground
    # truth; offline ones learn from given completions or pairs.
    train = load_examples(d.train, split=d.train_split, prompt_field=d.prompt_field, answer_field=d.answer_field,
                          dataset_format=d.dataset_format, max_examples=d.max_train_examples,
                          require_answer=method.online)
    if method.offline_rows == "pairs":
        check_pairs(train, o.chosen_field, o.rejected_field)
    eval_ = []
    if d.eval:
        eval_ = load_examples(d.eval, split=d.eval_split, prompt_field=d.prompt_field,
                              answer_field=d.answer_field, dataset_format=d.dataset_format,
                              max_examples=d.max_eval_examples)
    targets = [("warmup.completion_field", config.warmup.completion_field, "the SFT warm-up")] \
        if config.warmup.steps > 0 else []
    if method.offline_rows == "completion":
        targets.append(("offline.completion_field", o.completion_field, config.train.method))
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
    tools = check_environment(config, tokenizer)  # the tools a chat template shows, if it does
    train, train_prompts, dropped_train = render_and_filter(train, tokenizer, config, "training", tools)
    eval_, eval_prompts, dropped_eval = render_and_filter(eval_, tokenizer, config, "eval", tools)
    warnings = check_positions(config, tokenizer, [(train, train_prompts, "training", method.online),
                                                   (eval_, eval_prompts, "eval", True)])
    return Inputs(components, train, eval_, tokenizer, train_prompts, eval_prompts,
                  {"train": dropped_train, "eval": dropped_eval}, warnings)


def model_positions(config: Config) -> int | None:
    """How many positions the model was built for (its config's max_position_embeddings or n_positions),
    read from its config file without loading weights; None when the config does not say."""
    from transformers import AutoConfig

    from grpokit.modeling import model_folder

    try:
        model_config = AutoConfig.from_pretrained(model_folder(config.model.path),
                                                  trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError):
        return None  # the model load names the problem
    model_config = getattr(model_config, "text_config", None) or model_config
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(model_config, key, None), int):
            return getattr(model_config, key)
    return None


def check_positions(config: Config, tokenizer, splits: list[tuple[list[Example], list[str], str, bool]]) -> list[str]:
    """A prompt longer than the model's positions is an error naming its row and the fix; a prompt
    plus the tokens generated after it (sampling.max_new_tokens, a conversation's env.max_tokens,
    eval.max_new_tokens) beyond them is a warning: rotary models run on, past what they were trained
    for, and models with learned positions fail mid-generation."""
    positions = model_positions(config)
    if positions is None:
        return []
    s, e = config.sampling, config.env
    warnings = []
    for examples, prompts, split, generates in splits:
        if not prompts:
            continue
        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] > positions:
            raise GrpokitError(
                f"{examples[longest].source}: this {split} prompt is {lengths[longest]} tokens, longer than the "
                f"{positions} positions of {config.model.path}; {sum(n > positions for n in lengths)} {split} "
                f"prompts are. Set data.max_prompt_tokens (e.g. {positions // 2}) to drop them, or shorten them.")
        if not generates:
            continue
        new_key, new = (("env.max_tokens", e.max_tokens) if e.name else
                        ("eval.max_new_tokens", config.eval.max_new_tokens or s.max_new_tokens) if split == "eval"
                        else ("sampling.max_new_tokens", s.max_new_tokens))
        over = sum(n + new > positions for n in lengths)
        if over:
            room = positions - lengths[longest]  # new tokens that fit after the longest prompt
            fixes = [f"{new_key}={room}"] if room >= 1 else []
            if positions - new >= min(lengths):
                fixes.append(f"data.max_prompt_tokens={positions - new} (drops those {over} prompts)")
            warnings.append(
                f"{over} {split} prompts plus {new_key}={new} reach past the model's {positions} positions (longest "
                f"prompt {lengths[longest]} tokens: {examples[longest].source}); tokens there are beyond what the "
                f"model was trained for. " + (f"Set {' or '.join(fixes)}." if fixes else "Shorten the prompts."))
    return warnings


def check_world(config: Config, w) -> None:
    """With several processes, a step's prompts (or rows) must split evenly over them."""
    if w.size == 1:
        return
    c = config
    batch = ("sampling.prompts_per_step", c.sampling.prompts_per_step) if method_class(c).online \
        else ("offline.batch_size", c.offline.batch_size)
    for key, value in (batch, ("warmup.batch_size", c.warmup.batch_size if c.warmup.steps else w.size)):
        if value % w.size:
            raise GrpokitError(f"config key '{key}' is {value}, which does not split evenly over {w.size} processes; "
                               f"use a multiple of {w.size}.")


def report_inputs(inputs: Inputs, config: Config) -> None:
    """On stderr: rows dropped by data.max_prompt_tokens, and the warnings."""
    for warning in inputs.warnings:
        print(f"grpokit: warning: {warning}", file=sys.stderr)
    for split, count in inputs.dropped.items():
        if count:
            print(f"grpokit: dropped {count} {split} rows whose prompt is longer than data.max_prompt_tokens="
                  f"{config.data.max_prompt_tokens}.", file=sys.stderr)
