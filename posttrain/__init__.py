"""posttrain: post-training for transformer language models (SFT, reward modeling, and on top of them
DPO, PPO, GRPO/RLOO, ReST), offline-friendly and fast."""

__version__ = "0.1.0"

from .config import DataArguments, ModelArguments
from .data.formats import DataFormatError
from .models.loading import load_model, load_tokenizer
from .trainers import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

__all__ = ["DPOConfig", "DPOTrainer", "DataArguments", "DataFormatError", "ModelArguments", "RewardConfig", "RewardTrainer", "SFTConfig",
           "SFTTrainer", "load_model", "load_tokenizer"]
