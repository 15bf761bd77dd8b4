from .dpo import DPOConfig, DPOTrainer
from .reward import RewardConfig, RewardTrainer
from .sft import SFTConfig, SFTTrainer

__all__ = ["DPOConfig", "DPOTrainer", "RewardConfig", "RewardTrainer", "SFTConfig", "SFTTrainer"]
