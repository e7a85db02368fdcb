"""Rewards: verifiable accuracy, tag-layout formats, and their weighted combination with plug-ins."""

from observe_r1.rewards.accuracy import Grade, accuracy_reward, extract_answer, grade
from observe_r1.rewards.compose import RewardBatch, Rewarder, RewardResult, RewardTimeoutError
from observe_r1.rewards.format import LAYOUTS, format_reward
from observe_r1.rewards.terms import RewardFunctionError, load_function

__all__ = [
    "LAYOUTS",
    "Grade",
    "RewardBatch",
    "RewardFunctionError",
    "RewardResult",
    "RewardTimeoutError",
    "Rewarder",
    "accuracy_reward",
    "extract_answer",
    "format_reward",
    "grade",
    "load_function",
]
