"""``trl <command> --config run.yaml`` run as ``posttrain <command> --config run.yaml``: the same TRL YAML file
(TRL's flag names: ``model_name_or_path``, ``dataset_name``, ``use_peft``, ``lora_target_modules`` as a list,
``reward_funcs`` as ``module.function``), each CLI in a subprocess (``python -m trl.cli.main`` -- the ``trl``
console script, which launches ``trl/scripts/<command>.py`` through accelerate -- and ``python -m posttrain.cli``),
the first logged loss read from ``checkpoint-1/trainer_state.json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from .harness import LIBS, check

CLI_MODULE = {"trl": "trl.cli.main", "posttrain": "posttrain.cli"}
TIMEOUT = 300
COMMON = dict(max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1,
              report_to="none", seed=0, bf16=False, use_cpu=True, save_strategy="steps", save_steps=1,
              disable_tqdm=True)
PROMPTS = ["What is two plus two?", "Name a colour.", "Say hello.", "Count to three."]
CHOSEN = ["Two plus two is four.", "Blue is a colour.", "Hello there!", "One, two, three."]
REJECTED = ["It is five.", "A dog.", "Go away.", "Three, one."]
REWARDS_MODULE = '''
def reward_prompt_len(prompts, completions, **kwargs):
    return [float(len(p)) for p in prompts]
'''


def write_dataset(out_dir, rows) -> str:
    """A dataset directory holding train.jsonl: what ``--dataset_name <dir>`` loads (split ``train``)."""
    path = os.path.join(out_dir, "data")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "train.jsonl"), "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def run_cli(lib, command, out_dir, config) -> list[dict]:
    config = {**COMMON, **config, "output_dir": os.path.join(out_dir, "run")}
    path = os.path.join(out_dir, f"{command}.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config, fh)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", CLI_MODULE[lib.__name__], command, "--config", path], cwd=out_dir,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        errors = [line for line in lines if "error" in line.lower()]
        tail = (errors or lines or [""])[-1].strip()
        raise RuntimeError(f"{lib.__name__} {command} exited {proc.returncode}: {tail}")
    with open(os.path.join(config["output_dir"], "checkpoint-1", "trainer_state.json"), encoding="utf-8") as fh:
        return json.load(fh)["log_history"]


def sft_yaml(lib, models, out_dir):
    data = write_dataset(out_dir, [{"prompt": p, "completion": c} for p, c in zip(PROMPTS, CHOSEN)])
    return run_cli(lib, "sft", out_dir, dict(model_name_or_path=models.causal, dataset_name=data, max_length=64))


def sft_peft_yaml(lib, models, out_dir):
    data = write_dataset(out_dir, [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]}
                                   for p, c in zip(PROMPTS, CHOSEN)])
    return run_cli(lib, "sft", out_dir, dict(model_name_or_path=models.causal, dataset_name=data, max_length=64,
                                             use_peft=True, lora_r=8, lora_alpha=16,
                                             lora_target_modules=["q_proj", "v_proj"]))


def dpo_yaml(lib, models, out_dir):
    data = write_dataset(out_dir, [{"prompt": p, "chosen": c, "rejected": r, "id": i}
                                   for i, (p, c, r) in enumerate(zip(PROMPTS, CHOSEN, REJECTED))])
    return run_cli(lib, "dpo", out_dir, dict(model_name_or_path=models.causal, dataset_name=data, max_length=64,
                                             loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]))


def reward_yaml(lib, models, out_dir):
    data = write_dataset(out_dir, [{"prompt": p, "chosen": c, "rejected": r}
                                   for p, c, r in zip(PROMPTS, CHOSEN, REJECTED)])
    return run_cli(lib, "reward", out_dir, dict(model_name_or_path=models.seq_cls, dataset_name=data, max_length=64))


def grpo_yaml(lib, models, out_dir):
    """``reward_funcs: [my_rewards.reward_prompt_len]`` imported from the working directory, as TRL's script does.

    The reward depends on the prompts only, so the first step's mean reward is the same whatever is sampled:
    in a ``trl grpo`` run the RNG reaches the first ``generate`` in another state than in a script (its
    mean ``reward_len`` differs from test_grpo's ``standard`` case), so sampled completions are compared in
    test_grpo.py, and this case proves the CLI's plumbing: the YAML, ``--reward_funcs module.function``, and
    which prompts the first step takes."""
    with open(os.path.join(out_dir, "my_rewards.py"), "w", encoding="utf-8") as fh:
        fh.write(textwrap.dedent(REWARDS_MODULE))
    data = write_dataset(out_dir, [{"prompt": p} for p in PROMPTS])
    return run_cli(lib, "grpo", out_dir, dict(model_name_or_path=models.causal, dataset_name=data,
                                              reward_funcs=["my_rewards.reward_prompt_len"], per_device_train_batch_size=4,
                                              num_generations=2, max_completion_length=8))


# case -> (script, compared key); GRPO compares the first generation's mean reward (see online_cases.py)
CASES = {"sft": (sft_yaml, "loss"), "sft_peft": (sft_peft_yaml, "loss"), "dpo": (dpo_yaml, "loss"),
         "reward": (reward_yaml, "loss"), "grpo": (grpo_yaml, "reward")}


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("case", CASES)
def test_cli(case, lib, models, tmp_path_factory):
    script, key = CASES[case]
    check(f"cli/{case}", script, lib, models, tmp_path_factory, key=key)
