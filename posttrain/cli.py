"""``posttrain <command>``: every config field is a flag (with its help text), ``--config run.yaml``
loads the same fields, and flags given on the command line override the file. The flags and YAML keys
are TRL's (``--model_name_or_path``, ``--dataset_name``, ``--use_peft``, ...), so a ``trl <command>``
line runs as ``posttrain <command>``."""

from __future__ import annotations

import argparse
import dataclasses
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
    parser.add_argument("--config", default=None, help=(
        "YAML file whose keys are any of these flags' names (TRL's YAML configs run unchanged; lists for list "
        "flags). A mapping under 'env' sets environment variables, as in TRL. Flags given on the command line "
        "override the file."))
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_read_config(parser, classes, known.config, command))
    try:
        *parsed, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except ValueError as err:  # a config's __post_init__ rejected a value; its message says which and why
        parser.error(str(err))
    model_args, data_args, config = parsed[:3]  # then RewardArguments (online), then the --config namespace
    if command in ONLINE:
        config.reward_args = parsed[3]
        if not config.reward_args.specs():
            parser.error("--reward_funcs is required: " + ", ".join(BUILTIN_REWARDS) + ", a module.function or "
                         "module:function, or a reward-model directory (or --reward_model_name_or_path).")
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not data_args.dataset_name:
        parser.error("--dataset_name is required (--dataset works too): a .jsonl, .json, .csv or .parquet file, a "
                     "dataset directory, or a hub dataset name.")
    if config.output_dir is None:
        config.output_dir = os.path.join("runs", command)
    return model_args, data_args, config


def _read_config(parser, classes, path: str, command: str) -> dict:
    """The flag values of a YAML config, keyed by field name: aliases (``model``, ``dataset``) map to
    their fields, and a mapping under ``env`` is set as environment variables (TRL's TrlParser does the
    same; a string ``env`` is posttrain's tool environment)."""
    with open(path, encoding="utf-8") as fh:
        values = yaml.safe_load(fh) or {}
    if not isinstance(values, dict):
        parser.error(f"{path}: a config file must be a YAML mapping of flag names to values, got "
                     f"{type(values).__name__}.")
    if isinstance(values.get("env"), dict):
        for key, value in values.pop("env").items():
            os.environ[str(key)] = str(value)
    aliases = {alias.lstrip("-"): f.name for cls in classes for f in dataclasses.fields(cls)
               for alias in f.metadata.get("aliases", [])}
    valid = {a.dest for a in parser._actions}
    resolved, given_as = {}, {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if name in resolved:
            parser.error(f"{path}: {given_as[name]!r} and {key!r} are the same setting; keep one.")
        resolved[name], given_as[name] = value, key
    unknown = sorted(set(resolved) - valid)
    if unknown:
        parser.error(f"{path}: unknown key(s) {unknown}; every key must be a flag name of "
                     f"'posttrain {command} --help'.")
    return resolved


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="posttrain", description="Post-train transformer language models.")
    top.add_argument("command", choices=[*COMMANDS, "demo", "judge"], help="; ".join(
        [f"{k}: {v[3]}" for k, v in COMMANDS.items()] + ["demo: the offline end-to-end pipeline",
                                                          "judge: win rates and ratings of models by a judge"]))
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # reward/environment import specs find the user's modules, as with python -m
    if command not in COMMANDS and command not in ("demo", "judge"):
        top.error(f"unknown command {command!r}; choose from {[*COMMANDS, 'demo', 'judge']}")
    try:
        if command == "demo":
            from .demo import main as demo_main

            return demo_main(rest)
        if command == "judge":
            from .eval.judges import judge_main

            return judge_main(rest)
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
