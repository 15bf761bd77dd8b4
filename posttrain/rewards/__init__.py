"""Rewards for online RL trainers: the reward-function contract, built-ins, reward models, specs.

Reward functions are called with keywords, TRL-style:
``fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., **columns) -> list[float | None]``
-- see :mod:`posttrain.rewards.base`.
"""

from .base import RewardError, RewardResult, RewardSet, completion_text, resolve_reward, reward_name
from .builtin import BUILTIN_REWARDS, arithmetic, final_answer, length, non_toxic, regex, sentiment, toxicity
from .model import RewardModelScorer

__all__ = ["BUILTIN_REWARDS", "RewardError", "RewardModelScorer", "RewardResult", "RewardSet", "arithmetic",
           "completion_text", "final_answer", "length", "non_toxic", "regex", "resolve_reward", "reward_name", "sentiment",
           "toxicity"]
