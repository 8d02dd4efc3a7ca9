"""Held-out evaluation: greedy accuracy and format rate, and pass@k / maj@k from k samples.

Accuracy uses the run's own `accuracy` reward component (with its extraction mode) so that
what is reported is what was trained on; format rate likewise uses the run's `format` component.
"""

from __future__ import annotations

import time
from collections import Counter

import torch

from grpokit.rewards import (
    BUILTIN_REWARDS,
    RewardComponent,
    answers_match,
    extract_answer,
)
from grpokit.sampler import sample
from grpokit.stats import pass_at_k


def _component(components: list[RewardComponent], name: str) -> RewardComponent:
    """The run's component of that builtin, or the builtin with its defaults."""
    for c in components:
        if c.fn is BUILTIN_REWARDS[name]:
            return c
    return RewardComponent(name=name, fn=BUILTIN_REWARDS[name])


def _score(component: RewardComponent, completion: str, answer: str | None) -> float:
    """Builtin accuracy/format only; a failure inside a builtin counts as not correct, not a crash."""
    try:
        value = component.fn(completion, answer=answer, **component.kwargs)
    except Exception:  # noqa: BLE001 - e.g. a math-verify edge case on one odd completion
        return 0.0
    return 0.0 if value is None else float(value)


def evaluate(
    model,
    tokenizer,
    prompts: list[str],
    answers: list[str | None],
    components: list[RewardComponent],
    *,
    max_new_tokens: int,
    batch_size: int = 128,
    k: int = 0,
    n_samples: int | None = None,
    temperature: float = 1.0,
    engine: str = "grpokit",
    sampler=None,
    rows: list[dict] | None = None,
) -> dict:
    """Greedy decoding on every prompt; with k > 1, also k samples each for pass@k and maj@k.

    Returns accuracy, format_rate, mean_length, truncation_rate, n, seconds (and pass_at_k,
    maj_at_k, k, n_samples). pass@k: from n_samples >= k samples per prompt (default k), c of them
    correct, the unbiased 1 - C(n-c, k)/C(n, k) of Chen et al. 2021 (`grpokit.stats.pass_at_k`),
    averaged over prompts. maj@k: the most frequent extracted answer among the first k samples
    (ties broken by first occurrence) is correct. With a multi-turn `sampler` (`grpokit.multiturn`)
    and each prompt's row, every answer is a greedy conversation with the environment, and
    `tool_call_rate` (conversations with at least one tool call) is reported too.
    """
    start = time.perf_counter()
    accuracy_c, format_c = _component(components, "accuracy"), _component(components, "format")
    correct, formatted, lengths, truncated, outputs, tool_calls = [], [], [], [], [], []
    for i in range(0, len(prompts), batch_size):
        if sampler is not None:
            rollout = sampler.sample(prompts[i: i + batch_size], 1, rows=rows[i: i + batch_size], temperature=0.0)
            tool_calls += [s.get("tool_calls", 0) > 0 for s in rollout.env_stats]
        else:
            rollout = sample(model, tokenizer, prompts[i: i + batch_size], group_size=1,
                             max_new_tokens=max_new_tokens, temperature=0.0, engine=engine)
        for text, answer in zip(rollout.completions, answers[i: i + batch_size]):
            correct.append(_score(accuracy_c, text, answer))
            formatted.append(_score(format_c, text, answer))
            outputs.append(text)
        lengths += rollout.completion_lengths_B.tolist()
        truncated += rollout.truncated_B.tolist()
    n = len(prompts)
    result = {
        "accuracy": sum(correct) / n,
        "format_rate": sum(formatted) / n,
        "mean_length": sum(lengths) / n,
        "truncation_rate": sum(truncated) / n,
        "n": n,
        **({"tool_call_rate": sum(tool_calls) / n} if sampler is not None else {}),
    }
    if k > 1:
        n = n_samples or k
        result.update(_pass_and_majority(model, tokenizer, prompts, answers, accuracy_c, k=k, n=n,
                                         max_new_tokens=max_new_tokens, temperature=temperature,
                                         batch_size=max(1, batch_size // n), engine=engine))
    result["seconds"] = time.perf_counter() - start
    result["samples"] = [{"completion": o, "correct": c} for o, c in zip(outputs[:8], correct[:8])]
    return result


def _pass_and_majority(model, tokenizer, prompts, answers, accuracy_c, *, k, n, max_new_tokens, temperature,
                       batch_size, engine: str, seed: int = 0) -> dict:
    if n < k:
        raise ValueError(f"pass@k needs at least k samples per prompt; got n_samples={n} < k={k}")
    # Its own seeded RNG stream: evaluating must not change what training samples next.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _pass_and_majority_unseeded(model, tokenizer, prompts, answers, accuracy_c, k=k, n=n,
                                           max_new_tokens=max_new_tokens, temperature=temperature,
                                           batch_size=batch_size, engine=engine)


def _pass_and_majority_unseeded(model, tokenizer, prompts, answers, accuracy_c, *, k, n, max_new_tokens,
                                temperature, batch_size, engine: str) -> dict:
    extract_mode = accuracy_c.kwargs.get("extract", "auto")
    passed = majority = 0
    for i in range(0, len(prompts), batch_size):
        rollout = sample(model, tokenizer, prompts[i: i + batch_size], group_size=n,
                         max_new_tokens=max_new_tokens, temperature=temperature, engine=engine)
        for j, answer in enumerate(answers[i: i + batch_size]):
            group = rollout.completions[j * n: (j + 1) * n]
            passed += pass_at_k(n, sum(_score(accuracy_c, text, answer) > 0 for text in group), k)
            extracted = [e for e in (extract_answer(t, extract_mode) for t in group[:k]) if e is not None]
            if extracted:
                top = Counter(extracted).most_common(1)[0][0]
                majority += answer is not None and answers_match(top, answer)
    return {"k": k, "n_samples": n, "pass_at_k": passed / len(prompts), "maj_at_k": majority / len(prompts)}
