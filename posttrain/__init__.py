"""posttrain: post-training for transformer language models (SFT, reward modeling, and on top of them
DPO, PPO, GRPO/RLOO, ReST), offline-friendly and fast."""

__version__ = "0.1.0"

import logging

# bitsandbytes, when installed, warns at import on CPUs with AVX512-BF16 that it cannot fetch an optional hub kernel
# for its packed 4-bit inference path; posttrain keeps 4-bit layers off that path (models.loading), so say nothing.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .config import DataArguments, ModelArguments
from .eval.api_judge import APIJudge, OpenAIPairwiseJudge
from .eval.judges import BasePairwiseJudge, LLMJudge, RewardModelJudge, RuleJudge, WinRateCallback
from .eval.red_team import RedTeam
from .data.formats import DataFormatError
from .models.loading import load_model, load_tokenizer
from .models.value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from .rollout.environment import TextEnvironment
from .trainers import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, KTOConfig, KTOTrainer, PPOConfig,
                       PPOTrainer, ReSTConfig, ReSTTrainer, RewardConfig, RewardTrainer, RLOOConfig, RLOOTrainer, SFTConfig, SFTTrainer)

__all__ = ["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead", "APIJudge", "BasePairwiseJudge",
           "LLMJudge", "OpenAIPairwiseJudge", "RedTeam", "RewardModelJudge", "RuleJudge", "WinRateCallback", "DPOConfig", "DPOTrainer",
           "DataArguments", "DataFormatError", "GRPOConfig", "GRPOTrainer", "KTOConfig", "KTOTrainer", "ModelArguments",
           "PPOConfig",
           "PPOTrainer", "ReSTConfig", "ReSTTrainer", "RLOOConfig", "RLOOTrainer", "TextEnvironment", "RewardConfig", "RewardTrainer", "SFTConfig", "SFTTrainer",
           "load_model", "load_tokenizer"]
