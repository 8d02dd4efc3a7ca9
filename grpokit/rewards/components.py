"""Build checked reward components from the config's reward list.

The config lists rewards (`["accuracy", {"name": "format", "weight": 0.5}]`);
`build_reward_components` turns that list into checked `RewardComponent`s once, before any
sampling, so a typo fails in the first second rather than after the first rollout.
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
