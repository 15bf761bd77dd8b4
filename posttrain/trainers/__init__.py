from .reward import RewardConfig, RewardTrainer
from .sft import SFTConfig, SFTTrainer

__all__ = ["RewardConfig", "RewardTrainer", "SFTConfig", "SFTTrainer"]
