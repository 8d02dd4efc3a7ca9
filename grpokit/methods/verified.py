"""From verified groups to training data: which completions passed, SFT targets, preference pairs.

Pure functions of rewards and texts (no model), so the rules are tested directly:
- `passed`: a completion passes when the reward named by `online.pass_reward` is at least
  `online.pass_threshold` (a reward that failed to score never passes);
- `rft_rows`: the passing completions, one per distinct text within a prompt's group;
- `preference_pairs`: (passing, failing) completions of the same prompt, by `online.pair_rule`.
"""

from __future__ import annotations

import random

import torch

from grpokit.errors import GrpokitError


def resolve_pass_reward(name: str, components) -> str | None:
    """The scores key online.pass_reward refers to: 'total', a component's name (its alias if it has
    one), or a built-in reward's name when that built-in runs under an alias; None if none matches."""
    from grpokit.rewards import BUILTIN_REWARDS

    if name == "total" or any(c.name == name for c in components):
        return name
    builtin = BUILTIN_REWARDS.get(name)
    return next((c.name for c in components if builtin is not None and c.fn is builtin), None)


def check_pass_reward(name: str, components) -> str:
    """Fail before the model loads when online.pass_reward names no reward component."""
    key = resolve_pass_reward(name, components)
    if key is None:
        raise GrpokitError(f"config key 'online.pass_reward' is {name!r}, which is not a reward component of this "
                           f"run; expected 'total' or one of {', '.join(c.name for c in components)}.")
    return key


def passed(components: dict[str, list[float | None]], total: list[float], name: str, threshold: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) bool tensors (passed, scored): the completion's `name` reward (or the total) is at least
    `threshold`; scored is False where that reward failed (error, timeout), which is neither a pass
    nor a verified failure."""
    values = total if name == "total" else components[name]
    scored_B = torch.tensor([v is not None for v in values], dtype=torch.bool)
    return torch.tensor([v is not None and v >= threshold for v in values], dtype=torch.bool), scored_B


def rft_rows(passed_B: torch.Tensor, completions: list[str], group_size: int,
             truncated_B: torch.Tensor | None = None) -> list[int]:
    """Indices of passing completions, deduplicated by text within each prompt's group
    (a group that found the answer the same way 5 times is one example, not five). Truncated
    ones are left out: with no EOS, imitating them would teach the model not to stop."""
    rows = []
    for start in range(0, len(completions), group_size):
        seen: set[str] = set()
        for i in range(start, start + group_size):
            text = completions[i].strip()
            if truncated_B is not None and truncated_B[i]:
                continue
            if passed_B[i] and text not in seen:
                seen.add(text)
                rows.append(i)
    return rows


def preference_pairs(passed_B: torch.Tensor, rewards_B: torch.Tensor, completions: list[str], group_size: int,
                     *, rule: str, pairs_per_prompt: int, rng: random.Random,
                     scored_B: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs: a passing and a failing completion of the same prompt.

    Within a group, completions are first deduplicated by text on each side (a pair of equal
    texts would teach nothing). Then, up to `pairs_per_prompt` pairs, each completion used once:
    - random: chosen and rejected drawn uniformly from the distinct passing / failing ones;
    - reward_gap: highest total reward passing with lowest total reward failing (ties by order),
      the pairs with the clearest preference signal.
    Groups whose completions all pass or all fail give no pair. A completion whose verifier
    failed (scored_B False) is on neither side: it is unknown, not wrong.
    """
    pairs = []
    for start in range(0, len(completions), group_size):
        winners, losers, seen = [], [], set()
        for i in range(start, start + group_size):
            text = completions[i].strip()
            if text in seen or (scored_B is not None and not scored_B[i]):
                continue
            seen.add(text)
            (winners if passed_B[i] else losers).append(i)
        if not winners or not losers:
            continue
        if rule == "random":
            rng.shuffle(winners)
            rng.shuffle(losers)
        elif rule == "reward_gap":
            winners.sort(key=lambda i: -rewards_B[i].item())
            losers.sort(key=lambda i: rewards_B[i].item())
        else:
            raise ValueError(f"unknown pair rule {rule!r}")
        pairs += list(zip(winners, losers))[:pairs_per_prompt]
    return pairs
