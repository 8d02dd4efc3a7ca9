"""Score completions with weighted reward components.

The config lists rewards (`["accuracy", {"name": "format", "weight": 0.5}]`);
`build_reward_components` turns that list into checked `RewardComponent`s once, before any
sampling, so a typo fails in the first second rather than after the first rollout.
`score_completions` then calls each component on a batch and keeps every component's scores
apart (they are logged separately: a format reward plateaus long before accuracy does) next
to their weighted total.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

from grpokit.errors import GrpokitError
from grpokit.rewards.builtin import BUILTIN_REWARDS, accuracy, compile_pattern, format_reward
from grpokit.rewards.loading import is_batched, load_reward_function
from grpokit.rewards.math_answers import EXTRACT_MODES

_SPEC_KEYS = ("name", "weight", "alias")
# Fields the scorer passes itself; a row's own "completion" (e.g. an SFT target) is not the
# completion being scored, so it is never forwarded.
_RESERVED_FIELDS = ("prompt", "completion")


@dataclass
class RewardComponent:
    """One reward in the mix: the function, its weight and the keyword arguments it gets."""

    name: str
    fn: Callable
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    batched: bool = False


def _check_kwargs(name: str, fn: Callable, batched: bool, kwargs: dict) -> None:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return  # no inspectable signature (a C function): nothing to check against
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    # Built-ins swallow row fields with **_, so their named parameters are the real contract.
    if takes_any and fn not in BUILTIN_REWARDS.values():
        return
    first = parameters[0].name if parameters else ""
    data_params = ("prompts", "completions") if batched else (first,)
    valid = [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in data_params
    ]
    for key in kwargs:
        if key not in valid:
            raise GrpokitError(
                f"reward {name!r}: unknown option {key!r}; valid options are "
                f"{', '.join(list(_SPEC_KEYS) + valid)}."
            )
    if fn is accuracy and kwargs.get("extract", "auto") not in EXTRACT_MODES:
        raise GrpokitError(
            f"reward {name!r}: extract={kwargs['extract']!r} is not a valid mode; expected one "
            f"of {', '.join(EXTRACT_MODES)}."
        )
    if fn is format_reward and "pattern" in kwargs:
        if not isinstance(kwargs["pattern"], str):
            raise GrpokitError(
                f"reward {name!r}: pattern must be a string regex, got {kwargs['pattern']!r}."
            )
        compile_pattern(kwargs["pattern"])


def _build_one(spec: object, index: int) -> RewardComponent:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise GrpokitError(
            f"rewards[{index}] is {spec!r}; expected a reward name such as 'accuracy' or a "
            "mapping with a 'name' key, e.g. {'name': 'format', 'weight': 0.5}."
        )
    name = spec["name"]
    weight = spec.get("weight", 1.0)
    # bool is a Real to Python, but `weight: true` in YAML is a mistake, not 1.0.
    if (
        isinstance(weight, bool)
        or not isinstance(weight, numbers.Real)
        or not math.isfinite(weight)
    ):
        raise GrpokitError(
            f"rewards[{index}] ({name!r}): weight {weight!r} is not a finite number."
        )
    alias = spec.get("alias", name)
    if not isinstance(alias, str) or not alias.strip():
        raise GrpokitError(
            f"rewards[{index}] ({name!r}): alias {alias!r} is not a non-empty string."
        )
    fn = load_reward_function(name)
    batched = is_batched(fn)
    kwargs = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
    _check_kwargs(name, fn, batched, kwargs)
    return RewardComponent(alias.strip(), fn, float(weight), kwargs, batched)


def build_reward_components(specs: list) -> list[RewardComponent]:
    """Turn the config's reward list into checked components.

    Each spec is a name or a dict `{"name", "weight"=1.0, "alias"=name, **options}`; options
    go to the function as keyword arguments.

    >>> [c.name for c in build_reward_components(["accuracy", {"name": "format", "weight": 0.5}])]
    ['accuracy', 'format']
    """
    if not isinstance(specs, (list, tuple)) or not specs:
        raise GrpokitError(
            f"rewards is {specs!r}; expected a non-empty list such as ['accuracy', 'format']."
        )
    components: list[RewardComponent] = []
    for index, spec in enumerate(specs):
        component = _build_one(spec, index)
        if any(c.name == component.name for c in components):
            raise GrpokitError(
                f"rewards[{index}]: the name {component.name!r} is used twice; give one of "
                "them a distinct display name with 'alias', e.g. "
                "{'name': 'format', 'alias': 'format_strict', ...}."
            )
        components.append(component)
    return components


@dataclass
class Scores:
    """Per-component scores (None where a reward did not apply) and the weighted total."""

    components: dict[str, list[float | None]]
    total: list[float]

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


def _to_reward(component: str, value: object) -> float | None:
    # Accept Python and numpy numbers (and 0-d arrays/tensors); NaN means "not applicable".
    if value is None:
        return None
    is_scalar_array = hasattr(value, "dtype") and getattr(value, "shape", None) == ()
    if isinstance(value, numbers.Real) or is_scalar_array:
        number = float(value)
        if math.isnan(number):
            return None
        if math.isinf(number):
            raise GrpokitError(f"reward {component!r} returned {number}; expected a finite number.")
        return number
    raise GrpokitError(
        f"reward {component!r} returned {value!r} of type {type(value).__name__}; expected a "
        "number or None."
    )


def _convert_results(component: RewardComponent, raw: object, n: int) -> list[float | None]:
    """All result checks in one place, so they can later become None plus a counter."""
    if not component.batched:
        return [_to_reward(component.name, value) for value in raw]
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__"):
        raise GrpokitError(
            f"batched reward {component.name!r} returned {type(raw).__name__}; expected a list "
            f"of {n} numbers, one per completion."
        )
    if len(raw) != n:
        raise GrpokitError(
            f"batched reward {component.name!r} returned {len(raw)} values for {n} "
            "completions; expected exactly one value per completion."
        )
    return [_to_reward(component.name, value) for value in raw]


def _call(component: RewardComponent, *args, **kwargs) -> object:
    try:
        return component.fn(*args, **kwargs)
    except GrpokitError:
        raise
    except Exception as e:
        if component.fn in BUILTIN_REWARDS.values():
            raise  # a bug in grpokit, not in the user's reward
        raise GrpokitError(f"reward {component.name!r} raised {type(e).__name__}: {e}") from e


def score_completions(
    components: list[RewardComponent],
    prompts: list[str],
    completions: list[str],
    examples: list[dict],
) -> Scores:
    """Score each completion with every component; `examples[i]` is the row of completion i.

    Per-sample rewards get `fn(completion, **row_fields, prompt=..., **options)`; batched ones
    are called once as `fn(prompts=..., completions=..., **columns, **options)` with each row
    field as a list (TRL's convention). Options from the config win over row fields.

    >>> completions = ["<answer>2</answer>", "<answer>3</answer>"]
    >>> scores = score_completions(build_reward_components(["accuracy"]), ["1+1?"] * 2,
    ...                            completions, [{"answer": "2"}] * 2)
    >>> scores.components, scores.total
    ({'accuracy': [1.0, 0.0]}, [1.0, 0.0])
    """
    n = len(completions)
    if len(prompts) != n or len(examples) != n:
        raise ValueError(
            f"score_completions: got {len(prompts)} prompts, {n} completions and "
            f"{len(examples)} examples; expected one prompt and one example per completion."
        )
    field_names = list(dict.fromkeys(k for ex in examples for k in ex if k not in _RESERVED_FIELDS))
    per_component: dict[str, list[float | None]] = {}
    for component in components:
        if component.batched:
            columns = {k: [ex.get(k) for ex in examples] for k in field_names}
            raw = _call(
                component,
                prompts=prompts,
                completions=completions,
                **{**columns, **component.kwargs},
            )
        else:
            raw = []
            for completion, prompt, example in zip(completions, prompts, examples):
                fields = {k: v for k, v in example.items() if k not in _RESERVED_FIELDS}
                call_kwargs = {**fields, "prompt": prompt, **component.kwargs}
                raw.append(_call(component, completion, **call_kwargs))
        per_component[component.name] = _convert_results(component, raw, n)

    total = [0.0] * n
    for component in components:
        for i, value in enumerate(per_component[component.name]):
            if value is not None:  # "not applicable" adds nothing
                total[i] += component.weight * value
    return Scores(per_component, total)
