"""Rule-based rewards: plain functions of the completion text and the example's fields.

Built-ins (`accuracy`, `format`), loading of user rewards by dotted path or file, TRL-style
batched rewards, and weighted scoring with each component kept apart for logging.
"""

from grpokit.rewards.builtin import (
    BUILTIN_REWARDS,
    DEFAULT_FORMAT_PATTERN,
    accuracy,
    format_reward,
)
from grpokit.rewards.loading import is_batched, load_reward_function
from grpokit.rewards.math_answers import (
    EXTRACT_MODES,
    answers_match,
    extract_answer,
    normalize_number,
)
from grpokit.rewards.scoring import (
    RewardComponent,
    Scores,
    build_reward_components,
    score_completions,
)

__all__ = [
    "BUILTIN_REWARDS",
    "DEFAULT_FORMAT_PATTERN",
    "EXTRACT_MODES",
    "RewardComponent",
    "Scores",
    "accuracy",
    "answers_match",
    "build_reward_components",
    "extract_answer",
    "format_reward",
    "is_batched",
    "load_reward_function",
    "normalize_number",
    "score_completions",
]
