"""The pass rule: which verified completions count as passing (RFT's data, the sides of a pair, pass@k).

A completion passes when the reward named by `online.pass_reward` (a component, or "total") is at
least `online.pass_threshold`. A completion whose verification failed (any reward with an error)
never passes, and is not a failure either: it is unknown (`Scores.verified`).
"""

from __future__ import annotations

import torch

from grpokit.errors import GrpokitError
from grpokit.rewards.builtin import BUILTIN_REWARDS
from grpokit.rewards.scoring import Scores

ENV_REWARD = "env"  # the component a multi-turn environment's own reward joins the scores as


def resolve_pass_reward(name: str, components, env: bool = False) -> str | None:
    """The scores key online.pass_reward refers to: 'total', a component's name (its alias if it has
    one), a built-in reward's name when that built-in runs under an alias, or 'env' (the
    environment's reward) when the run has an environment (`env`); None if none matches."""
    if name == "total" or any(c.name == name for c in components) or (env and name == ENV_REWARD):
        return name
    builtin = BUILTIN_REWARDS.get(name)
    return next((c.name for c in components if builtin is not None and c.fn is builtin), None)


def check_pass_reward(name: str, components, env: bool = False) -> str:
    """Fail before the model loads when online.pass_reward names no reward component."""
    key = resolve_pass_reward(name, components, env)
    if key is None:
        names = ["'total'", *(repr(c.name) for c in components), *([repr(ENV_REWARD)] if env else [])]
        raise GrpokitError(f"config key 'online.pass_reward' is {name!r}, which is not a reward component of this "
                           f"run; expected one of {', '.join(names)}"
                           + ("" if env or name != ENV_REWARD else " ('env' is the reward of an environment: "
                              "set env.name)") + ".")
    return key


def passed(scores: Scores, name: str, threshold: float) -> torch.Tensor:
    """(B,) bool: the completion was verified and its `name` reward (or the total) is at least `threshold`.
    An environment that gave no reward this time ('env' absent, or None) passes nothing."""
    values = scores.total if name == "total" else scores.components.get(name, [None] * len(scores.total))
    verified = scores.verified()
    return torch.tensor([ok and v is not None and v >= threshold for v, ok in zip(values, verified)],
                        dtype=torch.bool)
