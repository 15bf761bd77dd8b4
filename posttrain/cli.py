"""``posttrain <command>``: every config field is a flag (with its help text), ``--config run.yaml``
loads the same fields, and flags given on the command line override the file."""

from __future__ import annotations

import argparse
import os
import sys
import time

import yaml
from transformers import HfArgumentParser

from .config import DataArguments, ModelArguments
from .data.formats import DataFormatError
from .rewards import BUILTIN_REWARDS
from .run import COMMANDS, ONLINE, RewardArguments, run_training, summary


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
        if not config.reward_args.reward_funcs:
            parser.error("--reward_funcs is required: " + ", ".join(BUILTIN_REWARDS) + ", a module:function, or a "
                         "reward-model directory.")
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not data_args.dataset:
        parser.error("--dataset is required: a .jsonl, .json, .csv or .parquet file.")
    if config.output_dir is None:
        config.output_dir = os.path.join("runs", command)
    return model_args, data_args, config


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
