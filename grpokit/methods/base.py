"""What every update rule shares: the data one step hands it, and the small interface the loop calls.

An online method receives `ScoredGroups` (the step's sampled completions and their verification)
and turns them into a training batch and a loss. An offline method receives rows of a fixed
dataset. Either way `update` does the optimiser step(s) and returns the step's metrics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from grpokit.config import Config
from grpokit.sampler import Rollout


@dataclass
class ScoredGroups:
    """One online step: prompts_per_step groups of group_size completions, verified."""

    rollout: Rollout
    rewards_B: torch.Tensor  # (B,) total reward of each completion
    passed_B: torch.Tensor | None  # (B,) bool: online.pass_reward >= online.pass_threshold (None: no such reward)
    group_size: int
    scored_B: torch.Tensor | None = None  # (B,) bool: that reward could be computed (no error or timeout)


class Method:
    """Base of every update rule. Subclasses set `online` and implement `update`."""

    online: bool = True

    def __init__(self, config: Config, model, tokenizer):
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.device = next(model.parameters()).device
        self.step = 0  # set by the loop before each update (seeds per-step randomness, e.g. pair choice)

    def needs_reference(self) -> bool:
        """Whether a frozen copy of the starting policy must be loaded."""
        return False

    def optimizer_steps_per_step(self) -> int:
        """Policy optimiser steps one training step makes (for the learning-rate schedule)."""
        return 1

    def update(self, optimizer, scheduler, ref_model, data) -> dict:
        raise NotImplementedError

    # Extra trained state beyond the policy and its optimiser (PPO's value model), for checkpoints.
    def save_extra(self, folder: Path) -> None:
        """Write extra state into a checkpoint folder (nothing by default)."""

    def load_extra(self, folder: Path) -> None:
        """Read back what save_extra wrote (nothing by default)."""

    def extra_state_bytes(self) -> int:
        """Bytes of trained state the method holds besides the policy (e.g. a value model and its optimiser)."""
        return 0


def skipped_update(reason: str, scheduler) -> dict:
    """Metrics of a step that had nothing to train on: no optimiser step, but the schedule advances
    so the learning rate keeps following the step count."""
    if scheduler is not None:
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    return {"loss": None, "grad_norm": None, "tokens_backpropagated": 0, "skipped_updates": 0,
            "trailing_skips": 0, "optimizer_steps": 0, "no_data_reason": reason}
