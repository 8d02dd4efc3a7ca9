"""Score completions with weighted reward components (built by `components.py`).

`score_completions` calls each component on a batch and keeps every component's scores
apart (they are logged separately: a format reward plateaus long before accuracy does) next
to their weighted total. A reward that fails on a sample gives None plus a counted error, never
an exception: one bad completion must not end a run (`isolation.py` adds time limits).

Every cell (sample, component) ends as a number, None (not applicable), or None plus an error.
An error is not a wrong answer, so it never becomes 0.0: it is counted per component and kept
with its completion for the errors log, and `check_error_rate` stops a run whose verifier is
broken instead of letting it train on nothing.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from grpokit.errors import GrpokitError
from grpokit.rewards.components import RewardComponent

# Fields the scorer passes itself; a row's own "completion" (e.g. an SFT target) is not the
# completion being scored, so it is never forwarded.
_RESERVED_FIELDS = ("prompt", "completion")

ERROR_KINDS = ("exception", "timeout", "crashed", "nan", "not_a_number", "wrong_length")
_MAX_MESSAGE_CHARS = 300
_MAX_COMPLETION_CHARS = 2000

# One cell's result as (value, error kind, error message): (0.5, None, None) is a score,
# (None, None, None) "not applicable", (None, "timeout", "...") an error. Plain tuples, because
# the isolated scorer sends them between processes.
Outcome = tuple[float | None, str | None, str | None]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more characters]"


def error_outcome(kind: str, message: str) -> Outcome:
    """The outcome of a cell whose reward failed: no value, the kind, a short message."""
    return (None, kind, _truncate(message, _MAX_MESSAGE_CHARS))


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _to_outcome(value: object) -> Outcome:
    # Accept Python and numpy numbers (and 0-d arrays/tensors); None means "not applicable".
    if value is None:
        return (None, None, None)
    is_scalar_array = hasattr(value, "dtype") and getattr(value, "shape", None) == ()
    if isinstance(value, numbers.Real) or is_scalar_array:
        try:
            number = float(value)
        except Exception as e:  # an exotic 0-d array (strings, objects)
            return error_outcome("not_a_number", f"returned {value!r}, which float() rejects: {_describe(e)}")
        if math.isnan(number):
            return error_outcome("nan", "returned NaN; return None for 'not applicable'")
        if math.isinf(number):
            return error_outcome("not_a_number", f"returned {number}; expected a finite number")
        return (number, None, None)
    try:
        shown = repr(value)
    except Exception:
        shown = f"a {type(value).__name__}"
    return error_outcome(
        "not_a_number", f"returned {_truncate(shown, 80)} of type {type(value).__name__}; expected a number or None"
    )


def _call(component: RewardComponent, *args, **kwargs) -> tuple[object, Outcome | None]:
    """(the function's result, None), or (None, the error outcome) when it raised."""
    try:
        return component.fn(*args, **kwargs), None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # also SystemExit, and math_verify's TimeoutException (a BaseException)
        return None, error_outcome("exception", _describe(e))


def forwarded_fields(example: dict) -> dict:
    """The row fields a reward receives as keyword arguments, besides `completion` and `prompt`."""
    return {k: v for k, v in example.items() if k not in _RESERVED_FIELDS}


def score_one(component: RewardComponent, completion: str, prompt: str, example: dict) -> Outcome:
    """Call a per-sample component on one completion as `fn(completion, **fields, prompt=..., **options)`."""
    fields = forwarded_fields(example)
    raw, failed = _call(component, completion, **{**fields, "prompt": prompt, **component.kwargs})
    return failed or _to_outcome(raw)


def score_batched(
    component: RewardComponent, prompts: list[str], completions: list[str], examples: list[dict]
) -> list[Outcome]:
    """Call a batched component once, as `fn(prompts=..., completions=..., **columns, **options)`.

    Each row field arrives as a list (TRL's convention); a result that is not one value per
    completion fails every cell of the batch.
    """
    n = len(completions)
    field_names = list(dict.fromkeys(k for ex in examples for k in forwarded_fields(ex)))
    columns = {k: [ex.get(k) for ex in examples] for k in field_names}
    raw, failed = _call(component, prompts=prompts, completions=completions, **{**columns, **component.kwargs})
    if failed:
        return [failed] * n
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__"):
        failed = error_outcome(
            "wrong_length",
            f"batched reward returned {type(raw).__name__}; expected a list of {n} numbers, one per completion",
        )
        return [failed] * n
    if len(raw) != n:
        failed = error_outcome(
            "wrong_length",
            f"batched reward returned {len(raw)} values for {n} completions; expected one value per completion",
        )
        return [failed] * n
    return [_to_outcome(value) for value in raw]


@dataclass
class Scores:
    """Per-component scores (None where a reward did not apply or failed) and the weighted total.

    `errors` holds one entry per failed cell: `component`, `index` (of the sample), `kind` (one
    of `ERROR_KINDS`), `message` and the (truncated) `completion`. `error_counts` maps every
    component to its counts by kind (an empty dict when it had no error).
    """

    components: dict[str, list[float | None]]
    total: list[float]
    errors: list[dict] = field(default_factory=list)
    error_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> dict:
        """Per component: mean over the non-None scores (None if all are None) and n_none."""
        out = {}
        for name, values in self.components.items():
            present = [v for v in values if v is not None]
            out[name] = {
                "mean": sum(present) / len(present) if present else None,
                "n_none": len(values) - len(present),
            }
        return out

    def with_component(self, name: str, values: list[float | None], weight: float = 1.0) -> Scores:
        """These scores plus one more component computed elsewhere (a multi-turn environment's reward)."""
        if name in self.components:
            raise GrpokitError(f"a reward component is already named {name!r}; rename it (alias) so the "
                               f"environment's reward can be logged as {name!r}.")
        total = [t + weight * v if v is not None else t for t, v in zip(self.total, values)]
        return Scores({**self.components, name: list(values)}, total, self.errors, {**self.error_counts, name: {}})

    def verified(self) -> list[bool]:
        """Per sample: no reward failed on it (a None that means "not applicable" is not a failure).
        An unverified completion is unknown, not wrong: it stays out of baselines and pairs."""
        failed = {e["index"] for e in self.errors}
        return [i not in failed for i in range(len(self.total))]

    def error_rate(self) -> float:
        """Fraction of the (sample, component) cells whose reward failed."""
        cells = sum(len(values) for values in self.components.values())
        return len(self.errors) / cells if cells else 0.0

    def select(self, indices: list[int]) -> Scores:
        """The scores of those samples, renumbered 0..len(indices)-1 (errors follow their sample)."""
        new_index = {old: new for new, old in enumerate(indices)}
        errors = [{**e, "index": new_index[e["index"]]} for e in self.errors if e["index"] in new_index]
        counts: dict[str, dict[str, int]] = {name: {} for name in self.components}
        for e in errors:
            counts[e["component"]][e["kind"]] = counts[e["component"]].get(e["kind"], 0) + 1
        return Scores({name: [values[i] for i in indices] for name, values in self.components.items()},
                      [self.total[i] for i in indices], errors, counts)

    @staticmethod
    def concat(parts: list[Scores]) -> Scores:
        """Samples of several scorings, in order, as one (error indices shifted to match)."""
        components = {name: [v for p in parts for v in p.components[name]] for name in parts[0].components}
        errors, counts, offset = [], {name: {} for name in components}, 0
        for p in parts:
            errors += [{**e, "index": e["index"] + offset} for e in p.errors]
            for name, kinds in p.error_counts.items():
                for kind, n in kinds.items():
                    counts[name][kind] = counts[name].get(kind, 0) + n
            offset += len(p.total)
        return Scores(components, [t for p in parts for t in p.total], errors, counts)


def assemble_scores(
    components: list[RewardComponent], completions: list[str], outcomes: dict[str, list[Outcome]]
) -> Scores:
    """Turn each component's outcomes into `Scores`: values, weighted total, errors and counts."""
    n = len(completions)
    per_component: dict[str, list[float | None]] = {}
    errors: list[dict] = []
    error_counts: dict[str, dict[str, int]] = {}
    for component in components:
        per_component[component.name] = [value for value, _, _ in outcomes[component.name]]
        counts = error_counts.setdefault(component.name, {})
        for index, (_, kind, message) in enumerate(outcomes[component.name]):
            if kind is not None:
                counts[kind] = counts.get(kind, 0) + 1
                errors.append({
                    "component": component.name,
                    "index": index,
                    "kind": kind,
                    "message": message,
                    "completion": _truncate(completions[index], _MAX_COMPLETION_CHARS),
                })
    total = [0.0] * n
    for component in components:
        for i, value in enumerate(per_component[component.name]):
            if value is not None:  # "not applicable" and errors add nothing
                total[i] += component.weight * value
    return Scores(per_component, total, errors, error_counts)


def check_batch(prompts: list, completions: list, examples: list) -> None:
    """A mismatch here is a bug in the caller, not in the user's rewards: ValueError."""
    n = len(completions)
    if len(prompts) != n or len(examples) != n:
        raise ValueError(
            f"score_completions: got {len(prompts)} prompts, {n} completions and "
            f"{len(examples)} examples; expected one prompt and one example per completion."
        )


def score_completions(
    components: list[RewardComponent],
    prompts: list[str],
    completions: list[str],
    examples: list[dict],
) -> Scores:
    """Score each completion with every component, in this process; `examples[i]` is the row of completion i.

    Per-sample rewards get `fn(completion, **row_fields, prompt=..., **options)`; batched ones
    are called once as `fn(prompts=..., completions=..., **columns, **options)` with each row
    field as a list (TRL's convention). Options from the config win over row fields. A reward
    that raises or returns something other than a finite number or None gives None for that
    cell plus an entry in `errors` (no time limit here: see `make_scorer(isolate=True)`).

    >>> from grpokit.rewards.components import build_reward_components
    >>> completions = ["<answer>2</answer>", "<answer>3</answer>"]
    >>> scores = score_completions(build_reward_components(["accuracy"]), ["1+1?"] * 2,
    ...                            completions, [{"answer": "2"}] * 2)
    >>> scores.components, scores.total, scores.error_counts
    ({'accuracy': [1.0, 0.0]}, [1.0, 0.0], {'accuracy': {}})
    """
    check_batch(prompts, completions, examples)
    outcomes: dict[str, list[Outcome]] = {}
    for component in components:
        if component.batched:
            outcomes[component.name] = score_batched(component, prompts, completions, examples)
        else:
            outcomes[component.name] = [
                score_one(component, completion, prompt, example)
                for completion, prompt, example in zip(completions, prompts, examples)
            ]
    return assemble_scores(components, completions, outcomes)


def check_error_rate(scores: Scores, max_error_rate: float) -> None:
    """Raise GrpokitError when one component failed on more than `max_error_rate` of this batch.

    A failed cell adds nothing to the total, so a broken verifier (a missing dependency, a
    renamed data column, a reward that always times out) would otherwise train quietly on
    rewards that mean nothing. 1.0 turns the check off.

    >>> check_error_rate(Scores({"accuracy": [1.0, None]}, [1.0, 0.0]), max_error_rate=0.5)
    """
    for name, values in scores.components.items():
        if not values:
            continue
        counts = scores.error_counts.get(name, {})
        failed = sum(counts.values())
        rate = failed / len(values)
        if rate <= max_error_rate:
            continue
        by_kind = ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items(), key=lambda kv: -kv[1]))
        example = next((e for e in scores.errors if e["component"] == name), None)
        shown = f" Example ({example['kind']}, sample {example['index']}): {example['message']}." if example else ""
        raise GrpokitError(
            f"reward {name!r} failed on {failed} of {len(values)} samples in this batch ({rate:.0%}), more than "
            f"verify.max_error_rate={max_error_rate:g} allows ({by_kind}).{shown} The errors log holds every failing "
            "completion with its message. Fix the reward, or raise verify.max_error_rate if failures are expected "
            "(1.0 turns this check off)."
        )
