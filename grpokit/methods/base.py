"""What every update rule shares: the data one step hands it, and the small interface the loop calls.

An online method receives `ScoredGroups` (the step's sampled completions and their verification)
and turns them into a training batch and a loss. An offline method receives rows of a fixed
dataset. Either way `update` does the optimiser step(s) through the backend it was given and
returns an `UpdateResult`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from grpokit.config import Config
from grpokit.errors import GrpokitError
from grpokit.logprobs import token_logprobs
from grpokit.sampler import Rollout


@dataclass
class ScoredGroups:
    """One online step: prompts_per_step groups of group_size completions, verified."""

    rollout: Rollout
    rewards_B: torch.Tensor  # (B,) total reward of each completion
    # (B,) bool: verified and online.pass_reward >= online.pass_threshold (None: no such reward in this run)
    passed_B: torch.Tensor | None
    group_size: int
    # (B,) bool: every reward could be computed (no error or timeout). An unscored completion is
    # unknown, not wrong: no baseline, pair or loss uses it. None: all scored.
    scored_B: torch.Tensor | None = None


@dataclass
class UpdateResult:
    """What one `update` did: the step's metrics (floats, None where not measured) and, for methods
    with per-completion advantages, those advantages (for rollouts.jsonl)."""

    metrics: dict
    advantages_B: torch.Tensor | None = None


class Method:
    """Base of every update rule. Subclasses set their traits and implement `update`.

    Traits, read by the loop, the input checks, `doctor`, `compare` and the launch check, so no
    list of method names lives anywhere else:
    """

    online: bool = True  # samples and verifies every step (else: trains on a fixed dataset)
    trains_on_passed: bool = False  # its data are the completions that passed online.pass_reward
    offline_rows: str | None = None  # what a fixed dataset's rows must hold: "completion" or "pairs"
    min_group_size: int = 1  # it compares completions within a group
    dynamic_sampling: bool = True  # dropping all-equal groups keeps what it learns from
    can_shard: bool = False  # every process makes the same model calls (FSDP / DeepSpeed can hold it)
    trains_value_model: bool = False  # a second trained model beside the policy (PPO's critic)
    # Why it cannot train on multi-turn rollouts (environment tokens inside the completion), or None: it can.
    multi_turn_refusal: str | None = None

    def __init__(self, config: Config, model, tokenizer, backend):
        self.config, self.model, self.tokenizer, self.backend = config, model, tokenizer, backend
        self.device = next(model.parameters()).device
        self.step = 0  # set by the loop before each update (seeds per-step randomness, e.g. pair choice)

    @classmethod
    def needs_reference(cls, config: Config) -> bool:
        """Whether a frozen copy of the starting policy must be loaded."""
        return False

    @classmethod
    def check_config(cls, config: Config) -> None:
        """Refuse settings this method cannot honour (before any model loads)."""
        name, G = config.train.method, config.sampling.group_size
        if G < cls.min_group_size:
            raise GrpokitError(f"config key 'sampling.group_size' must be at least {cls.min_group_size} for {name} "
                               "(it compares completions within a group).")
        if config.env.name and not cls.online:
            raise GrpokitError(f"config key 'env.name' makes multi-turn rollouts, but {name} trains on a fixed "
                               "dataset and samples nothing; unset env.name or choose an online method.")
        if config.env.name and cls.multi_turn_refusal:
            raise GrpokitError(f"{name} cannot train on multi-turn rollouts (env.name is set): "
                               f"{cls.multi_turn_refusal}")
        if config.sampling.dynamic and not cls.dynamic_sampling:
            raise GrpokitError(f"sampling.dynamic drops groups whose rewards are all equal, and all-pass groups are "
                               f"exactly what {name} trains on; use it with a method that learns from reward "
                               "differences.")

    def optimizer_steps_per_step(self) -> int:
        """Policy optimiser steps one training step makes (for the learning-rate schedule)."""
        return 1

    def logprobs(self, model, batch, temperature: float = 1.0):
        """Token log-probs of `batch` under `model`, as every method computes them."""
        return token_logprobs(model, batch, temperature, self.config.train.share_prompt_forward,
                              lockstep=self.backend.collective(model))

    def update(self, optimizer, scheduler, ref_model, data) -> UpdateResult:
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
