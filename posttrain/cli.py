"""``posttrain <command>``: every config field is a flag (with its help text), ``--config run.yaml``
loads the same fields, and flags given on the command line override the file."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser, PrinterCallback, ProgressCallback

from .config import DataArguments, ModelArguments
from .rewards import BUILTIN_REWARDS
from .data.formats import DataFormatError, load_rows
from .trainers import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer, ReSTConfig,
                       ReSTTrainer, RewardConfig, RewardTrainer, RLOOConfig, RLOOTrainer, SFTConfig, SFTTrainer)

COMMANDS = {
    "sft": (SFTTrainer, SFTConfig, "causal-lm", "Supervised fine-tuning on text, prompt/completion or messages."),
    "reward": (RewardTrainer, RewardConfig, "seq-cls", "Train a reward model on prompt/chosen/rejected pairs."),
    "dpo": (DPOTrainer, DPOConfig, "causal-lm", "Preference optimisation on prompt/chosen/rejected pairs "
            "(DPO, cDPO, robust, IPO, hinge, SimPO, ORPO: --loss_type)."),
    "kto": (DPOTrainer, DPOConfig, "causal-lm", "KTO on unpaired prompt/completion/label rows "
            "(posttrain dpo --loss_type kto)."),
    "ppo": (PPOTrainer, PPOConfig, "causal-lm", "PPO with a value head and a KL penalty, on prompts, "
            "against --reward."),
    "grpo": (GRPOTrainer, GRPOConfig, "causal-lm", "GRPO: G samples per prompt, group-normalised advantages."),
    "rloo": (RLOOTrainer, RLOOConfig, "causal-lm", "RLOO: G samples per prompt, leave-one-out baselines."),
    "rest": (ReSTTrainer, ReSTConfig, "causal-lm", "ReST: grow samples from the policy, fine-tune on the "
             "best ones with rising thresholds."),
}
ONLINE = ("ppo", "grpo", "rloo", "rest")


@dataclass
class RewardArguments:
    """What scores the completions of online training."""

    reward: list[str] = field(default_factory=list, metadata={
        "help": "One or more rewards: a built-in (" + "; ".join(f"{k}: {v}" for k, v in BUILTIN_REWARDS.items())
                + "), a 'package.module:function', or a reward-model directory (e.g. saved by posttrain reward)."})
    reward_weights: list[float] = field(default_factory=list, metadata={
        "help": "A weight per --reward (default: 1 each); the reward is their weighted sum."})
    env: str | None = field(default=None, metadata={
        "help": "Roll out in a tool environment instead of plain sampling: 'calculator' (built in), or "
                "'package.module:factory', a function returning a posttrain TextEnvironment."})


def _parse(command: str, argv: list[str]):
    config_cls = COMMANDS[command][1]
    classes = (ModelArguments, DataArguments, config_cls) + ((RewardArguments,) if command in ONLINE else ())
    parser = HfArgumentParser(classes, prog=f"posttrain {command}",
                              description=COMMANDS[command][3])
    parser.add_argument("--config", default=None, help="YAML file whose keys are any of these flags' names.")
    if command == "kto":
        parser.set_defaults(loss_type="kto")
    known, _ = parser.parse_known_args(argv)
    if known.config:
        with open(known.config, encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
        valid = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - valid)
        if unknown:
            parser.error(f"{known.config}: unknown key(s) {unknown}; every key must be a flag name of "
                         f"'posttrain {command} --help'.")
        parser.set_defaults(**values)
    *parsed, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    model_args, data_args, config = parsed[:3]  # then RewardArguments (online), then the --config namespace
    if command in ONLINE:
        config.reward_args = parsed[3]
        if not config.reward_args.reward:
            parser.error("--reward is required: " + ", ".join(BUILTIN_REWARDS) + ", a module:function, or a "
                         "reward-model directory.")
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not data_args.dataset:
        parser.error("--dataset is required: a .jsonl, .json, .csv or .parquet file.")
    if config.output_dir is None:
        config.output_dir = os.path.join("runs", command)
    return model_args, data_args, config


def _split(data_args: DataArguments, seed: int):
    train = load_rows(data_args.dataset)
    if data_args.eval_dataset:
        return train, load_rows(data_args.eval_dataset)
    if data_args.eval_fraction > 0:
        parts = train.train_test_split(test_size=data_args.eval_fraction, seed=seed)
        return parts["train"], parts["test"]
    return train, None


def run_training(command: str, model_args: ModelArguments, data_args: DataArguments, config, callbacks=None,
                 bar_only: bool = False):
    """Build the trainer for ``command``, train, save to ``config.output_dir``; returns the trainer.

    ``callbacks``: ``transformers.TrainerCallback`` objects for the offline commands, callables
    ``fn(trainer)`` run after every step for the online ones. ``bar_only``: the offline commands show
    the progress bar (with the latest loss) but do not print every log entry."""
    from .models.loading import load_model

    trainer_cls, _, task, _ = COMMANDS[command]
    train_rows, eval_rows = _split(data_args, config.seed)
    if command in ONLINE:
        return run_online(command, model_args, data_args, config, train_rows, eval_rows, callbacks)
    if eval_rows is not None and config.eval_strategy == "no":
        config.eval_strategy = "steps"
        config.eval_steps = config.eval_steps or config.logging_steps
    model = load_model(model_args.model, task, dtype=model_args.dtype, seed=config.seed)
    model.config.name_or_path = model_args.model
    trainer = trainer_cls(model, config, train_dataset=train_rows, eval_dataset=eval_rows, callbacks=callbacks,
                          peft_config=model_args.peft_config("SEQ_CLS" if task == "seq-cls" else "CAUSAL_LM"))
    trainer.dataset_name = data_args.dataset
    if bar_only:
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        if not config.disable_tqdm:
            trainer.add_callback(BarOnlyProgress)
    resume = config.resume_from_checkpoint
    if resume in ("auto", "last", "true", "True"):
        from transformers.trainer_utils import get_last_checkpoint

        resume = get_last_checkpoint(config.output_dir) if os.path.isdir(config.output_dir) else None
    trainer.train(resume_from_checkpoint=resume)
    if eval_rows is not None:
        trainer.evaluate()
    trainer.save_model(config.output_dir)
    return trainer


class BarOnlyProgress(ProgressCallback):
    """The training progress bar with the latest loss beside it, instead of a printed line per log entry."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and "loss" in (logs or {}):
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}")


def run_online(command: str, model_args: ModelArguments, data_args: DataArguments, config, train_rows, eval_rows,
               callbacks=None):
    """PPO / GRPO / RLOO / ReST on prompt rows against --reward (in --env, if given); evaluates on held-out
    prompts before and after."""
    from .models.loading import is_encoder_decoder, load_model

    trainer_cls = COMMANDS[command][0]
    task = "seq2seq" if is_encoder_decoder(model_args.model) else "causal-lm"
    model = load_model(model_args.model, task, dtype=model_args.dtype, seed=config.seed)
    model.config.name_or_path = model_args.model
    rewards = config.reward_args
    extra = {"eval_dataset": eval_rows} if command == "rest" else {}
    if rewards.env:
        from .rollout.environment import load_environment

        extra["rollout_source"] = load_environment(rewards.env)
    trainer = trainer_cls(model, config, train_dataset=train_rows, reward_funcs=rewards.reward,
                          reward_weights=rewards.reward_weights or None, callbacks=callbacks,
                          peft_config=model_args.peft_config("SEQ_2_SEQ_LM" if task == "seq2seq" else "CAUSAL_LM"),
                          **extra)
    trainer.dataset_name = data_args.dataset
    trainer.eval_before = trainer.evaluate(eval_rows) if eval_rows is not None else {}
    trainer.train()
    trainer.eval_after = trainer.evaluate(eval_rows) if eval_rows is not None else {}
    trainer.save_model(config.output_dir)
    return trainer


def online_summary(command: str, trainer, seconds: float) -> str:
    history = trainer.log_history
    parts = [f"posttrain {command}: saved to {trainer.args.output_dir}", f"{trainer.step_count} steps",
             f"{seconds:.1f}s"]
    for key in ("reward", "kl"):
        values = [e[key] for e in history if key in e]
        if values:
            parts.append(f"{key} {values[0]:.4f} -> {values[-1]:.4f}")
    for key, before in trainer.eval_before.items():
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
    for key in ("eval_loss", "eval_accuracy", "eval_mean_token_accuracy", "eval_rewards/accuracy",
                "eval_rewards/margin", "accuracy", "mean_token_accuracy", "rewards/accuracy"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4f}")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="posttrain", description="Post-train transformer language models.")
    top.add_argument("command", choices=[*COMMANDS, "demo"], help="; ".join(
        [f"{k}: {v[3]}" for k, v in COMMANDS.items()] + ["demo: the offline end-to-end pipeline"]))
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS and command != "demo":
        top.error(f"unknown command {command!r}; choose from {[*COMMANDS, 'demo']}")
    try:
        if command == "demo":
            from .demo import main as demo_main

            return demo_main(rest)
        model_args, data_args, config = _parse(command, rest)
        start = time.perf_counter()
        trainer = run_training(command, model_args, data_args, config)
        if trainer.accelerator.is_main_process:
            print(summary(command, trainer, time.perf_counter() - start))
    except DataFormatError as err:
        print(f"posttrain {command}: bad input: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
