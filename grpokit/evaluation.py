"""Held-out evaluation: greedy accuracy and format rate, and pass@k / maj@k from k samples.

A completion is correct when it passes the run's pass rule, exactly as in training
(`grpokit.rewards.passing`): its `online.pass_reward` reward (a component, or "total") is at least
`online.pass_threshold`, scored as training scores (`make_scorer` with the `verify` settings: the same
worker process, time limits and, for `code_tests`, sandbox). Only the rewards a verdict reads are
scored (`eval_reward_specs`). A run whose rewards hold nothing the pass rule can name is judged by the
built-in `accuracy` with its defaults, as before the pass rule applied here; format rate likewise
uses the run's `format` component, or the built-in.

A completion whose verification failed (a reward raised, timed out, crashed or returned no number:
`Scores.verified`) is unscored, not wrong: it is counted apart and left out of the rates.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import torch

from grpokit.rewards import (
    BUILTIN_REWARDS,
    RewardComponent,
    build_reward_components,
    extract_answer,
    make_scorer,
    score_completions,
)
from grpokit.rewards.passing import ENV_REWARD, passed, resolve_pass_reward
from grpokit.rewards.scoring import Scores
from grpokit.sampler import sample
from grpokit.stats import pass_at_k


class ComponentScorer:
    """Scores with reward components already built, in this process (no time limit, no worker):
    for callers that hold components rather than a scorer from `make_scorer`."""

    def __init__(self, components: list[RewardComponent]):
        self.components = list(components)

    def score(self, prompts: list[str], completions: list[str], examples: list[dict]) -> Scores:
        return score_completions(self.components, prompts, completions, examples)

    def close(self) -> None:
        pass

    def __enter__(self) -> ComponentScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def eval_reward_specs(specs: list, pass_reward: str) -> list:
    """The reward specs (config `rewards` entries) whose scores a verdict reads: the pass rule's
    component (every one for "total") and the first built-in `format`. A reward that decides nothing
    here is not run: it costs nothing, and its failure cannot leave a completion unscored.

    >>> eval_reward_specs(["accuracy", "format", {"name": "format", "alias": "strict"}], "accuracy")
    ['accuracy', 'format']
    """
    components = build_reward_components(specs)
    key, fmt = resolve_pass_reward(pass_reward, components), _builtin(components, "format")
    return [spec for spec, c in zip(specs, components) if key == "total" or c.name in (key, fmt)]


def make_eval_scorer(specs: list, pass_reward: str, *, timeout: float | None, isolate: bool):
    """A scorer of `eval_reward_specs`, built as training builds its own (`make_scorer`)."""
    chosen = eval_reward_specs(specs, pass_reward)
    return make_scorer(chosen, timeout=timeout, isolate=isolate) if chosen else ComponentScorer([])


def _builtin(components: list[RewardComponent], name: str) -> str | None:
    """The name (alias) of the run's component that is that built-in, if any."""
    return next((c.name for c in components if c.fn is BUILTIN_REWARDS[name]), None)


@dataclass
class Verdicts:
    """Per completion: `correct` (True / False, None when unscored), `formatted` (the format score,
    None when unscored), and the reward failures (`Scores.errors` entries) that left some unscored."""

    correct: list[bool | None]
    formatted: list[float | None]
    errors: list[dict]


class Judge:
    """Turns completions into verdicts the way training does: the scorer's rewards, then the pass rule.

    Rewards the run lacks are scored here with the built-in's defaults (they only test strings):
    `accuracy` when `pass_reward` names no component (then a completion passes at accuracy 1.0) and
    `format` for the format rate. A failure of any reward on a completion leaves it unscored.

    >>> judge = Judge(ComponentScorer([RewardComponent("accuracy", BUILTIN_REWARDS["accuracy"])]))
    >>> judge.judge(["1+1?"] * 3, ["<answer>2</answer>", "<answer>3</answer>", "2"], [{"answer": "2"}] * 3).correct
    [True, False, True]
    """

    def __init__(self, scorer, pass_reward: str = "accuracy", pass_threshold: float = 1.0, env: bool = False):
        self.scorer = scorer
        components = list(scorer.components)
        key = resolve_pass_reward(pass_reward, components, env)  # env: conversations bring the "env" reward
        self.pass_in_run = key is not None
        self.key, self.threshold = (key, pass_threshold) if self.pass_in_run else ("accuracy", 1.0)
        self.format_key = _builtin(components, "format")
        fallback = ([] if self.pass_in_run else ["accuracy"]) + ([] if self.format_key else ["format"])
        self.fallback = [RewardComponent(name, BUILTIN_REWARDS[name]) for name in fallback]
        # maj@k votes on final answers extracted as the run's accuracy extracts them
        accuracy_c = next((c for c in components if c.fn is BUILTIN_REWARDS["accuracy"]), None)
        self.extract = (accuracy_c.kwargs if accuracy_c else {}).get("extract", "auto")

    def judge(self, prompts: list[str], completions: list[str], rows: list[dict],
              env_rewards: list[float | None] | None = None) -> Verdicts:
        """Verdicts on completion i of `prompts[i]`, whose dataset row is `rows[i]`; `env_rewards`: a
        multi-turn environment's reward per conversation, a component ("env") as in training."""
        scores = self.scorer.score(prompts, completions, rows)
        if env_rewards is not None and any(r is not None for r in env_rewards):
            scores = scores.with_component(ENV_REWARD, env_rewards)
        builtin = score_completions(self.fallback, prompts, completions, rows) if self.fallback else None
        verified = scores.verified()
        if builtin is not None:
            verified = [a and b for a, b in zip(verified, builtin.verified())]
        ok = passed(scores if self.pass_in_run else builtin, self.key, self.threshold).tolist()
        fmt = (scores if self.format_key else builtin).components[self.format_key or "format"]
        return Verdicts([p if v else None for p, v in zip(ok, verified)],
                        [(f or 0.0) if v else None for f, v in zip(fmt, verified)],
                        scores.errors + (builtin.errors if builtin is not None else []))


def evaluate(
    model,
    tokenizer,
    prompts: list[str],
    answers: list[str | None],
    components: list[RewardComponent] | None = None,
    *,
    max_new_tokens: int,
    batch_size: int = 128,
    k: int = 0,
    n_samples: int | None = None,
    temperature: float = 1.0,
    engine: str = "grpokit",
    sampler=None,
    rows: list[dict] | None = None,
    scorer=None,
    pass_reward: str = "accuracy",
    pass_threshold: float = 1.0,
) -> dict:
    """Greedy decoding on every prompt; with k >= 1, also k samples each for pass@k and maj@k.

    Scoring: `scorer` (the run's, from `make_scorer`), or else `components` scored in this process;
    `rows` are the prompts' dataset rows the rewards see (default: the answer alone). A completion is
    correct when it passes `pass_reward` >= `pass_threshold` (see the module docstring).

    Returns accuracy and format_rate over the scored completions (None if none was), unscored (how
    many completions a reward failed on: neither correct nor wrong), mean_length, truncation_rate and
    n over all of them, seconds, errors (the reward failures) and samples (the first completions with
    their verdict). With k >= 1 also pass_at_k, maj_at_k, k, n_samples, unscored_samples and
    pass_at_k_prompts. pass@k: from n_samples >= k samples per prompt (default k), the unbiased
    1 - C(n-c, k)/C(n, k) of Chen et al. 2021 (`grpokit.stats.pass_at_k`) with n the prompt's scored
    samples and c the correct ones among them, averaged over the prompts with at least k scored
    samples (pass_at_k_prompts). maj@k: among the first k samples that were scored, the most frequent
    extracted answer (ties broken by first occurrence) is correct when its first sample passes,
    averaged over the prompts with a scored sample among their first k. With a multi-turn `sampler`
    (`grpokit.multiturn`) and each prompt's row, every answer is a greedy conversation with the
    environment whose reward joins the scores as in training, and `tool_call_rate` (conversations with
    at least one tool call) is reported too.
    """
    if (scorer is None) == (components is None):
        raise ValueError("evaluate: give the reward components or a scorer (exactly one of them)")
    start = time.perf_counter()
    judge = Judge(scorer or ComponentScorer(components), pass_reward, pass_threshold, env=sampler is not None)
    rows = rows if rows is not None else [{"answer": a} for a in answers]
    correct, formatted, errors, lengths, truncated, outputs, tool_calls = [], [], [], [], [], [], []
    for i in range(0, len(prompts), batch_size):
        batch_prompts, batch_rows = prompts[i: i + batch_size], rows[i: i + batch_size]
        if sampler is not None:
            rollout = sampler.sample(batch_prompts, 1, rows=batch_rows, temperature=0.0)
            tool_calls += [s.get("tool_calls", 0) > 0 for s in rollout.env_stats]
        else:
            rollout = sample(model, tokenizer, batch_prompts, group_size=1,
                             max_new_tokens=max_new_tokens, temperature=0.0, engine=engine)
        verdicts = judge.judge(batch_prompts, rollout.completions, batch_rows, rollout.env_rewards)
        errors += [{**e, "index": e["index"] + i} for e in verdicts.errors]
        correct += verdicts.correct
        formatted += verdicts.formatted
        outputs += rollout.completions
        lengths += rollout.completion_lengths_B.tolist()
        truncated += rollout.truncated_B.tolist()
    n = len(prompts)
    scored = [c for c in correct if c is not None]
    result = {
        "accuracy": sum(scored) / len(scored) if scored else None,
        "format_rate": sum(f for f in formatted if f is not None) / len(scored) if scored else None,
        "unscored": n - len(scored),
        "mean_length": sum(lengths) / n,
        "truncation_rate": sum(truncated) / n,
        "n": n,
        **({"tool_call_rate": sum(tool_calls) / n} if sampler is not None else {}),
    }
    if k >= 1:
        n = n_samples or k
        result.update(_pass_and_majority(model, tokenizer, prompts, answers, None, k=k, n=n,
                                         max_new_tokens=max_new_tokens, temperature=temperature,
                                         batch_size=max(1, batch_size // n), engine=engine, judge=judge, rows=rows,
                                         sampler=sampler))
    result["seconds"] = time.perf_counter() - start
    result["errors"] = errors
    result["samples"] = [{"completion": o, "correct": c} for o, c in zip(outputs[:8], correct[:8])]
    return result


def _pass_and_majority(model, tokenizer, prompts, answers, accuracy_c, *, k, n, max_new_tokens, temperature,
                       batch_size, engine: str, seed: int = 0, judge: Judge | None = None,
                       rows: list[dict] | None = None, sampler=None) -> dict:
    if n < k:
        raise ValueError(f"pass@k needs at least k samples per prompt; got n_samples={n} < k={k}")
    # Its own seeded RNG stream: evaluating must not change what training samples next.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _pass_and_majority_unseeded(model, tokenizer, prompts, answers, accuracy_c, k=k, n=n,
                                           max_new_tokens=max_new_tokens, temperature=temperature,
                                           batch_size=batch_size, engine=engine, judge=judge, rows=rows,
                                           sampler=sampler)


def _pass_and_majority_unseeded(model, tokenizer, prompts, answers, accuracy_c, *, k, n, max_new_tokens,
                                temperature, batch_size, engine: str, judge: Judge | None = None,
                                rows: list[dict] | None = None, sampler=None) -> dict:
    """pass@k and maj@k as `evaluate` describes them; `judge` decides (default: `accuracy_c` in this process);
    with a multi-turn `sampler` each sample is a conversation at `temperature`."""
    judge = judge or Judge(ComponentScorer([accuracy_c]), accuracy_c.name)
    rows = rows if rows is not None else [{"answer": a} for a in answers]
    passed_sum = majority = unscored = estimated = voted = 0
    for i in range(0, len(prompts), batch_size):
        batch_prompts, batch_rows = prompts[i: i + batch_size], rows[i: i + batch_size]
        if sampler is not None:
            rollout = sampler.sample(batch_prompts, n, rows=batch_rows, temperature=temperature)
        else:
            rollout = sample(model, tokenizer, batch_prompts, group_size=n,
                             max_new_tokens=max_new_tokens, temperature=temperature, engine=engine)
        verdicts = judge.judge([p for p in batch_prompts for _ in range(n)], rollout.completions,
                               [r for r in batch_rows for _ in range(n)], rollout.env_rewards)
        for j in range(len(batch_prompts)):
            group = list(zip(rollout.completions[j * n: (j + 1) * n], verdicts.correct[j * n: (j + 1) * n]))
            scored = [ok for _, ok in group if ok is not None]  # an unscored sample is out of n and c
            unscored += n - len(scored)
            if len(scored) >= k:
                passed_sum += pass_at_k(len(scored), sum(scored), k)
                estimated += 1
            first_k = [(extract_answer(text, judge.extract), ok) for text, ok in group[:k] if ok is not None]
            voted += bool(first_k)
            votes = [(answer, ok) for answer, ok in first_k if answer is not None]
            if votes:
                top = Counter(answer for answer, _ in votes).most_common(1)[0][0]
                majority += next(ok for answer, ok in votes if answer == top)  # its first sample's verdict
    return {"k": k, "n_samples": n, "pass_at_k": passed_sum / estimated if estimated else None,
            "maj_at_k": majority / voted if voted else None, "unscored_samples": unscored,
            "pass_at_k_prompts": estimated}
