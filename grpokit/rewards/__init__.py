"""Rule-based rewards: plain functions of the completion text and the example's fields.

Built-ins (`accuracy`, `format`), loading of user rewards by dotted path or file, TRL-style
batched rewards, weighted scoring with each component kept apart for logging, and scorers that
turn a failing reward into None plus a counted error (`make_scorer`; with `isolate=True` each
call runs in a worker process under a time limit).
"""

from grpokit.rewards.builtin import (
    BUILTIN_REWARDS,
    DEFAULT_FORMAT_PATTERN,
    accuracy,
    format_reward,
)
from grpokit.rewards.components import RewardComponent, build_reward_components
from grpokit.rewards.isolation import InProcessScorer, IsolatedScorer, make_scorer
from grpokit.rewards.loading import is_batched, load_reward_function
from grpokit.rewards.math_answers import (
    EXTRACT_MODES,
    answers_match,
    extract_answer,
    normalize_number,
)
from grpokit.rewards.scoring import ERROR_KINDS, Scores, check_error_rate, score_completions

__all__ = [
    "BUILTIN_REWARDS",
    "DEFAULT_FORMAT_PATTERN",
    "ERROR_KINDS",
    "EXTRACT_MODES",
    "InProcessScorer",
    "IsolatedScorer",
    "RewardComponent",
    "Scores",
    "accuracy",
    "answers_match",
    "build_reward_components",
    "check_error_rate",
    "extract_answer",
    "format_reward",
    "is_batched",
    "load_reward_function",
    "make_scorer",
    "normalize_number",
    "score_completions",
]
