"""Reward modeling: a one-label sequence classifier trained on preference pairs.

Recipe: preference rows -> prompt / chosen / rejected ids -> one batch of 2B sequences (chosen
then rejected) -> one forward pass -> scalar rewards -> Bradley-Terry loss (+ margin, + centering).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import PostTrainConfig
from ..data.collate import PreferenceCollator
from ..data.tokenize import tokenize_preference_row
from ..losses import bradley_terry_loss
from .base import PostTrainer


@dataclass
class RewardConfig(PostTrainConfig):
    """Reward-model settings (on top of transformers.TrainingArguments)."""

    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Keep only the last N prompt tokens (answers are then cut to fit --max_length)."})
    center_rewards_coefficient: float = field(default=0.0, metadata={
        "help": "Weight of the reward-centering term mean((r_chosen + r_rejected)^2) "
                "(Eisenstein et al., 2023); 0 disables it. 0.01 is a common value."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Initial AdamW learning rate."})


class RewardTrainer(PostTrainer):
    """Train ``AutoModelForSequenceClassification`` (one label) on prompt/chosen/rejected rows.

    Rows may carry a ``margin`` column: the loss then asks chosen to beat rejected by that much.
    """

    method = "reward"
    task = "seq-cls"
    formats = ("preference", "implicit_preference")
    loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by accumulation steps

    def __init__(self, model, args: RewardConfig | None = None, **kwargs):
        super().__init__(model, args or RewardConfig(), **kwargs)
        self.model_accepts_loss_kwargs = False

    def tokenize_row(self, row, index, tokenizer, fmt, args):
        return tokenize_preference_row(row, index, tokenizer, fmt, args.max_length, args.max_prompt_length)

    def tokenize_settings(self, args):
        return (args.max_length, args.max_prompt_length)

    def make_collator(self, tokenizer, args):
        return PreferenceCollator(tokenizer.pad_token_id)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rewards = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        use_cache=False).logits[:, 0]
        chosen, rejected = rewards.float().chunk(2)
        loss = bradley_terry_loss(chosen, rejected, inputs.get("margin"), self.args.center_rewards_coefficient)
        self.record(accuracy=(chosen > rejected).float().mean(), margin=(chosen - rejected).mean(),
                    reward_chosen=chosen.mean(), reward_rejected=rejected.mean())
        self.count_tokens(inputs["attention_mask"].sum())
        return (loss, {"rewards_chosen": chosen, "rewards_rejected": rejected}) if return_outputs else loss
