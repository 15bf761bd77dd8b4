from .dpo import DPOConfig, DPOTrainer
from .grpo import GRPOConfig, GRPOTrainer
from .kto import KTOConfig, KTOTrainer
from .online_config import OnlineConfig
from .ppo import PPOConfig, PPOTrainer
from .rest import ReSTConfig, ReSTTrainer
from .reward import RewardConfig, RewardTrainer
from .rloo import RLOOConfig, RLOOTrainer
from .sft import SFTConfig, SFTTrainer

__all__ = ["DPOConfig", "DPOTrainer", "GRPOConfig", "GRPOTrainer", "KTOConfig", "KTOTrainer", "OnlineConfig",
           "PPOConfig", "PPOTrainer",
           "ReSTConfig", "ReSTTrainer", "RLOOConfig", "RLOOTrainer", "RewardConfig", "RewardTrainer", "SFTConfig", "SFTTrainer"]
