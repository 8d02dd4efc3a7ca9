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
    env_stats: list[dict] | None = None  # multi-turn: per conversation, turns, tool calls and errors, cut_by

    @staticmethod
    def merge(parts: list[StepRecord]) -> StepRecord:
        if len(parts) == 1:
            return parts[0]

        def joined(name):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else [v for part in values for v in part]

        return StepRecord(joined("rows"), Scores.concat([p.scores for p in parts]), joined("lengths"),
                          joined("truncated"), joined("completions"), joined("passed"), joined("advantages"),
                          sum(p.groups_trained for p in parts), joined("scored"), joined("env_stats"))


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
    if record.env_stats is not None:
        row.update(env_metrics(record.env_stats))
        row["tokens_generated"] = sum(s["policy_tokens"] for s in record.env_stats)  # the policy's, not the tools'
    return row


def env_metrics(stats: list[dict]) -> dict:
    """Multi-turn rollouts: turns, tool calls and their errors by kind, the environment's share of the
    tokens, and which limit cut the truncated ones."""
    n = len(stats)
    counted = {k for s in stats for k, v in s.items() if isinstance(v, int) and k.startswith(("tool_", "truncated_"))}
    env_tokens = sum(s["env_tokens"] for s in stats)
    row = {"turns_per_rollout": sum(s["turns"] for s in stats) / n,
           "tool_calls_per_rollout": sum(s.get("tool_calls", 0) for s in stats) / n,
           "tool_call_rate": sum(1 for s in stats if s.get("tool_calls", 0) > 0) / n,
           "env_token_fraction": env_tokens / max(env_tokens + sum(s["policy_tokens"] for s in stats), 1),
           "truncated_by_turns": sum(1 for s in stats if s["cut_by"] == "turns"),
           "truncated_by_tokens": sum(1 for s in stats if s["cut_by"] == "tokens")}
    row.update({key: sum(s.get(key, 0) for s in stats) for key in sorted(counted - {"tool_calls"})})
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
         "truncated": record.truncated[i], "scored": record.scored[i],
         **({"env": record.env_stats[i]} if record.env_stats is not None else {})}
        for i in range(len(record.completions))
    ]
