"""Update rules: each turns verified groups (online) or a fixed dataset (offline) into a training
batch and a loss. The loop in `grpokit.trainer` is the same for all of them.

method       data each step                            loss                               extra models
grpo         sampled groups, verified                  clipped surrogate, group advantages  reference if grpo.beta > 0
rloo         sampled groups, verified                  same, leave-one-out baseline, no std reference if grpo.beta > 0
gspo         sampled groups, verified                  GRPO's advantages, sequence-level    reference if grpo.beta > 0
                                                       ratio clipped per sequence
cispo        sampled groups, verified                  GRPO's advantages, clipped detached  reference if grpo.beta > 0
                                                       IS weight x log-prob on every token
rft          passing sampled completions, deduplicated SFT (NLL)                            -
online_dpo   (passing, failing) pairs of one prompt    DPO                                  reference
online_orpo  (passing, failing) pairs of one prompt    ORPO                                 -
ppo          sampled completions, verified             clipped surrogate, GAE advantages    value model (+ reference
                                                                                            if ppo.kl_coef > 0)
sft          dataset completions                       SFT (NLL)                            -
dpo          dataset (chosen, rejected) pairs          DPO                                  reference
orpo         dataset (chosen, rejected) pairs          ORPO                                 -
"""

from __future__ import annotations

from grpokit.errors import GrpokitError
from grpokit.methods.base import Method, ScoredGroups, UpdateResult
from grpokit.methods.grpo import CISPO, GRPO, GSPO, RLOO
from grpokit.methods.ppo import PPO
from grpokit.methods.preference import DPO, ORPO, OnlineDPO, OnlineORPO
from grpokit.methods.sft import RFT, SFT

METHODS: dict[str, type[Method]] = {
    "grpo": GRPO, "rloo": RLOO, "gspo": GSPO, "cispo": CISPO, "rft": RFT, "online_dpo": OnlineDPO,
    "online_orpo": OnlineORPO, "ppo": PPO,
    "sft": SFT, "dpo": DPO, "orpo": ORPO,
}


def method_class(config) -> type[Method]:
    """The class of config.train.method, after its own checks of the config (before any model loads)."""
    cls = METHODS.get(config.train.method)
    if cls is None:
        raise GrpokitError(f"config key 'train.method' is {config.train.method!r}; expected one of "
                           f"{', '.join(METHODS)}.")
    cls.check_config(config)
    return cls


def online_methods() -> tuple[str, ...]:
    return tuple(name for name, cls in METHODS.items() if cls.online)


def shardable_methods() -> tuple[str, ...]:
    return tuple(name for name, cls in METHODS.items() if cls.can_shard)


__all__ = ["METHODS", "Method", "ScoredGroups", "UpdateResult", "method_class", "online_methods",
           "shardable_methods"]
