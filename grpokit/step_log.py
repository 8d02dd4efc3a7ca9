"""What one online step writes: its metrics row (metrics.jsonl) and one record per completion
(rollouts.jsonl), assembled from every process's groups."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpokit.advantages import zero_variance_groups
from grpokit.rewards import BUILTIN_REWARDS
from grpokit.rewards.scoring import Scores


@dataclass
class StepRecord:
    """What one step sampled, scored and trained on, per completion: enough for its metrics and rollouts.
    With several processes each holds its own groups; `merge` joins them in rank order."""

    rows: list[int]  # training row of each group
    scores: Scores
    lengths: list[int]
    truncated: list[bool]
    completions: list[str]
    passed: list[bool] | None
    advantages: list[float | None] | None  # None for a group dynamic sampling dropped
    groups_trained: int
    scored: list[bool]  # every reward verified it (an unscored completion is unknown, and not trained on)

    @staticmethod
    def merge(parts: list[StepRecord]) -> StepRecord:
        if len(parts) == 1:
            return parts[0]

        def joined(name):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else [v for part in values for v in part]

        return StepRecord(joined("rows"), Scores.concat([p.scores for p in parts]), joined("lengths"),
                          joined("truncated"), joined("completions"), joined("passed"), joined("advantages"),
                          sum(p.groups_trained for p in parts), joined("scored"))


def step_metrics(step: int, record: StepRecord, group_size: int, components, update: dict) -> dict:
    """The step's reward, verification and sampling metrics, then the update's own (`update`)."""
    G, scores = group_size, record.scores
    rewards_B = torch.tensor(scores.total, dtype=torch.float32)
    lengths = torch.tensor(record.lengths, dtype=torch.float32)
    scored = torch.tensor(record.scored, dtype=torch.bool)
    row = {"step": step, "phase": "train", "reward": rewards_B.mean().item()}
    for name, component_summary in scores.summary().items():
        row[f"reward/{name}"] = component_summary["mean"]  # over the samples it could score
    for builtin, key in (("accuracy", "accuracy"), ("format", "format_rate")):
        component = next((x for x in components if x.fn is BUILTIN_REWARDS[builtin]), None)
        if component is not None:  # found by function, so an alias does not hide it
            row[key] = row[f"reward/{component.name}"]
    row.update({
        "reward_std": rewards_B.std().item(),
        "pass_rate": sum(record.passed) / len(record.passed) if record.passed is not None else None,
        "zero_variance_fraction": (zero_variance_groups(rewards_B.view(-1, G), scored.view(-1, G)).float().mean().item()
                                   if G > 1 else None),  # a group of one has no variance to speak of
        "mean_length": lengths.mean().item(),
        "truncation_rate": sum(record.truncated) / len(record.truncated),
        "unscored_completions": len(record.scored) - sum(record.scored),  # a reward failed: advantage 0, not trained
        **update,
        "tokens_generated": int(lengths.sum().item()),
    })
    return row


def error_metrics(scores: Scores, worker_restarts: int) -> dict:
    """Reward failures by component and kind, the step's error rate, and reward worker restarts."""
    row = {f"reward_errors/{name}/{kind}": count
           for name, kinds in scores.error_counts.items() for kind, count in kinds.items()}
    return {**row, "reward_error_rate": scores.error_rate(), "reward_worker_restarts": worker_restarts}


def rollout_records(step: int, record: StepRecord, group_size: int, prompts: list[str], examples) -> list[dict]:
    """One rollouts.jsonl record per completion of the step."""
    G, scores = group_size, record.scores
    return [
        {"step": step, "prompt": prompts[record.rows[i // G]], "answer": examples[record.rows[i // G]].answer,
         "completion": record.completions[i], "rewards": {k: v[i] for k, v in scores.components.items()},
         "reward": scores.total[i], "passed": record.passed[i] if record.passed is not None else None,
         **({"advantage": record.advantages[i]} if record.advantages is not None else {}),
         "truncated": record.truncated[i], "scored": record.scored[i]}
        for i in range(len(record.completions))
    ]
