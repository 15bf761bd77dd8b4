"""Configuration shared by every trainer and the CLI: flat dataclasses whose fields carry help text,
so each field is a CLI flag and a YAML key for free (transformers.HfArgumentParser)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments


@dataclass
class ModelArguments:
    """Which model to start from, in which dtype, and whether to train a LoRA adapter on it."""

    model: str = field(default="tiny:llama", metadata={
        "help": "Model to start from: 'tiny:<arch>[-5m|-50m]' (offline, arch in llama/gpt2/qwen2/t5), "
                "a hub name, or a local directory saved with save_pretrained."})
    dtype: str | None = field(default=None, metadata={
        "help": "dtype to load the weights in: float32, bfloat16, float16 or auto (the checkpoint's). "
                "Default: the checkpoint's dtype for saved models, float32 for tiny ones. Mixed precision "
                "training is --bf16/--fp16."})
    use_lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "Comma-separated module names to adapt (e.g. 'q_proj,v_proj'), or 'all-linear'."})

    def peft_config(self, task_type: str):
        """A peft.LoraConfig when ``use_lora`` is set, else None."""
        if not self.use_lora:
            return None
        import peft

        targets = self.lora_target_modules
        return peft.LoraConfig(
            r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, task_type=task_type,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")])


@dataclass
class DataArguments:
    """Where the training (and optional evaluation) rows come from."""

    dataset: str = field(default=None, metadata={
        "help": "Training data: a .jsonl, .json, .csv or .parquet file (required)."})
    eval_dataset: str | None = field(default=None, metadata={
        "help": "Evaluation data file in the same format; or use --eval_fraction."})
    eval_fraction: float = field(default=0.0, metadata={
        "help": "Hold out this fraction of --dataset for evaluation (seeded by --seed) when no "
                "--eval_dataset is given."})


@dataclass
class PostTrainConfig(TrainingArguments):
    """Fields every posttrain trainer adds to transformers.TrainingArguments (which brings
    checkpointing, resume, accumulation, mixed precision, logging integrations and accelerate)."""

    max_length: int | None = field(default=1024, metadata={
        "help": "Longest tokenized example; longer ones are truncated on --truncation_side."})
    extra_columns: str = field(default="error", metadata={
        "help": "What to do with dataset columns the format does not use: 'error' (default) or 'drop'."})
    logging_steps: float = field(default=10, metadata={
        "help": "Log every N optimizer steps (or a fraction of the run if < 1)."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Initial AdamW learning rate."})
    save_total_limit: int | None = field(default=2, metadata={
        "help": "Keep at most this many checkpoints in output_dir (oldest deleted first)."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Switch dropout off in the model (and DPO's reference model): dropout modules, attention "
                "dropout rates and the config's dropout fields are set to 0, so the saved config records 0. "
                "Default True for every posttrain trainer, SFT included; TRL defaults to True for DPO, KTO "
                "and reward but its SFTConfig has no such field and keeps the model's dropout. A LoRA "
                "adapter from --use_lora keeps its --lora_dropout."})

    def __post_init__(self):
        if self.extra_columns not in ("error", "drop"):
            raise ValueError(f"extra_columns must be 'error' or 'drop', got {self.extra_columns!r}.")
        # Our collators emit the columns the loss needs; the Trainer must not prune them.
        self.remove_unused_columns = False
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; avoids a warning per epoch
        super().__post_init__()
