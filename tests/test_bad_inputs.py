"""Every bad input is one clear line: ``posttrain <command>`` exits with status 2 and prints one line on stderr
naming what is wrong (the field, its value and the valid range; the file and line; the reward function and the
sample; the missing path) -- no traceback unless ``--debug``. The same checks reach the Python API: config
values are range-checked in ``__post_init__``, reward values in ``RewardSet``."""

from __future__ import annotations

import json
import math

import pytest

from posttrain.cli import _parse, error_report, main
from posttrain.config import DataArguments, ModelArguments
from posttrain.data import toy
from posttrain.data.formats import DataFormatError, check_utf8
from posttrain.errors import ConfigError, PostTrainError
from posttrain.rewards import RewardError, RewardSet
from posttrain.rewards.base import MAX_ABS_REWARD
from posttrain.trainers import (DPOConfig, GRPOConfig, KTOConfig, PPOConfig, ReSTConfig, RewardConfig, RLOOConfig,
                                SFTConfig)

REWARDS = '''
def none_reward(completions, **kwargs):
    return [None] * len(completions)

def huge_reward(completions, **kwargs):
    return [1e38] * len(completions)

def inf_reward(completions, **kwargs):
    return [float("inf")] + [0.5] * (len(completions) - 1)

def nan_reward(completions, **kwargs):
    return [0.5, float("nan")] + [0.5] * (len(completions) - 2)
'''


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Small datasets, a non-UTF-8 JSONL/CSV/folder, YAML configs, a reward module and a non-model directory."""
    root = tmp_path_factory.mktemp("bad_inputs")

    def jsonl(name, rows):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    rows = toy.prompt_completion(16, seed=1)
    jsonl("pc.jsonl", rows)
    jsonl("pairs.jsonl", toy.preference_pairs(16, seed=1))
    jsonl("prompts.jsonl", [{"prompt": r["prompt"]} for r in rows])
    lines = (root / "pc.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"prompt": "', b'"prompt": "caf\xe9 ', 1)  # latin-1, not UTF-8, on line 3
    (root / "latin1.jsonl").write_bytes(b"".join(lines))
    (root / "latin1.csv").write_bytes(b"prompt,completion\nGood,film\nCaf\xe9,au lait\n")
    (root / "folder").mkdir()
    (root / "folder" / "train.jsonl").write_bytes(b"".join(lines))
    for name, text in {"seed_list.yaml": "seed: [1, 2]\n", "lr_word.yaml": "learning_rate: fast\n",
                       "steps_bool.yaml": "max_steps: true\n", "packing_word.yaml": "packing: maybe\n",
                       "scheduler.yaml": "lr_scheduler_type: wavy\n", "seed_null.yaml": "seed: null\n",
                       "broken.yaml": "max_steps: [1,\n", "beta.yaml": "beta: -1\n"}.items():
        (root / name).write_text(text)
    (root / "bad_inputs_rewards.py").write_text(REWARDS)
    (root / "not_a_model").mkdir()
    (root / "file.txt").write_text("x")
    return root


def run_cli(argv, capsys):
    """``main(argv)``: (exit status, stderr lines)."""
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse errors exit, as they always have
        code = stop.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


QUICK = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--disable_tqdm", "true", "--report_to", "none",
         "--save_strategy", "no"]
ONLINE = ["--max_completion_length", "4"]
GROUP = ONLINE + ["--num_generations", "2"]
LENGTH = ["--reward_funcs", "length:3"]

# (command, dataset, flags, the fragments the one line must contain). Refused before any work: the output
# directory is never created, and stderr is that one line (after the dataset's loading bar, for the errors found
# once the rows are loaded: the model path, the reward specs).
BEFORE_WORK = [
    # ---- steps, epochs, batches, accumulation (TrainingArguments' fields, every trainer)
    ("sft", "pc", ["--max_steps", "0"], ["max_steps=0", "-1", ">= 1"]),
    ("sft", "pc", ["--max_steps", "-5"], ["max_steps=-5"]),
    ("ppo", "prompts", ONLINE + LENGTH + ["--max_steps", "0"], ["max_steps=0"]),
    ("sft", "pc", ["--max_steps", "-1", "--num_train_epochs", "0"], ["num_train_epochs=0"]),
    ("sft", "pc", ["--per_device_train_batch_size", "0"], ["per_device_train_batch_size=0", ">= 1"]),
    ("reward", "pairs", ["--per_device_eval_batch_size", "0"], ["per_device_eval_batch_size=0"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--per_device_train_batch_size", "0"], ["per_device_train_batch_size=0"]),
    ("sft", "pc", ["--gradient_accumulation_steps", "0"], ["gradient_accumulation_steps=0", ">= 1"]),
    ("rloo", "prompts", GROUP + LENGTH + ["--gradient_accumulation_steps", "0"], ["gradient_accumulation_steps=0"]),
    # ---- learning rate, warmup, optimizer, seeds
    ("sft", "pc", ["--learning_rate", "nan"], ["learning_rate=nan", "finite", "> 0"]),
    ("dpo", "pairs", ["--learning_rate", "-0.001"], ["learning_rate=-0.001"]),
    ("kto", "pairs", ["--learning_rate", "inf"], ["learning_rate=inf"]),
    ("sft", "pc", ["--warmup_steps", "-0.1"], ["warmup_steps=-0.1"]),
    ("sft", "pc", ["--adam_beta1", "1"], ["adam_beta1=1.0", "[0, 1)"]),
    ("sft", "pc", ["--weight_decay", "-1"], ["weight_decay=-1.0"]),
    ("sft", "pc", ["--seed", "-1"], ["seed=-1", "[0, 2**32 - 1]"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--seed", "4294967296"], ["seed=4294967296"]),
    ("sft", "pc", ["--seed", "1.5"], ["--seed", "invalid int value"]),  # argparse's own check, in one line
    # ---- lengths: >= 1, or None for no limit
    ("sft", "pc", ["--max_length", "-4"], ["max_length=-4", ">= 1", "None"]),
    ("reward", "pairs", ["--max_length", "0"], ["max_length=0"]),
    ("dpo", "pairs", ["--max_prompt_length", "0"], ["max_prompt_length=0"]),
    ("kto", "pairs", ["--max_prompt_length", "-3"], ["max_prompt_length=-3"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--max_prompt_length", "0"], ["max_prompt_length=0"]),
    ("ppo", "prompts", LENGTH + ["--max_completion_length", "0"], ["max_completion_length=0"]),
    # ---- each loss's coefficients
    ("dpo", "pairs", ["--beta", "-1"], ["beta=-1.0", "> 0"]),
    ("dpo", "pairs", ["--beta", "0"], ["beta=0.0"]),
    ("dpo", "pairs", ["--label_smoothing", "0.7"], ["label_smoothing=0.7", "[0, 0.5)"]),
    ("kto", "pairs", ["--beta", "0"], ["beta=0.0", "> 0"]),
    ("kto", "pairs", ["--undesirable_weight", "-1"], ["undesirable_weight=-1.0"]),
    ("reward", "pairs", ["--center_rewards_coefficient", "-0.01"], ["center_rewards_coefficient=-0.01"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--beta", "-0.1"], ["beta=-0.1", ">= 0"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--epsilon", "-1"], ["epsilon=-1.0", "> 0"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--epsilon_high", "0"], ["epsilon_high=0.0"]),
    ("rloo", "prompts", GROUP + LENGTH + ["--epsilon", "0"], ["epsilon=0.0"]),
    ("rloo", "prompts", GROUP + LENGTH + ["--beta", "nan"], ["beta=nan"]),
    ("ppo", "prompts", ONLINE + LENGTH + ["--cliprange", "-1"], ["cliprange=-1.0", "> 0"]),
    ("ppo", "prompts", ONLINE + LENGTH + ["--cliprange_value", "0"], ["cliprange_value=0.0"]),
    ("ppo", "prompts", ONLINE + LENGTH + ["--gamma", "2"], ["gamma=2.0", "[0, 1]"]),
    ("ppo", "prompts", ONLINE + LENGTH + ["--lam", "-0.5"], ["lam=-0.5", "[0, 1]"]),
    ("ppo", "prompts", ONLINE + LENGTH + ["--vf_coef", "-1"], ["vf_coef=-1.0"]),
    ("ppo", "prompts", ONLINE + LENGTH + ["--target_kl", "0"], ["target_kl=0.0"]),
    # ---- sampling, groups
    ("grpo", "prompts", GROUP + LENGTH + ["--num_generations", "1"], ["num_generations=1", ">= 2"]),
    ("rloo", "prompts", GROUP + LENGTH + ["--num_generations", "0"], ["num_generations=0"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--temperature", "0"], ["temperature=0.0", "greedy"]),
    ("ppo", "prompts", ONLINE + LENGTH + ["--temperature", "-1"], ["temperature=-1.0"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--top_p", "0"], ["top_p=0.0", "(0, 1]"]),
    ("ppo", "prompts", ONLINE + LENGTH + ["--top_p", "1.5"], ["top_p=1.5"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--top_k", "-1"], ["top_k=-1"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--max_unscored_generations", "-1"], ["max_unscored_generations=-1"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--nonfinite_rewards", "ignore"], ["--nonfinite_rewards", "invalid choice"]),
    # ---- ReST: rising thresholds, quantiles in [0, 1]
    ("rest", "prompts", GROUP + LENGTH + ["--max_steps", "-1", "--improve_steps", "2", "--threshold_quantiles", "0.9", "0.1"],
     ["threshold_quantiles=[0.9, 0.1]", "rise"]),
    ("rest", "prompts", GROUP + LENGTH + ["--max_steps", "-1", "--improve_steps", "2", "--thresholds", "1", "0.5"],
     ["thresholds=[1.0, 0.5]", "rise"]),
    ("rest", "prompts", GROUP + LENGTH + ["--max_steps", "-1", "--improve_steps", "1", "--threshold_quantiles", "90"],
     ["threshold_quantiles=[90.0]", "[0, 1]"]),
    ("rest", "prompts", GROUP + LENGTH + ["--max_steps", "-1", "--grow_steps", "0"], ["grow_steps=0"]),
    # ---- the model and data arguments
    ("sft", "pc", ["--eval_fraction", "1.5"], ["eval_fraction=1.5"]),
    ("sft", "pc", ["--use_peft", "--lora_r", "0"], ["lora_r=0"]),
    ("sft", "pc", ["--use_peft", "--lora_dropout", "1"], ["lora_dropout=1.0"]),
    # ---- YAML values of the wrong type, caught at parse (TRL's YAML configs are flag names and values)
    ("sft", "pc", ["--config", "{data}/seed_list.yaml"], ["seed_list.yaml", "seed", "expected an integer", "[1, 2]"]),
    ("sft", "pc", ["--config", "{data}/lr_word.yaml"], ["learning_rate", "expected a number", "'fast'"]),
    ("sft", "pc", ["--config", "{data}/steps_bool.yaml"], ["max_steps", "expected an integer, got true"]),
    ("sft", "pc", ["--config", "{data}/packing_word.yaml"], ["packing", "expected true or false"]),
    ("sft", "pc", ["--config", "{data}/scheduler.yaml"], ["lr_scheduler_type", "expected one of", "'wavy'"]),
    ("sft", "pc", ["--config", "{data}/seed_null.yaml"], ["seed", "got null"]),
    ("sft", "pc", ["--config", "{data}/broken.yaml"], ["broken.yaml", "not valid YAML", "line 2"]),
    ("sft", "pc", ["--config", "{data}/missing.yaml"], ["missing.yaml", "No such file"]),
    ("dpo", "pairs", ["--config", "{data}/beta.yaml"], ["beta=-1", "> 0"]),
    # ---- files: decoded with the file and line named
    ("sft", "latin1", [], ["latin1.jsonl", "line 3", "0xe9", "not UTF-8"]),
    ("sft", "latin1_csv", [], ["latin1.csv", "line 3", "0xe9", "not UTF-8"]),
    ("sft", "folder", [], ["train.jsonl", "line 3", "not UTF-8"]),
    ("sft", "missing", [], ["missing.jsonl", "does not exist"]),
    # ---- the model path
    ("sft", "pc", ["--model", "/nonexistent/dir"], ["--model_name_or_path /nonexistent/dir: no such directory",
                                                     "tiny:<arch>", "offline: hub names need a local cache"]),
    ("grpo", "prompts", GROUP + LENGTH + ["--model", "./no/such/model"], ["./no/such/model: no such directory"]),
    ("sft", "pc", ["--model", "{data}/not_a_model"], ["not_a_model", "no config.json"]),
    ("sft", "pc", ["--model", "{data}/file.txt"], ["file.txt", "a file, not a model directory"]),
    ("sft", "pc", ["--model", "tiny:nope"], ["Unknown tiny model 'tiny:nope'"]),
    # ---- reward specs
    ("grpo", "prompts", GROUP + ["--reward_funcs", "no_such_module_xyz.fn"], ["no module named 'no_such_module_xyz'"]),
    ("ppo", "prompts", ONLINE + ["--reward_funcs", "length:many"], ["length:N needs an integer"]),
]
DATASETS = {"pc": "pc.jsonl", "pairs": "pairs.jsonl", "prompts": "prompts.jsonl", "latin1": "latin1.jsonl",
            "latin1_csv": "latin1.csv", "folder": "folder", "missing": "missing.jsonl"}


def argv_for(command, dataset, flags, data, out):
    return [command, "--dataset", str(data / DATASETS[dataset]), "--output_dir", str(out), *QUICK,
            *(f.replace("{data}", str(data)) for f in flags)]


@pytest.mark.parametrize("command,dataset,flags,fragments", BEFORE_WORK,
                         ids=[f"{c}{''.join(f)[:40]}-{d}" for c, d, f, _ in BEFORE_WORK])
def test_refused_before_any_work_in_one_line(data, tmp_path, capsys, command, dataset, flags, fragments):
    out = tmp_path / "out"
    code, lines = run_cli(argv_for(command, dataset, flags, data, out), capsys)
    assert code == 2, lines
    assert lines and lines[-1].startswith(f"posttrain {command}: error: "), lines
    assert all("%|" in line or " examples" in line for line in lines[:-1]), lines  # else only datasets' loading bars
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    assert "Traceback" not in "\n".join(lines)
    if _found_at_parse(dataset, flags):  # the config is refused before the run starts: no output directory
        assert not out.exists()


def _found_at_parse(dataset, flags) -> bool:
    """Whether the case fails while the flags are parsed (not once the data, model or reward is loaded)."""
    return (dataset in ("pc", "pairs", "prompts") and "--model" not in flags
            and not {"no_such_module_xyz.fn", "length:many"} & set(flags))


# Rewards found unusable while training: an error naming the function and the sample (exit 2, one error line).
DURING_TRAINING = [
    ("grpo", GROUP + ["--reward_funcs", "bad_inputs_rewards.inf_reward"],
     ["Reward function 'inf_reward' returned inf for sample 0", "finite", "nonfinite_rewards"]),
    ("rloo", GROUP + ["--reward_funcs", "bad_inputs_rewards.nan_reward"],
     ["Reward function 'nan_reward' returned nan for sample 1"]),
    ("grpo", GROUP + ["--reward_funcs", "bad_inputs_rewards.huge_reward"],
     ["'huge_reward' returned 1e+38 for sample 0", "1e+15"]),
    ("ppo", ONLINE + ["--reward_funcs", "bad_inputs_rewards.huge_reward"], ["'huge_reward' returned 1e+38"]),
    ("grpo", GROUP + ["--reward_funcs", "bad_inputs_rewards.none_reward", "--max_steps", "3"],
     ["No completion got a reward in 3 generations in a row", "none_reward", "max_unscored_generations"]),
    ("ppo", ONLINE + ["--reward_funcs", "bad_inputs_rewards.none_reward", "--max_steps", "4",
                      "--max_unscored_generations", "2", "--num_iterations", "1"],
     ["No completion got a reward in 2 generations in a row"]),
    ("rest", GROUP + ["--reward_funcs", "bad_inputs_rewards.none_reward", "--grow_steps", "1", "--improve_steps", "1",
                      "--max_steps", "-1"],
     ["Grow step 0: none of the 32 grown samples got a reward", "none_reward"]),
]


@pytest.mark.parametrize("command,flags,fragments", DURING_TRAINING,
                         ids=[f"{c}-{f[f.index('--reward_funcs') + 1].split('.')[-1]}" for c, f, _ in DURING_TRAINING])
def test_unusable_rewards_stop_the_run_in_one_line(data, tmp_path, capsys, monkeypatch, command, flags, fragments):
    monkeypatch.syspath_prepend(str(data))
    code, lines = run_cli(argv_for(command, "prompts", flags, data, tmp_path / "out"), capsys)
    assert code == 2, lines
    errors = [line for line in lines if line.startswith(f"posttrain {command}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert not any("Traceback" in line for line in lines)


def test_nonfinite_rewards_skip_drops_and_counts_them(data, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(data))
    argv = argv_for("grpo", "prompts", GROUP + ["--reward_funcs", "bad_inputs_rewards.inf_reward", "--max_steps", "2",
                                                "--nonfinite_rewards", "skip", "--logging_steps", "1"],
                    data, tmp_path / "out")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    logged = [eval(line) for line in printed.splitlines() if line.startswith("{'reward'")]  # PrinterCallback's dicts
    assert [float(e["nonfinite_rewards"]) for e in logged] == [1.0, 1.0]
    assert [float(e["dropped"]) for e in logged] == [1.0, 1.0] and all(float(e["reward"]) == 0.5 for e in logged)


def test_debug_adds_the_traceback(data, tmp_path, capsys):
    argv = argv_for("sft", "pc", ["--model", "/nonexistent/dir", "--debug"], data, tmp_path / "out")
    code, lines = run_cli(argv, capsys)
    assert code == 2 and lines[0].startswith("Traceback") and "FileNotFoundError" in "\n".join(lines)
    assert lines[-1].startswith("posttrain sft: error: --model_name_or_path /nonexistent/dir: no such directory")
    # transformers' own --debug option (with a value) is still transformers'
    model_args, data_args, config = _parse("sft", ["--dataset", "x.jsonl", "--debug", "underflow_overflow"])
    assert [o.value for o in config.debug] == ["underflow_overflow"]


def test_yaml_values_are_converted_as_flags_are(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1e-3\nmax_steps: '7'\nreward_funcs: length:3\neval_strategy: no\nseed: 3.0\n"
                      "model_init_kwargs: {dtype: float32}\n")
    _, _, grpo = _parse("grpo", ["--config", str(config), "--dataset", "x.jsonl"])
    assert grpo.learning_rate == 1e-3 and grpo.max_steps == 7 and grpo.seed == 3
    assert grpo.reward_args.reward_funcs == ["length:3"]  # a lone string is a one-item list, not its characters
    assert grpo.eval_strategy == "no" and grpo.model_init_kwargs == {"dtype": "float32"}


def test_errors_raised_outside_posttrain_say_where(capsys):
    try:
        json.loads("{")  # a ValueError raised inside the json package
    except ValueError as err:
        code, line = error_report(err)
    assert code == 2 and line.startswith("JSONDecodeError: ") and "raised in json.decoder" in line and "--debug" in line
    code, line = error_report(RuntimeError("first\nsecond"))
    assert code == 1 and line == "RuntimeError: first second (unexpected; --debug shows the traceback)"
    code, line = error_report(ConfigError("beta=-1 is out of range:\n it must be > 0."))
    assert code == 2 and line == "beta=-1 is out of range: it must be > 0."


# ---- the Python API: the same ranges in each config's __post_init__ -----------------------------------------
API_ERRORS = [
    (SFTConfig, {"max_steps": 0}, "max_steps=0"),
    (SFTConfig, {"max_length": 0}, "max_length=0"),
    (SFTConfig, {"seed": [1, 2]}, "seed=[1, 2]"),
    (SFTConfig, {"learning_rate": float("nan")}, "learning_rate=nan"),
    (SFTConfig, {"gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0"),
    (RewardConfig, {"per_device_train_batch_size": 0}, "per_device_train_batch_size=0"),
    (DPOConfig, {"beta": -1.0}, "beta=-1.0"),
    (DPOConfig, {"loss_type": "ipo", "beta": 0.0}, "beta=0.0"),
    (DPOConfig, {"max_prompt_length": 0}, "max_prompt_length=0"),
    (KTOConfig, {"beta": float("inf")}, "beta=inf"),
    (KTOConfig, {"desirable_weight": 0.0, "undesirable_weight": 0.0}, "every row would weigh 0"),
    (GRPOConfig, {"epsilon": -1.0}, "epsilon=-1.0"),
    (GRPOConfig, {"num_generations": 1}, "num_generations=1"),
    (GRPOConfig, {"temperature": 0.0}, "temperature=0.0"),
    (RLOOConfig, {"beta": -0.05}, "beta=-0.05"),
    (PPOConfig, {"cliprange": -1.0}, "cliprange=-1.0"),
    (PPOConfig, {"gamma": 2.0}, "gamma=2.0"),
    (PPOConfig, {"lam": 1.5}, "lam=1.5"),
    (PPOConfig, {"max_prompt_length": 0}, "max_prompt_length=0"),
    (PPOConfig, {"reward_weights": [1.0, float("nan")]}, "reward_weights=[1.0, nan]"),
    (ReSTConfig, {"threshold_quantiles": [0.9, 0.7, 0.5]}, "must rise"),
    (ReSTConfig, {"thresholds": [0.5, float("inf"), 1.0]}, "finite"),
    (ReSTConfig, {"improve_steps": 0}, "improve_steps=0"),
]


@pytest.mark.parametrize("cls,kwargs,fragment", API_ERRORS, ids=[f"{c.__name__}-{'-'.join(k)}" for c, k, _ in API_ERRORS])
def test_configs_refuse_out_of_range_values(tmp_path, cls, kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        cls(output_dir=str(tmp_path), **kwargs)
    assert fragment in str(info.value) and isinstance(info.value, ValueError)  # as TrainingArguments raises


def test_boundary_values_are_accepted(tmp_path):
    out = str(tmp_path)
    assert SFTConfig(output_dir=out, max_steps=-1, max_length=None, seed=0).max_length is None
    assert GRPOConfig(output_dir=out, beta=0.0, num_generations=2, top_p=1.0).beta == 0.0  # 0: no KL term
    assert RLOOConfig(output_dir=out, beta=0.0).beta == 0.0
    config = PPOConfig(output_dir=out, gamma=0.0, lam=1.0, temperature=0.0, target_kl=None)  # 0: greedy
    assert (config.gamma, config.lam, config.temperature) == (0.0, 1.0, 0.0)
    assert ReSTConfig(output_dir=out, threshold_quantiles=[0.0, 0.5, 1.0]).threshold_quantiles == [0.0, 0.5, 1.0]
    assert DPOConfig(output_dir=out, label_smoothing=0.0).beta == 0.1
    with pytest.raises(ConfigError, match="lora_alpha=0"):
        ModelArguments(lora_alpha=0)
    with pytest.raises(ConfigError, match="eval_fraction=-0.1"):
        DataArguments(eval_fraction=-0.1)


# ---- the Python API: rewards and files -------------------------------------------------------------------------
def _const(values, name):
    def fn(completions, **kwargs):
        return list(values)

    fn.__name__ = name
    return fn


def test_reward_values_must_be_finite_or_skipped():
    with pytest.raises(RewardError, match=r"'big' returned 1e\+38 for sample 1 .*'c1'"):
        RewardSet([_const([1.0, 1e38], "big")])(["p", "p"], ["c0", "c1"])
    assert MAX_ABS_REWARD == 1e15
    RewardSet([_const([1.0, -1e15], "edge")])(["p", "p"], ["c0", "c1"])  # the bound itself is fine
    skip = RewardSet([_const([1.0, float("nan"), 1e16], "bad"), _const([None, 2.0, None], "ok")], nonfinite="skip")
    result = skip(["p"] * 3, ["c"] * 3)
    assert result.num_nonfinite == 2 and result.num_dropped == 1
    assert result.rewards[0] == 1.0 and result.rewards[1] == 2.0 and math.isnan(result.rewards[2])
    with pytest.raises(ValueError, match="nonfinite"):
        RewardSet([_const([1.0], "x")], nonfinite="ignore")


def test_error_classes_share_a_base():
    assert issubclass(RewardError, PostTrainError) and issubclass(RewardError, RuntimeError)
    assert issubclass(DataFormatError, PostTrainError) and issubclass(DataFormatError, ValueError)
    assert issubclass(ConfigError, PostTrainError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("block", [1, 2, 3, 7, 1 << 24])
def test_utf8_check_names_line_and_column_at_any_block_size(tmp_path, block):
    path = tmp_path / "rows.jsonl"
    good = "héllo wörld\n日本語 ok\n".encode()
    path.write_bytes(good * 3)
    check_utf8(str(path), block)  # multi-byte characters cut by a block boundary are fine
    path.write_bytes(good * 3 + b'{"text": "ab\xffc"}\n')
    with pytest.raises(DataFormatError, match=r"line 7, column 13: byte 0xff is not UTF-8"):
        check_utf8(str(path), block)
    path.write_bytes(good + "é".encode()[:1])  # a file cut inside a character
    with pytest.raises(DataFormatError, match=r"line 3, column 1: byte 0xc3"):
        check_utf8(str(path), block)
