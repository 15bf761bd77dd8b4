from .dpo import DPOConfig, DPOTrainer
from .grpo import GRPOConfig, GRPOTrainer
from .online_config import OnlineConfig
from .ppo import PPOConfig, PPOTrainer
from .rest import ReSTConfig, ReSTTrainer
from .reward import RewardConfig, RewardTrainer
from .rloo import RLOOConfig, RLOOTrainer
from .sft import SFTConfig, SFTTrainer

__all__ = ["DPOConfig", "DPOTrainer", "GRPOConfig", "GRPOTrainer", "OnlineConfig", "PPOConfig", "PPOTrainer",
           "ReSTConfig", "ReSTTrainer", "RLOOConfig", "RLOOTrainer", "RewardConfig", "RewardTrainer", "SFTConfig", "SFTTrainer"]
