"""`posttrain sft|reward`: flags with help, --config YAML, the acceptance run, clear errors."""

import json
import subprocess
import sys
import time

import pytest
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
                 "--learning_rate", "--gradient_accumulation_steps", "--config", "--completion_only_loss"):
        assert flag in text, flag
    assert "Padding-free packing" in text and "tiny:<arch>" in text


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
    assert "--dataset is required" in capsys.readouterr().err


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
