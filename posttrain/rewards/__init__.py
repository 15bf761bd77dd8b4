"""Rewards for online RL trainers: the reward-function contract, built-ins, reward models, specs.

``fn(prompts, completions, **columns) -> list[float | None]`` -- see :mod:`posttrain.rewards.base`.
"""

from .base import RewardError, RewardResult, RewardSet, resolve_reward, reward_name
from .builtin import BUILTIN_REWARDS, arithmetic, final_answer, length, regex, sentiment
from .model import RewardModelScorer

__all__ = ["BUILTIN_REWARDS", "RewardError", "RewardModelScorer", "RewardResult", "RewardSet", "arithmetic", "final_answer",
           "length", "regex", "resolve_reward", "reward_name", "sentiment"]
