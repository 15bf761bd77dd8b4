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
import traceback

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .config import DataArguments, ModelArguments
from .errors import PostTrainError
from .rewards import BUILTIN_REWARDS
from .run import COMMANDS, ONLINE, RewardArguments, run_training, summary


class _Parser(HfArgumentParser):
    """HfArgumentParser whose errors are one line, ``posttrain <command>: error: ...`` (argparse prints the whole
    usage first, here hundreds of lines of flags)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def one_line(text) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _parse(command: str, argv: list[str], debug: bool = False):
    config_cls = COMMANDS[command][1]
    classes = (ModelArguments, DataArguments, config_cls) + ((RewardArguments,) if command in ONLINE else ())
    parser = _Parser(classes, prog=f"posttrain {command}", description=COMMANDS[command][3], epilog=(
        "An error is one line on stderr saying what is wrong and how to fix it (exit status 2); a bare --debug "
        "(no value; --debug underflow_overflow is transformers' option) prints the traceback too."))
    parser.add_argument("--config", default=None, help=(
        "YAML file whose keys are any of these flags' names (TRL's YAML configs run unchanged; lists for list "
        "flags). A mapping under 'env' sets environment variables, as in TRL. Flags given on the command line "
        "override the file."))
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_read_config(parser, classes, known.config, command))
    try:
        *parsed, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except (ValueError, TypeError) as err:  # a config's __post_init__ rejected a value; its message says which, why
        if debug:
            traceback.print_exc()
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
    try:
        with open(path, encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
    except OSError as err:
        parser.error(f"--config {path}: {err.strerror or err}.")
    except UnicodeDecodeError as err:
        parser.error(f"--config {path}: not UTF-8 text ({err.reason} at byte {err.start}).")
    except yaml.YAMLError as err:
        parser.error(f"--config {path}: not valid YAML: {err}")
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
    fields = {f.name: f for cls in classes for f in dataclasses.fields(cls)}
    annotations = {}  # as declared (HfArgumentParser rewrites a Field's type, e.g. dict | str | None to str)
    for cls in classes:
        for klass in reversed(cls.__mro__):
            annotations.update({k: str(v) for k, v in vars(klass).get("__annotations__", {}).items()})
    actions = {a.dest: a for a in parser._actions}
    for name, value in resolved.items():
        try:
            resolved[name] = _yaml_value(value, actions[name], fields.get(name), annotations.get(name, ""))
        except (TypeError, ValueError) as err:
            parser.error(f"{path}: {given_as[name]}: {err}")
    return resolved


_KINDS = {int: "an integer", float: "a number", str: "a string", string_to_bool: "true or false"}


def _yaml_value(value, action, field, annotation: str):
    """A YAML value as the flag's type takes it (as if given on the command line), or a TypeError/ValueError
    saying what was expected: ``seed: [1, 2]`` fails here, not as a TypeError deep in torch. ``annotation``: the
    field's declared type."""
    kind = f"one of {list(action.choices)}" if action.choices else _KINDS.get(action.type, "a value")

    def scalar(v):
        if action.type not in _KINDS and not action.choices:
            return v  # a type posttrain does not know (e.g. a dataclass): left to the config's own checks
        if isinstance(v, (list, dict)):
            raise TypeError(f"expected {kind}, got a {'list' if isinstance(v, list) else 'mapping'}: {v!r}.")
        if isinstance(v, bool) and action.type in (int, float):
            raise TypeError(f"expected {kind}, got {str(v).lower()}.")
        if action.choices and v is False and "no" in action.choices:
            v = "no"  # YAML 1.1 reads a bare `no` as false
        if action.type is int and isinstance(v, float) and v.is_integer():
            v = int(v)
        try:
            if action.type is int:
                out = v if isinstance(v, int) else int(str(v).strip())
            elif action.type is str:
                out = v if isinstance(v, str) else str(v)
            else:
                out = action.type(v if isinstance(v, (bool, str)) or action.type is float else str(v))
        except Exception:  # argparse.ArgumentTypeError too
            raise ValueError(f"expected {kind}, got {v!r}.") from None
        if action.choices and out not in action.choices:
            raise ValueError(f"expected {kind}, got {v!r}.")
        return out

    if value is None:
        if field is not None and field.default is not None and "None" not in annotation and "Optional" not in annotation:
            raise TypeError(f"expected {kind}, got null (this setting has no 'unset' value).")
        return None
    if action.nargs in ("+", "*"):
        return [scalar(v) for v in (value if isinstance(value, list) else [value])]
    if isinstance(value, dict) and "dict" in annotation or isinstance(value, list) and "list" in annotation:
        return value
    return scalar(value)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="posttrain", description="Post-train transformer language models.")
    top.add_argument("command", choices=[*COMMANDS, "demo", "judge", "estimate-memory"], help="; ".join(
        [f"{k}: {v[3]}" for k, v in COMMANDS.items()] + ["demo: the offline end-to-end pipeline",
                                                          "judge: win rates and ratings of models by a judge",
                                                          "estimate-memory: the peak GPU memory of a run, "
                                                          "before you start it"]))
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    rest, debug = _take_debug(rest)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # reward/environment import specs find the user's modules, as with python -m
    if command not in COMMANDS and command not in ("demo", "judge", "estimate-memory"):
        top.error(f"unknown command {command!r}; choose from {[*COMMANDS, 'demo', 'judge', 'estimate-memory']}")
    try:
        if command == "demo":
            from .demo import main as demo_main

            return demo_main(rest)
        if command == "judge":
            from .eval.judges import judge_main

            return judge_main(rest)
        if command == "estimate-memory":
            from .memory import main as memory_main

            return memory_main(rest)
        model_args, data_args, config = _parse(command, rest, debug)
        start = time.perf_counter()
        trainer = run_training(command, model_args, data_args, config)
        if trainer.accelerator.is_main_process:
            print(summary(command, trainer, time.perf_counter() - start))
    except Exception as err:  # one line each (--debug: the traceback too); SystemExit and Ctrl-C pass through
        if command not in COMMANDS and not isinstance(err, PostTrainError):
            raise  # demo, judge, estimate-memory: their own errors are their own
        if debug:
            traceback.print_exc()
        code, line = error_report(err)
        _close_progress_bars()  # so the message starts a line of its own
        print(f"posttrain {command}: error: {line}", file=sys.stderr)
        return code
    return 0


def _close_progress_bars() -> None:
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except Exception:  # a bar that cannot close is no reason to hide the error
        pass


def _take_debug(args: list[str]) -> tuple[list[str], bool]:
    """Remove a bare ``--debug`` (posttrain's: print tracebacks); ``--debug underflow_overflow`` and
    ``--debug tpu_metrics_debug`` stay, transformers' TrainingArguments.debug. POSTTRAIN_DEBUG=1 works too."""
    from transformers.debug_utils import DebugOption

    options = {o.value for o in DebugOption}
    kept, debug = [], os.environ.get("POSTTRAIN_DEBUG", "") not in ("", "0")
    for i, arg in enumerate(args):
        if arg == "--debug" and not set(args[i + 1].split() if i + 1 < len(args) else ()) & options:
            debug = True
        else:
            kept.append(arg)
    return kept, debug


# Errors about the inputs (exit status 2): posttrain's own, and what configs, files and paths raise.
INPUT_ERRORS = (PostTrainError, ValueError, TypeError, OSError, ImportError)


def error_report(err: BaseException) -> tuple[int, str]:
    """The exit status and one-line message of an error: status 2 for a bad input (the message as is when
    posttrain raised it; else with its type and where it came from), 1 for anything else (a bug: --debug shows
    the traceback)."""
    text = one_line(err) or type(err).__name__
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    origin = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    ours = isinstance(err, PostTrainError) or origin.split(".")[0] == "posttrain"
    if isinstance(err, INPUT_ERRORS):
        return 2, text if ours else f"{type(err).__name__}: {text} (raised in {origin or 'unknown'}; --debug shows " \
                                    "the traceback)"
    return 1, f"{type(err).__name__}: {text} (unexpected; --debug shows the traceback)"


if __name__ == "__main__":
    sys.exit(main())
