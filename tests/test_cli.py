"""`posttrain sft|reward`: flags with help, --config YAML, the acceptance run, clear errors."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import transformers

from posttrain.cli import main
from posttrain.data import toy


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_help_lists_every_config_field_with_help(capsys):
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--dataset", "--packing", "--max_length", "--truncation_side", "--use_lora",
                 "--learning_rate", "--gradient_accumulation_steps", "--config", "--completion_only_loss",
                 # TRL's ModelConfig and ScriptArguments
                 "--model_name_or_path", "--model_revision", "--dtype", "--trust_remote_code", "--attn_implementation",
                 "--use_peft", "--lora_r", "--lora_alpha", "--lora_dropout", "--lora_target_modules",
                 "--lora_modules_to_save", "--lora_task_type", "--use_rslora", "--use_dora", "--load_in_4bit",
                 "--dataset_name", "--dataset_config", "--dataset_train_split", "--dataset_test_split"):
        assert flag in text, flag
    assert "Padding-free packing" in text and "tiny:<arch>" in text
    assert "save_to_disk" in text and "quantized" not in text.split("--load_in_4bit")[0][-10:]


def test_sft_loss_halves_within_a_minute_and_reloads(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", toy.prompt_completion(200, seed=7))
    out = tmp_path / "sft"
    start = time.perf_counter()
    code = main(["sft", "--model", "tiny:llama", "--dataset", data, "--output_dir", str(out), "--max_steps", "60",
                 "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--logging_steps", "5",
                 "--disable_tqdm", "true"])
    seconds = time.perf_counter() - start
    assert code == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"posttrain sft: saved to {out}")
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    print(f"SFT loss {losses[0]:.3f} -> {losses[-1]:.3f} in {seconds:.1f}s")
    assert losses[-1] <= 0.5 * losses[0]
    assert seconds < 60
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama"
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()
    assert not list(out.glob("*.bin")) or [p.name for p in out.glob("*.bin")] == ["training_args.bin"]


def test_yaml_config_and_flag_override(tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy.preference_pairs(40, seed=1))
    config = tmp_path / "run.yaml"
    config.write_text(f"model: tiny:gpt2\ndataset: {data}\nmax_steps: 3\nlearning_rate: 0.001\n"
                      f"output_dir: {tmp_path / 'rm'}\ndisable_tqdm: true\neval_fraction: 0.25\n")
    assert main(["reward", "--config", str(config), "--max_steps", "4"]) == 0
    state = json.loads(next((tmp_path / "rm").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["global_step"] == 4  # the flag overrides the file
    card = (tmp_path / "rm" / "README.md").read_text()
    assert "**reward**" in card and "pairs.jsonl" in card and "eval_accuracy" in card
    assert "eval_accuracy" in capsys.readouterr().out


def test_unknown_yaml_key_is_an_error(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rat: 0.1\n")
    with pytest.raises(SystemExit):
        main(["sft", "--config", str(config), "--dataset", "x.jsonl"])
    assert "learning_rat" in capsys.readouterr().err


def test_bad_dataset_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    rows = toy.prompt_completion(4)
    rows[2]["completion"] = ""
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    assert main(["sft", "--dataset", data, "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Row 2" in err and "'completion'" in err and "empty" in err
    assert main(["sft", "--dataset", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sft"])
    assert "--dataset_name is required (--dataset works too)" in capsys.readouterr().err


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "posttrain.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "sft" in done.stdout and "reward" in done.stdout


def test_dpo_and_kto_commands(tmp_path, capsys):
    pairs = toy.preference_pairs(32, seed=2)
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    assert main(["dpo", "--model", "tiny:llama", "--dataset", data, "--output_dir", str(tmp_path / "dpo"),
                 "--max_steps", "3", "--learning_rate", "1e-3", "--prefix_sharing", "true", "--disable_tqdm", "true",
                 "--reference_cache_dir", str(tmp_path / "cache")]) == 0
    assert "posttrain dpo: saved to" in capsys.readouterr().out
    assert "**dpo (sigmoid)**" in (tmp_path / "dpo" / "README.md").read_text()
    unpaired = [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 else r["rejected"], "label": bool(i % 2)}
                for i, r in enumerate(pairs)]
    data = write_jsonl(tmp_path / "unpaired.jsonl", unpaired)
    assert main(["kto", "--dataset", data, "--output_dir", str(tmp_path / "kto"), "--max_steps", "2",
                 "--disable_tqdm", "true", "--per_device_train_batch_size", "4"]) == 0
    assert "**kto**" in (tmp_path / "kto" / "README.md").read_text()
    with pytest.raises(SystemExit):
        main(["dpo", "--help"])
    text = capsys.readouterr().out
    for flag in ("--loss_type", "--beta", "--reference", "--prefix_sharing", "--label_smoothing"):
        assert flag in text


# ---- TRL compatibility: a `trl <cmd>` command line or YAML runs as `posttrain <cmd>` ---------------------

@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny Llama saved with save_pretrained, as a hub download would be."""
    from posttrain.models.loading import load_model, load_tokenizer

    path = tmp_path_factory.mktemp("model") / "tiny-llama"
    load_model("tiny:llama").save_pretrained(path)
    load_tokenizer("tiny:llama").save_pretrained(path)
    return str(path)


def adapter_targets(out) -> set:
    return set(json.loads((out / "adapter_config.json").read_text())["target_modules"])


def test_trl_command_line_with_a_save_to_disk_dataset(tmp_path, saved_model, caplog, capsys):
    import datasets

    rows = [dict(r, id=i) for i, r in enumerate(toy.prompt_completion(24, seed=3))]  # 'id': TRL drops it
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:16]),
                          "test": datasets.Dataset.from_list(rows[16:])}).save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "sft"
    with caplog.at_level("WARNING", logger="posttrain.data.formats"):
        code = main(["sft", "--model_name_or_path", saved_model, "--dataset_name", str(tmp_path / "data"),
                     "--use_peft", "--lora_target_modules", "q_proj", "v_proj", "--lora_r", "4",
                     "--lora_alpha", "8", "--max_steps", "1", "--per_device_train_batch_size", "4",
                     "--eval_strategy", "steps", "--eval_steps", "1", "--output_dir", str(out),
                     "--dtype", "float32", "--model_revision", "main", "--attn_implementation", "eager",
                     "--report_to", "none", "--disable_tqdm", "true"])
    assert code == 0
    assert adapter_targets(out) == {"q_proj", "v_proj"}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["lora_dropout"] == 0.05  # TRL's default
    assert "eval_loss" in capsys.readouterr().out  # eval_strategy steps evaluated on the 'test' split
    notes = [r.getMessage() for r in caplog.records if "does not use column(s) ['id']" in r.getMessage()]
    assert len(notes) == 2, notes  # one note per dataset: train and test


def test_trl_yaml_config_with_a_list_and_env(tmp_path, saved_model, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", toy.prompt_completion(16, seed=4))
    write_jsonl(folder / "test.jsonl", toy.prompt_completion(4, seed=5))
    monkeypatch.delenv("POSTTRAIN_YAML_ENV", raising=False)
    config = tmp_path / "sft.yaml"
    config.write_text(f"""# as in TRL's docs
model_name_or_path: {saved_model}
dataset_name: {folder}
dataset_train_split: train
use_peft: true
lora_r: 4
lora_alpha: 8
lora_target_modules:
  - q_proj
  - k_proj
learning_rate: 2.0e-4
max_steps: 2
per_device_train_batch_size: 4
report_to: none
output_dir: {tmp_path / "out"}
disable_tqdm: true
env:
  POSTTRAIN_YAML_ENV: set-by-yaml
""")
    assert main(["sft", "--config", str(config)]) == 0
    assert adapter_targets(tmp_path / "out") == {"q_proj", "k_proj"}
    assert os.environ["POSTTRAIN_YAML_ENV"] == "set-by-yaml"


def test_model_flags_reach_model_loading(tmp_path, saved_model):
    from posttrain.cli import _parse
    from posttrain.models.loading import load_model

    model_args, data_args, config = _parse("sft", [
        "--model", saved_model, "--dataset", "d.jsonl", "--attn_implementation", "eager", "--dtype", "bfloat16",
        "--lora_target_modules", "q_proj,v_proj", "--use_lora", "true", "--output_dir", str(tmp_path)])
    assert model_args.model_name_or_path == saved_model and data_args.dataset_name == "d.jsonl"
    assert model_args.use_peft and model_args.lora_target_modules == ["q_proj", "v_proj"]
    model = load_model(model_args.model_name_or_path, **model_args.model_init_kwargs())
    assert model.config._attn_implementation == "eager" and model.dtype == torch.bfloat16
    assert model_args.peft_config("seq-cls").task_type == "SEQ_CLS"
    defaults = _parse("sft", ["--dataset_name", "d.jsonl", "--use_peft"])[0]
    assert defaults.lora_target_modules is None and defaults.peft_config().target_modules is None  # peft's per-arch
    assert defaults.dtype == "float32" and defaults.lora_dropout == 0.05  # TRL's defaults
    assert _parse("sft", ["--dataset", "d.jsonl", "--lora_target_modules", "all-linear"])[0].lora_target_modules \
        == "all-linear"


def test_quantization_without_lora_and_streaming_flags_are_clear_errors(capsys):
    for flag in ("--load_in_4bit", "--load_in_8bit"):  # a quantized base trains only through an adapter
        with pytest.raises(SystemExit):
            main(["sft", "--dataset_name", "d.jsonl", flag, "true"])
        assert f"--{flag[2:]}: a quantized base trains only through a LoRA adapter; add --use_peft" in \
            capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sft", "--dataset_name", "d.jsonl", "--dataset_streaming", "true"])
    assert "streaming datasets are not supported yet" in capsys.readouterr().err


def test_hub_dataset_name_offline_is_a_clear_error(tmp_path, capsys):
    assert main(["sft", "--dataset_name", "trl-lib/Capybara", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Dataset 'trl-lib/Capybara' is not a local file or directory" in err
    assert "the hub is unreachable (HF_HUB_OFFLINE=1)" in err


def test_eval_strategy_without_a_test_split_is_a_clear_error(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", toy.prompt_completion(8))
    assert main(["sft", "--dataset_name", data, "--eval_strategy", "steps", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "eval_strategy='steps' needs evaluation data" in err and "has no split 'test'" in err
    assert "--eval_fraction" in err


def test_yaml_alias_keys_and_unknown_keys(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model: tiny:gpt2\nmodel_name_or_path: tiny:llama\n")
    with pytest.raises(SystemExit):
        main(["sft", "--config", str(config), "--dataset", "x.jsonl"])
    assert "'model' and 'model_name_or_path' are the same setting" in capsys.readouterr().err


def test_grpo_reward_funcs_in_trl_dotted_spelling(tmp_path, monkeypatch, capsys):
    (tmp_path / "cli_test_rewards.py").write_text(
        "def short_reward(completions, **kwargs):\n    return [-len(c) / 10 for c in completions]\n")
    monkeypatch.chdir(tmp_path)  # TRL's scripts and posttrain's CLI import reward modules from the working directory
    monkeypatch.setattr(sys, "path", list(sys.path))
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in toy.prompt_completion(8)])
    code = main(["grpo", "--model_name_or_path", "tiny:llama", "--dataset_name", data, "--reward_funcs",
                 "cli_test_rewards.short_reward", "--max_steps", "1", "--num_generations", "2",
                 "--max_completion_length", "4", "--per_device_train_batch_size", "4", "--logging_steps", "1",
                 "--save_strategy", "no", "--disable_tqdm", "true", "--output_dir", str(tmp_path / "grpo")])
    assert code == 0
    assert "rewards/short_reward" in capsys.readouterr().out  # the function scored the completions
    assert main(["grpo", "--dataset_name", data, "--reward_funcs", "no_such_rewards.fn", "--max_steps", "1"]) == 2
    assert "no module named 'no_such_rewards'" in capsys.readouterr().err  # one line, no traceback
