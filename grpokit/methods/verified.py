"""From verified groups to training data: SFT targets and preference pairs.

Pure functions of pass flags, rewards and texts (no model), so the rules are tested directly. Which
completions passed is the rewards' business (`grpokit.rewards.passing`).
- `rft_rows`: the passing completions, one per distinct text within a prompt's group;
- `preference_pairs`: (passing, failing) completions of the same prompt, by `online.pair_rule`.
"""

from __future__ import annotations

import random

import torch


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
