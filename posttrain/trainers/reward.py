"""Reward modeling: a one-label sequence classifier trained on preference pairs.

Recipe: preference rows -> prompt / chosen / rejected ids -> one batch of 2B sequences (chosen
then rejected) -> one forward pass -> scalar rewards -> Bradley-Terry loss (+ margin, + centering).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import PostTrainConfig, check_padding, non_negative, unimplemented
from ..data.collate import PreferenceCollator
from ..data.tokenize import tokenize_preference_row
from ..losses import bradley_terry_loss
from .base import PostTrainer


@dataclass
class RewardConfig(PostTrainConfig):
    """Reward-model settings (on top of transformers.TrainingArguments), with TRL 1.16's names and defaults."""

    learning_rate: float = field(default=1e-4, metadata={"help": "Initial AdamW learning rate (TRL's default)."})
    center_rewards_coefficient: float | None = field(default=None, metadata={
        "help": "Weight of the reward-centering term mean((r_chosen + r_rejected)^2) "
                "(Eisenstein et al., 2023); None (TRL's default) or 0 disables it. 0.01 is a common value."})
    max_length: int | None = field(default=1024, metadata={
        "help": "Longest prompt + answer, in tokens: longer answers are cut to fit (posttrain keeps the row; "
                "TRL 1.16 drops pairs where either sequence is longer). None: no limit."})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Keep only the last N prompt tokens (answers are then cut to fit max_length) (posttrain)."})
    pad_to_multiple_of: str | None = field(default="auto", metadata={
        "help": "TRL: pad to a multiple of N. Only 'auto' (no padding except on Neuron) and None are supported."})
    # ---- TRL options posttrain does not implement ---------------------------------------------------
    chat_template_path: str | None = unimplemented(None, "a tokenizer or Jinja file whose chat template to use.")
    eos_token: str | None = unimplemented(None, "the end-of-turn token (default: the tokenizer's).")
    pad_token: str | None = unimplemented(None, "deprecated in TRL; set tokenizer.pad_token instead.")

    RANGES = {"center_rewards_coefficient": non_negative(none="off")}

    def __post_init__(self):
        check_padding(self)
        super().__post_init__()


class RewardTrainer(PostTrainer):
    """Train ``AutoModelForSequenceClassification`` (one label) on prompt/chosen/rejected rows.

    Rows may carry a ``margin`` column: the loss then asks chosen to beat rejected by that much.
    TRL's signature: ``RewardTrainer(model, args=None, data_collator=None, train_dataset=None,
    eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
    optimizers=(None, None), optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None,
    peft_config=None)``. Logs TRL's metrics: accuracy, margin, min_reward, mean_reward, max_reward.
    """

    method = "reward"
    task = "seq-cls"
    formats = ("preference", "implicit_preference")
    loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by accumulation steps

    def __init__(self, model, args: RewardConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None,
                 quantization_config=None, peft_config=None, **kwargs):
        args = args if args is not None else RewardConfig()
        if not isinstance(args, RewardConfig):
            raise TypeError(f"RewardTrainer needs a posttrain RewardConfig as args, got "
                            f"{type(args).__module__}.{type(args).__name__}; import it from posttrain too.")
        if quantization_config is not None:  # TRL 0.x's argument: the base is loaded quantized
            if not isinstance(model, str):
                raise ValueError("quantization_config applies when the model is loaded: pass the model by name or "
                                 "directory, or load it quantized yourself (load_model(..., quantization_config=...)).")
            args.model_init_kwargs = {**(args.model_init_kwargs or {}), "quantization_config": quantization_config}
        super().__init__(model, args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, peft_config=peft_config, data_collator=data_collator,
                         callbacks=callbacks, compute_metrics=compute_metrics, optimizers=optimizers,
                         optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
                         preprocess_logits_for_metrics=preprocess_logits_for_metrics, **kwargs)
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
        loss = bradley_terry_loss(chosen, rejected, inputs.get("margin"), self.args.center_rewards_coefficient or 0.0)
        both = rewards.detach()
        self.record(accuracy=(chosen > rejected).float().mean(), margin=(chosen - rejected).mean(),
                    min_reward=both.min(), mean_reward=both.mean(), max_reward=both.max())
        self.count_tokens(inputs["attention_mask"].sum())
        return (loss, {"rewards_chosen": chosen, "rewards_rejected": rejected}) if return_outputs else loss
