"""Settings every online trainer (PPO, GRPO, RLOO, ReST) shares: ``transformers.TrainingArguments``
(logging, ``report_to``, saving, evaluation, seed, precision, ``push_to_hub``) plus the sampling and
batching settings of TRL's GRPOConfig, with TRL's names, meanings and defaults.

Batching, as in TRL: ``per_device_train_batch_size`` counts *completions* per forward/backward pass;
each generation samples ``per_device_train_batch_size x steps_per_generation`` completions per
process (``num_generations`` of each prompt for the group methods), and an optimizer step takes
``gradient_accumulation_steps`` such micro-batches. ``num_iterations`` passes are made over every
generation (PPO's epochs, GRPO's mu). ``max_steps`` counts optimizer steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..config import SharedConfig, integer, interval, non_negative, rule
from ..rollout import SamplingConfig
from ..rollout.sampling import BACKENDS

GENERATION_KWARGS = ("min_new_tokens", "stop_strings")  # what generation_kwargs may set besides the fields


@dataclass
class OnlineConfig(SharedConfig, TrainingArguments):
    output_dir: str | None = field(default=None, metadata={
        "help": "Where checkpoints, logs and the final model go (default: runs/<method>)."})
    logging_steps: float = field(default=10, metadata={
        "help": "Log every N optimizer steps (or this fraction of the run if < 1). TRL's default (10)."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Initial AdamW learning rate (TRL's GRPO default)."})
    # ---- batching -------------------------------------------------------------------------------------
    steps_per_generation: int | None = field(default=None, metadata={
        "help": "Micro-batches of per_device_train_batch_size completions sampled per generation "
                "(default: gradient_accumulation_steps, i.e. one generation per optimizer step)."})
    generation_batch_size: int | None = field(default=None, metadata={
        "help": "Completions sampled per generation across all processes (TRL's meaning). Default: "
                "per_device_train_batch_size x processes x steps_per_generation. Give it or "
                "steps_per_generation, not both."})
    num_iterations: int = field(default=1, metadata={
        "help": "Optimisation passes over each generation (GRPO's mu; PPO's epochs, TRL's num_ppo_epochs)."})
    # ---- sampling -------------------------------------------------------------------------------------
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Keep only the last N tokens of longer prompts (None: never truncate, as TRL). Truncated "
                "prompts are counted in the log (truncated_prompts)."})
    max_completion_length: int = field(default=512, metadata={"help": "Longest completion, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1.0: off)."})
    top_k: int = field(default=0, metadata={"help": "Sample among the k likeliest tokens (0: all)."})
    min_p: float | None = field(default=None, metadata={
        "help": "Drop tokens whose probability is below min_p x the likeliest token's (None: off)."})
    generation_kwargs: dict | str | None = field(default=None, metadata={
        "help": "More generation settings, a dict (a JSON string on the command line): min_new_tokens, "
                "stop_strings (a list of strings that end a completion)."})
    generation_backend: str = field(default="posttrain", metadata={
        "help": "How completions are sampled. posttrain: its own decoding loop (each distinct prompt prefilled once "
                "and its KV cache copied to the group's G rows; log-probs and values taken from the sampling step "
                "where they equal a fresh forward, i.e. float32 without autocast; finished rows dropped from the "
                "batch). transformers: model.generate, then a forward for the log-probs. compiled: model.generate "
                "with a static cache and a torch.compile'd decoding step (recompiles for every new shape). posttrain and "
                "transformers draw the same tokens from the same seed. Not in TRL (generate or vLLM)."})
    # ---- reference and rewards ----------------------------------------------------------------------
    reference: str = field(default="auto", metadata={
        "help": "Reference model for the KL term: copy (a frozen copy of the starting policy), adapter (a LoRA "
                "policy with its adapter off: no second copy), none, or auto (adapter for LoRA, else copy). "
                "Not in TRL, which picks as auto does."})
    reward_weights: list[float] | None = field(default=None, metadata={
        "help": "A weight per reward function (default: 1 each); the reward is their weighted sum."})
    nonfinite_rewards: str = field(default="error", metadata={
        "help": "A reward that is NaN, infinite or beyond +-1e15 (where float32 statistics overflow): 'error' "
                "(default: stop, naming the reward function and the sample) or 'skip' (treat it as None: the "
                "sample is dropped, and counted in the logs as nonfinite_rewards). Not in TRL.",
        "choices": ["error", "skip"]})
    max_unscored_generations: int = field(default=3, metadata={
        "help": "Stop with an error after this many generations in a row in which no completion got a reward "
                "(every reward function returned None for every sample: nothing to learn from). 0: never stop. "
                "Not in TRL."})
    prefix_sharing: bool | None = field(default=None, metadata={
        "help": "GRPO/RLOO (posttrain): compute each prompt once per group in the policy and reference forwards, "
                "one row prompt + completion_1 + ... + completion_G with a mask that lets each completion see the "
                "prompt and itself only (the same log-probs to rounding; less work when prompts are long). Needs "
                "micro-batches of whole groups (per_device_train_batch_size a multiple of num_generations), a "
                "decoder-only model and sdpa or eager attention. None (default): on wherever those hold; True: "
                "an error where they do not; False: off (TRL's computation). As DPO's prefix_sharing."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Turn dropout off in the policy so sampling-time and update-time log-probs agree. posttrain's "
                "default is True; TRL's GRPO/RLOO default is False (then the importance ratio is noisy)."})

    RANGES = {
        "num_iterations": integer(1),
        "max_completion_length": integer(1),
        "steps_per_generation": integer(1, none="gradient_accumulation_steps"),
        "generation_batch_size": integer(1, none="from steps_per_generation"),
        "temperature": non_negative(note=" (0: greedy)"),
        "top_p": interval(0, 1, "(]", note=" (1: off)"),
        "top_k": integer(0, note=" (0: off)"),
        "min_p": interval(0, 1, none="off"),
        "reward_weights": rule(lambda v: all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                             and math.isfinite(w) for w in v), "a list of finite numbers",
                               none="1 each"),
        "max_unscored_generations": integer(0, note=" (0: never stop)"),
    }

    def __post_init__(self):
        self.resolve_shared()  # checks RANGES; refuses TRL fields posttrain lacks (trl_fields.py) unless at default
        if self.nonfinite_rewards not in ("error", "skip"):
            raise ValueError(f"nonfinite_rewards must be 'error' or 'skip', got {self.nonfinite_rewards!r}.")
        if isinstance(self.generation_kwargs, str):
            try:
                self.generation_kwargs = json.loads(self.generation_kwargs)
            except json.JSONDecodeError as err:
                raise ValueError(f"generation_kwargs must be a JSON object, got {self.generation_kwargs!r}: {err}.") from err
        for name in ("num_iterations", "max_completion_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.steps_per_generation is not None and self.steps_per_generation < 1:
            raise ValueError(f"steps_per_generation must be >= 1, got {self.steps_per_generation}.")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1 or None (no truncation), got {self.max_prompt_length}.")
        epsilons = [getattr(self, "epsilon", 1), getattr(self, "epsilon_high", None)]  # GRPO and RLOO's clip ranges
        if any(e is not None and not e > 0 for e in epsilons):
            raise ValueError(f"epsilon and epsilon_high must be > 0, got {epsilons[0]} and {epsilons[1]}.")
        if getattr(self, "beta", 0) < 0 or not math.isfinite(getattr(self, "beta", 0)):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}.")
        unknown = sorted(set(self.generation_kwargs or {}) - set(GENERATION_KWARGS))
        if unknown:
            raise ValueError(f"generation_kwargs {unknown} are not supported; valid keys: {GENERATION_KWARGS}.")
        if self.output_dir is None:
            self.output_dir = f"runs/{type(self).__name__.removesuffix('Config').lower()}"
        super().__post_init__()
        if self.generation_batch_size is not None:
            if self.steps_per_generation is not None:
                raise ValueError("Give generation_batch_size or steps_per_generation, not both (as in TRL).")
            per_step = self.per_device_train_batch_size * self.world_size
            if self.generation_batch_size < 1 or self.generation_batch_size % per_step:
                raise ValueError(f"generation_batch_size ({self.generation_batch_size}) must be a positive multiple "
                                 f"of per_device_train_batch_size x processes ({per_step}).")
            self.steps_per_generation = self.generation_batch_size // per_step
        if self.steps_per_generation is None:
            self.steps_per_generation = self.gradient_accumulation_steps
        self.generation_batch_size = self.per_device_train_batch_size * self.world_size * self.steps_per_generation
        if self.steps_per_generation % self.gradient_accumulation_steps:
            raise ValueError(f"steps_per_generation ({self.steps_per_generation}) must be a multiple of "
                             f"gradient_accumulation_steps ({self.gradient_accumulation_steps}): a generation "
                             "is used for whole optimizer steps.")
        self.sampling()  # validates the sampling settings
        if self.generation_backend not in BACKENDS:
            raise ValueError(f"generation_backend must be one of {BACKENDS}, got {self.generation_backend!r}.")

    def sampling(self) -> SamplingConfig:
        extra = self.generation_kwargs or {}
        return SamplingConfig(max_new_tokens=self.max_completion_length, temperature=self.temperature,
                              top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                              stop_strings=tuple(extra.get("stop_strings") or ()),
                              min_new_tokens=int(extra.get("min_new_tokens") or 0))

    def completions_per_process(self) -> int:
        """Completions each process samples per generation."""
        return self.per_device_train_batch_size * self.steps_per_generation

    def optimizer_steps_per_generation(self) -> int:
        return self.num_iterations * self.steps_per_generation // self.gradient_accumulation_steps
