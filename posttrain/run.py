"""Running a training command end to end: build the trainer for a command, train, evaluate, save, and
a one-line summary. What ``posttrain <command>`` and ``posttrain demo`` both call (neither imports the
other)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

from transformers import PrinterCallback, ProgressCallback

from .checkpoint import finished_step, has_complete_model, resolve_resume
from .output_dir import output_dir_lock
from .config import DataArguments, ModelArguments
from .data.formats import DataFormatError, load_rows, load_splits
from .rewards import BUILTIN_REWARDS
from .trainers import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, KTOConfig, KTOTrainer, PPOConfig,
                       PPOTrainer, ReSTConfig, ReSTTrainer, RewardConfig, RewardTrainer, RLOOConfig, RLOOTrainer, SFTConfig, SFTTrainer)

COMMANDS = {
    "sft": (SFTTrainer, SFTConfig, "causal-lm", "Supervised fine-tuning on text, prompt/completion or messages."),
    "reward": (RewardTrainer, RewardConfig, "seq-cls", "Train a reward model on prompt/chosen/rejected pairs."),
    "dpo": (DPOTrainer, DPOConfig, "causal-lm", "Preference optimisation on prompt/chosen/rejected pairs "
            "(DPO, cDPO, robust, IPO, hinge, SimPO, ORPO: --loss_type)."),
    "kto": (KTOTrainer, KTOConfig, "causal-lm", "KTO on unpaired prompt/completion/label rows (paired "
            "prompt/chosen/rejected rows are unpaired first, as TRL)."),
    "ppo": (PPOTrainer, PPOConfig, "causal-lm", "PPO with a value head and a KL penalty, on prompts, "
            "against --reward_funcs."),
    "grpo": (GRPOTrainer, GRPOConfig, "causal-lm", "GRPO: G samples per prompt, group-normalised advantages."),
    "rloo": (RLOOTrainer, RLOOConfig, "causal-lm", "RLOO: G samples per prompt, leave-one-out baselines."),
    "rest": (ReSTTrainer, ReSTConfig, "causal-lm", "ReST: grow samples from the policy, fine-tune on the "
             "best ones with rising thresholds."),
}
ONLINE = ("ppo", "grpo", "rloo", "rest")


@dataclass
class RewardArguments:
    """What scores the completions of online training."""

    reward_funcs: list[str] = field(default_factory=list, metadata={
        "aliases": ["--reward"],
        "help": "One or more reward functions (TRL's --reward_funcs; --reward works too): a built-in ("
                + "; ".join(f"{k}: {v}" for k, v in BUILTIN_REWARDS.items()) + "); a function by import path, "
                "'package.module.function' (TRL's spelling) or 'package.module:function', looked up from the "
                "working directory too; a TRL reward by name (think_format_reward, accuracy_reward, "
                "reasoning_accuracy_reward, get_soft_overlong_punishment: needs trl installed); or a "
                "reward-model directory (e.g. saved by posttrain reward)."})
    reward_model_name_or_path: str | None = field(default=None, metadata={
        "help": "A reward model (a directory saved with save_pretrained, e.g. by posttrain reward), scored "
                "before the --reward_funcs, as TRL's GRPO/RLOO scripts do."})
    env: str | None = field(default=None, metadata={
        "help": "Roll out in a tool environment instead of plain sampling: 'calculator' (built in), or "
                "'package.module:factory', a function returning a posttrain TextEnvironment. (In a YAML "
                "--config, a mapping under 'env' sets environment variables instead, as in TRL.)"})

    def specs(self) -> list[str]:
        """The reward model (if any) then the reward functions, as spec strings."""
        return [self.reward_model_name_or_path] * bool(self.reward_model_name_or_path) + list(self.reward_funcs)


def _split(data_args: DataArguments, config):
    """Training and evaluation rows. Evaluation data, first found: --eval_dataset, --eval_fraction of the
    training split, or (as TRL's scripts) the --dataset_test_split split when --eval_strategy is not 'no'."""
    splits = load_splits(data_args.dataset_name, data_args.dataset_config)
    train = load_rows(splits, data_args.dataset_train_split)
    if data_args.eval_dataset:
        evals = load_splits(data_args.eval_dataset, data_args.dataset_config)
        if data_args.dataset_test_split not in evals and len(evals) == 1:
            return train, next(iter(evals.values()))
        return train, load_rows(evals, data_args.dataset_test_split)
    if data_args.eval_fraction > 0:
        parts = train.train_test_split(test_size=data_args.eval_fraction, seed=config.seed)
        return parts["train"], parts["test"]
    if config.eval_strategy != "no":
        if data_args.dataset_test_split not in splits:
            raise DataFormatError(
                f"eval_strategy={getattr(config.eval_strategy, 'value', config.eval_strategy)!r} needs evaluation data, but {data_args.dataset_name!r}"
                f" has no split {data_args.dataset_test_split!r} (it has {list(splits)}). Pass --eval_dataset, "
                "--eval_fraction or another --dataset_test_split, or --eval_strategy no.")
        return train, splits[data_args.dataset_test_split]
    return train, None


def run_training(command: str, model_args: ModelArguments, data_args: DataArguments, config, callbacks=None,
                 bar_only: bool = False):
    """Build the trainer for ``command``, train, evaluate, save to ``config.output_dir``; returns the trainer.

    ``callbacks``: ``transformers.TrainerCallback`` objects (every trainer takes them). ``bar_only``: show
    the progress bar (with the latest loss, or reward and KL) but do not print every log entry.

    The run holds ``config.output_dir`` from start to end (``output_dir.output_dir_lock``: a second run into it
    fails at once, an unwritable or full disk fails before training); resuming a run that already ended does
    no work, and keeps the final model already saved."""
    with output_dir_lock(config.output_dir, overwrite=bool(getattr(config, "overwrite_output_dir", False)),
                         save_total_limit=config.save_total_limit, enabled=int(os.environ.get("RANK", "0")) == 0):
        return _run_training(command, model_args, data_args, config, callbacks, bar_only)


def _run_training(command, model_args, data_args, config, callbacks, bar_only):
    from .models.loading import is_encoder_decoder, load_model, load_tokenizer

    trainer_cls, _, task, _ = COMMANDS[command]
    train_rows, eval_rows = _split(data_args, config)
    online = command in ONLINE
    if eval_rows is not None and config.eval_strategy == "no" and command != "rest":
        config.eval_strategy = "steps"
        config.eval_steps = config.eval_steps or config.logging_steps
    name = model_args.model_name_or_path
    model = load_model(name, task, seed=config.seed, **model_args.model_init_kwargs(config.trust_remote_code))
    model.config.name_or_path = name
    if online and is_encoder_decoder(model):
        task = "seq2seq"
    tokenizer = load_tokenizer(name, revision=model_args.model_revision, trust_remote_code=config.trust_remote_code)
    kwargs = dict(train_dataset=train_rows, eval_dataset=eval_rows, callbacks=callbacks, processing_class=tokenizer,
                  peft_config=model_args.peft_config(task))
    if online:
        rewards = config.reward_args
        if rewards.env:
            from .rollout.environment import load_environment

            kwargs["rollout_source"] = load_environment(rewards.env)
        trainer = trainer_cls(model, rewards.specs(), args=config, **kwargs)
    else:
        trainer = trainer_cls(model, config, **kwargs)
    trainer.dataset_name = data_args.dataset_name
    if bar_only:
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        if not config.disable_tqdm:
            trainer.add_callback(BarOnlyProgress)
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir)
    finished = finished_step(resume, trainer.state.max_steps if online else config.max_steps, config.num_train_epochs)
    trainer.eval_before = trainer.evaluate() if online and eval_rows is not None and finished is None else {}
    trainer.train(resume_from_checkpoint=resume)
    if getattr(trainer, "finished_at_start", False) and has_complete_model(config.output_dir):
        trainer.eval_after = {}  # an ended run, its final model saved: nothing to do
        return trainer
    if eval_rows is not None:
        trainer.eval_after = trainer.evaluate()
    trainer.save_model(config.output_dir)
    return trainer


class BarOnlyProgress(ProgressCallback):
    """The training progress bar with the latest loss (offline) or reward and KL (online) beside it,
    instead of a printed line per log entry."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {k: f"{logs[k]:.4g}" for k in ("loss", "reward", "kl") if k in (logs or {})}
        if state.is_world_process_zero and self.training_bar is not None and shown:
            self.training_bar.set_postfix(shown)


def online_summary(command: str, trainer, seconds: float) -> str:
    history = trainer.state.log_history
    parts = [f"posttrain {command}: saved to {trainer.args.output_dir}", f"{trainer.state.global_step} steps",
             f"{seconds:.1f}s"]
    for key in ("reward", "kl"):
        values = [e[key] for e in history if key in e]
        if values:
            parts.append(f"{key} {values[0]:.4f} -> {values[-1]:.4f}")
    for key, before in trainer.eval_before.items():
        if key in trainer.eval_after:
            parts.append(f"{key} {before:.4f} -> {trainer.eval_after[key]:.4f}")
    return " | ".join(parts)


def summary(command: str, trainer, seconds: float) -> str:
    if command in ONLINE:
        return online_summary(command, trainer, seconds)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    parts = [f"posttrain {command}: saved to {trainer.args.output_dir}", f"{trainer.state.global_step} steps",
             f"{seconds:.1f}s"]
    if losses:
        parts.append(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    metrics = trainer.final_metrics()
    for key in ("eval_loss", "eval_accuracy", "eval_mean_token_accuracy", "eval_rewards/accuracies",
                "eval_rewards/margins", "accuracy", "mean_token_accuracy", "rewards/accuracies", "rewards/margins"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4f}")
    return " | ".join(parts)


@contextmanager
def quiet_loading():
    """No progress bars for loading data and weights and no load reports (a reward model's new head is expected)
    while the block runs; the training progress bar is the trainer's own and is left alone. Restored after."""
    import datasets
    import transformers

    verbosity, data_bars = transformers.logging.get_verbosity(), datasets.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()
        if data_bars:
            datasets.enable_progress_bars()
