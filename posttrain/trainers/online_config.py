"""Settings every online trainer (PPO, GRPO, RLOO) shares. A plain dataclass, not TrainingArguments:
online training runs its own loop (generate, score, update), so only flags that loop honours exist."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..rollout import SamplingConfig


@dataclass
class OnlineConfig:
    output_dir: str = field(default="runs/online", metadata={"help": "Where checkpoints and the model go."})
    seed: int = field(default=0, metadata={"help": "Seed for prompt order, sampling and initialisation."})
    max_steps: int = field(default=100, metadata={
        "help": "Number of steps; each step samples a batch of prompts, scores it and updates the policy."})
    per_device_batch_size: int = field(default=8, metadata={
        "help": "Prompts per step on each process (GRPO/RLOO sample num_generations completions for each)."})
    mini_batch_size: int | None = field(default=None, metadata={
        "help": "Episodes per optimizer step (default: the whole batch: one optimizer step per epoch)."})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "Split each mini-batch into this many forward/backward passes (same result, less memory)."})
    num_epochs: int = field(default=1, metadata={
        "help": "Passes over each batch of episodes (PPO epochs; GRPO's num_iterations)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate."})
    lr_scheduler_type: str = field(default="constant", metadata={
        "help": "transformers scheduler name: constant, linear, cosine, constant_with_warmup, ..."})
    warmup_steps: int = field(default=0, metadata={"help": "Optimizer steps of linear learning-rate warmup."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient clipping norm (None: off)."})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast (mixed precision)."})
    max_prompt_length: int | None = field(default=256, metadata={"help": "Keep only the last N prompt tokens."})
    max_new_tokens: int = field(default=32, metadata={"help": "Longest completion, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0: greedy)."})
    top_k: int = field(default=0, metadata={"help": "Sample among the k likeliest tokens (0: all)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1.0: off)."})
    min_new_tokens: int = field(default=0, metadata={
        "help": "Shortest completion: eos is suppressed until this many tokens (0: off)."})
    stop_strings: list[str] = field(default_factory=list, metadata={
        "help": "Strings that end a completion (besides the eos token)."})
    reference: str = field(default="auto", metadata={
        "help": "Reference model for the KL term: copy (a frozen copy), adapter (LoRA policy with the "
                "adapter off), none, or auto (adapter for LoRA, else copy; none when no KL is used)."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Turn dropout off in the policy, so sampling-time and update-time log-probs agree."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N steps."})
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N steps (0: only the final model)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "A checkpoint directory to continue from, or 'last' for the newest in output_dir."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})

    def __post_init__(self):
        if self.mini_batch_size is not None and self.mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {self.mini_batch_size}.")
        for name in ("max_steps", "per_device_batch_size", "gradient_accumulation_steps", "num_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        self.sampling()  # validates the sampling settings

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, stop_strings=tuple(self.stop_strings),
                              min_new_tokens=self.min_new_tokens)

    def episodes_per_step(self) -> int:
        """Episodes each process samples per step (GRPO/RLOO multiply by num_generations)."""
        return self.per_device_batch_size
