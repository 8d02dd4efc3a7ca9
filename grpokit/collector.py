"""From a step's training rows to scored groups: sample a group per prompt, verify it, and, with
dynamic sampling, sample more prompts until enough groups carry signal.

The collector knows nothing of how tokens are drawn: it calls a `Sampler` (the local loop or vLLM)
and a reward scorer. Every process collects its own share of a step's groups.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch

from grpokit.advantages import zero_variance_groups
from grpokit.rewards import check_error_rate
from grpokit.rewards.passing import ENV_REWARD, passed, resolve_pass_reward
from grpokit.rewards.scoring import Scores
from grpokit.sampler import Rollout, Sampler


@dataclass
class Collected:
    """One step's sampled groups: every row sampled (in sampling order), their rollout and scores,
    the groups the update trains on, and where the time went."""

    rows: list[int]
    rollout: Rollout
    scores: Scores
    kept: list[int]  # indices of the groups to train on
    seconds: dict = field(default_factory=lambda: {"sampling": 0.0, "scoring": 0.0})
    rounds: int = 0


class RolloutCollector:
    def __init__(self, config, inputs, sampler: Sampler, scorer, run, world):
        self.config, self.inputs, self.sampler, self.scorer, self.run, self.world = \
            config, inputs, sampler, scorer, run, world
        self.pass_key = resolve_pass_reward(config.online.pass_reward, inputs.components,  # checked in inputs
                                            env=bool(config.env.name))

    def without_signal(self, scores: Scores) -> torch.Tensor:
        """(N,) bool: groups dynamic sampling drops. Only verified completions count (an unscored one is
        unknown), and what must differ is sampling.dynamic_filter: the total reward or the pass verdict."""
        G = self.config.sampling.group_size
        if self.config.sampling.dynamic_filter == "pass":
            values = passed(scores, self.pass_key, self.config.online.pass_threshold).float()
        else:
            values = torch.tensor(scores.total)
        return zero_variance_groups(values.view(-1, G), torch.tensor(scores.verified()).view(-1, G))

    def collect(self, step: int, rows: list[int]) -> Collected:
        """Scored groups for these rows (this process's share of the step)."""
        collected = Collected(rows, None, None, list(range(len(rows))))
        collected.rollout, collected.scores = self._sample_and_score(step, rows, collected)
        if self.config.sampling.dynamic:
            self._dynamic_sampling(step, collected)
        return collected

    def _sample_and_score(self, step: int, rows: list[int], collected: Collected) -> tuple[Rollout, Scores]:
        """A group of completions for each of these training rows, scored. Every process logs its
        own reward failures (each scores its own groups)."""
        c, G = self.config, self.config.sampling.group_size
        t0 = time.perf_counter()
        prompts = [self.inputs.train_prompts[r] for r in rows]
        rollout = self.sampler.sample(prompts, G, rows=[self.inputs.train[r].reward_fields() for r in rows])
        t1 = time.perf_counter()
        examples = [self.inputs.train[r] for r in rows for _ in range(G)]
        scores = self.scorer.score([p for p in prompts for _ in range(G)], rollout.completions,
                                   [ex.reward_fields() for ex in examples])
        if rollout.env_rewards is not None and any(r is not None for r in rollout.env_rewards):
            scores = scores.with_component(ENV_REWARD, rollout.env_rewards)  # the environment's own reward
        if scores.errors:  # logged before the error-rate check, whose message points here
            rank = {"rank": self.world.rank} if self.world.size > 1 else {}
            self.run.append(self.run.errors_path, [{"step": step, **rank, **e} for e in scores.errors],
                            every_process=True)
        check_error_rate(scores, c.verify.max_error_rate)  # before the update: never step on a broken verifier
        collected.seconds["sampling"] += t1 - t0
        collected.seconds["scoring"] += time.perf_counter() - t1
        collected.rounds += 1
        return rollout, scores

    def _dynamic_sampling(self, step: int, collected: Collected) -> None:
        """DAPO's dynamic sampling: while fewer than prompts_per_step groups have signal (`without_signal`),
        sample groups for more training prompts (at most sampling.max_rounds rounds in all).

        Leaves in `collected` every row sampled, their rollout and scores (in sampling order), and
        the groups to train on: the first prompts_per_step groups with signal, or, if no group has
        any, the first round's groups (the update then sees what it would have seen without dynamic
        sampling). The extra prompts are drawn by a generator seeded by (seed, step, round), so a
        resumed run draws the same ones. With several processes each round is decided together:
        every process says how many prompts it still needs, one draw from the prompts no process
        has used this step is split between them, and the rounds end for all when nobody needs more.
        """
        c, rows = self.config, collected.rows
        want = len(rows)  # this process's share of the step
        parts = [(rows, collected.rollout, collected.scores)]
        used = {r for process_rows in self.world.gather(rows) for r in process_rows}  # step-wide
        for round_ in range(1, c.sampling.max_rounds):
            flat = torch.cat([self.without_signal(s) for _, _, s in parts])
            with_signal = int((~flat).sum())
            rate = max(with_signal / len(flat), 0.25)  # expected share of new groups with signal
            need = 0 if with_signal >= want else min(want, math.ceil((want - with_signal) / rate))
            needs = self.world.gather(need)
            pool = [r for r in range(len(self.inputs.train_prompts)) if r not in used]
            draw = random.Random(f"dynamic/{c.train.seed}/{step}/{round_}").sample(pool, min(len(pool), sum(needs)))
            if not draw:  # nobody needs more, or no prompt is left
                break
            start = sum(needs[: self.world.rank])
            more = draw[start: start + need]
            used.update(draw)
            if more:
                parts.append((more, *self._sample_and_score(step, more, collected)))
        if len(parts) > 1:
            collected.rows = [r for part_rows, _, _ in parts for r in part_rows]
            collected.rollout = Rollout.concat([r for _, r, _ in parts])
            collected.scores = Scores.concat([s for _, _, s in parts])
        signal = (~self.without_signal(collected.scores)).nonzero().flatten().tolist()
        collected.kept = signal[:want] or list(range(want))
