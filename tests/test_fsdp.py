"""FSDP2 on two CPU processes (gloo), launched as a user would: ``accelerate launch --config_file
examples/accelerate/fsdp2.yaml``. Each trainer logs the same losses as one process with the same global
batch, while each process holds about half of the parameters, optimizer state and reference model;
sampling gathers the weights once per rollout batch; a sharded checkpoint resumes to the uninterrupted
result; a run killed while saving leaves no checkpoint that resume would pick up."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch_helpers import ENV, FSDP2_CONFIG, accelerate_command, launch_two

SCRIPT = os.path.join(os.path.dirname(__file__), "fsdp_script.py")
KINDS = ["sft", "dpo", "dpo_adapter", "dpo_precomputed", "reward", "kto", "grpo", "grpo_adapter", "rloo", "ppo", "rest",
         "env"]


def run_single(*args):
    done = subprocess.run([sys.executable, SCRIPT, *args], env=dict(ENV, OMP_NUM_THREADS="2"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def results(directory, kind):
    with open(os.path.join(directory, f"{kind}.json")) as fh:
        return json.load(fh)


def test_every_trainer_under_fsdp2_matches_one_process_and_is_sharded(tmp_path):
    launch_two(SCRIPT, ",".join(KINDS), str(tmp_path / "fsdp"), "1", config=FSDP2_CONFIG)
    run_single(",".join(KINDS), str(tmp_path / "one"), "2")
    for kind in KINDS:
        fsdp, one = results(tmp_path / "fsdp", kind), results(tmp_path / "one", kind)
        assert fsdp["fsdp"] and fsdp["world_size"] == 2 and not one["fsdp"], kind
        assert len(fsdp["losses"]) == len(one["losses"]) == (2 if kind == "rest" else 3), kind  # ReST: 1 Grow, 2 Improve
        assert fsdp["losses"] == pytest.approx(one["losses"], abs=1e-5), kind
        assert fsdp["checksum"] == pytest.approx(one["checksum"], rel=1e-6), kind  # the trained weights
        # each process holds about half of the parameters and of the optimizer state
        assert fsdp["total_params"] == one["local_params"], kind
        assert 0.45 <= fsdp["local_params"] / fsdp["total_params"] <= 0.55, kind
        assert 0.45 <= fsdp["local_optim"] / fsdp["total_optim"] <= 0.55, kind
        assert fsdp["total_optim"] == one["local_optim"], kind
        if one["local_ref"]:  # a reference copy: sharded like the policy
            assert fsdp["total_ref"] == one["local_ref"] and 0.45 <= fsdp["local_ref"] / fsdp["total_ref"] <= 0.55
    assert {k for k in KINDS if results(tmp_path / "one", k)["local_ref"]} == {"dpo", "kto", "grpo", "rloo", "ppo", "env"}
    assert results(tmp_path / "fsdp", "env")["tool_tokens"] > 0  # TextEnvironment rollouts, tool output included
    # precomputed reference log-probs: each process computed half of the rows, once
    assert results(tmp_path / "fsdp", "dpo_precomputed")["precomputed_rows"] == 32
    assert results(tmp_path / "one", "dpo_precomputed")["precomputed_rows"] == 64
    for kind in ("grpo", "grpo_adapter", "ppo"):  # real sampling under FSDP2: as unsharded, weights gathered once
        sampling = results(tmp_path / "fsdp", kind)["sampling"]
        assert results(tmp_path / "fsdp", kind)["sampling_all_ranks"] == [1, 1], sampling
        assert 0 < sampling["all_gathers"] <= sampling["fsdp_modules"] < sampling["tokens"], sampling
    # the final save is a normal full model, whatever the checkpoint format
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "sft-final")
    assert sum(p.numel() for p in model.parameters()) == results(tmp_path / "one", "sft")["local_params"]
    assert float(sum(p.detach().double().abs().sum() for p in model.parameters())) == pytest.approx(
        results(tmp_path / "fsdp", "sft")["checksum"], rel=1e-9)


@pytest.mark.parametrize("state_dict_type", ["SHARDED_STATE_DICT", "FULL_STATE_DICT"])
def test_fsdp2_resume_equals_uninterrupted(tmp_path, state_dict_type):
    kinds = "sft,grpo,ppo" if state_dict_type == "SHARDED_STATE_DICT" else "sft,grpo"
    config = tmp_path / "fsdp2.yaml"
    with open(FSDP2_CONFIG) as fh:
        config.write_text(fh.read().replace("SHARDED_STATE_DICT", state_dict_type))
    launch_two(SCRIPT, kinds, str(tmp_path / "full"), "1", "4", "2", config=str(config))
    checkpoint = str(tmp_path / "full" / "{kind}" / "checkpoint-2")
    if state_dict_type == "SHARDED_STATE_DICT":  # every process wrote its own shards
        assert len(glob.glob(checkpoint.format(kind="grpo") + "/sharded/*.distcp")) == 2
        assert len(glob.glob(checkpoint.format(kind="sft") + "/pytorch_model_fsdp_0/*.distcp")) == 2
    else:
        assert os.path.exists(checkpoint.format(kind="grpo") + "/trainable.safetensors")
    launch_two(SCRIPT, kinds, str(tmp_path / "resumed"), "1", "4", "2", checkpoint, config=str(config))
    for kind in kinds.split(","):
        full, resumed = results(tmp_path / "full", kind), results(tmp_path / "resumed", kind)
        assert resumed["losses"] == pytest.approx(full["losses"][2:], abs=1e-6), kind
        assert resumed["checksum"] == pytest.approx(full["checksum"], rel=1e-9), kind


def test_fsdp2_run_killed_while_saving_resumes_from_a_complete_checkpoint(tmp_path):
    """SIGKILL of the whole launch while a random checkpoint is being written (a run that saves every step): what
    is left never holds a checkpoint that resume picks up but cannot load, and resuming reaches the
    uninterrupted weights. One trial by default; POSTTRAIN_KILL_TRIALS=10 for more."""
    launch_two(SCRIPT, "grpo", str(tmp_path / "full"), "1", "6", "1", config=FSDP2_CONFIG)
    expected = results(tmp_path / "full", "grpo")["checksum"]
    trials = int(os.environ.get("POSTTRAIN_KILL_TRIALS", "1"))
    rng = random.Random(0)
    for trial in range(trials):
        out = tmp_path / f"kill{trial}"
        process = subprocess.Popen(accelerate_command(SCRIPT, "grpo", str(out), "1", "6", "1", config=FSDP2_CONFIG),
                                   env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        # kill while checkpoint-<target> is being written: its staging directory exists, a few ms in
        target = rng.randint(2, 5)
        staging = out / "grpo" / ".staging" / f"checkpoint-{target}"
        deadline = time.time() + 120
        while not staging.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        left = sorted(glob.glob(str(out / "grpo" / "checkpoint-*")))
        staged = sorted(os.path.basename(p) for p in glob.glob(str(out / "grpo" / ".staging" / "*")))
        print(f"trial {trial}: killed saving checkpoint-{target}; left checkpoints {[os.path.basename(p) for p in left]} complete, "
              f"{staged or 'none'} half-written in .staging")
        if not left:  # killed before the first checkpoint completed: nothing to resume
            continue
        for path in left:  # every checkpoint that exists is complete
            assert os.path.exists(os.path.join(path, "method_state.json")) and os.path.isdir(os.path.join(path, "sharded"))
        launch_two(SCRIPT, "grpo", str(out), "1", "6", "1", "last", config=FSDP2_CONFIG)  # the newest checkpoint
        assert results(out, "grpo")["checksum"] == pytest.approx(expected, rel=1e-9), (trial, left)


def test_readme_one_node_fsdp2_command_runs_as_written(tmp_path):
    """The README's one-node FSDP2 command, verbatim, from a directory laid out like the checkout."""
    import re

    from launch_helpers import ROOT, free_port

    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("## Many GPUs and many nodes"):]
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    assert command.startswith(".venv/bin/accelerate launch --config_file examples/accelerate/fsdp2.yaml")
    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    os.symlink(os.path.dirname(os.path.dirname(sys.executable)), tmp_path / ".venv")
    env = dict(ENV, PET_MASTER_PORT=str(free_port()))  # torchrun's port (the README leaves the default)
    done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "runs" / "fsdp2-sft"
    assert "posttrain sft: saved to" in done.stdout + done.stderr
    for step in (2, 4):  # sharded checkpoints: one file per process
        assert len(glob.glob(str(out / f"checkpoint-{step}" / "pytorch_model_fsdp_0" / "*.distcp"))) == 2
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0  # the final model: full, loadable
    assert not (out / ".staging").exists()


class OneProcess:  # the part of an Accelerator that checkpoint.atomic_save uses, for one process
    is_main_process = True

    def wait_for_everyone(self):
        pass


def test_final_save_replaces_an_older_model_and_never_mixes_the_two(tmp_path):
    """A save into a directory holding an older (sharded) model: the old weight shards the new save does not
    replace are removed, the config is the new one, checkpoints are left alone; a save that fails midway leaves
    the old model untouched (nothing of the new one moved in)."""
    from posttrain.checkpoint import atomic_save

    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    for name, text in [("config.json", "old"), ("model-00001-of-00002.safetensors", "old"),
                       ("model-00002-of-00002.safetensors", "old"), ("model.safetensors.index.json", "old")]:
        (out / name).write_text(text)
    with pytest.raises(RuntimeError):
        with atomic_save(OneProcess(), str(out)) as staging:
            Path(staging, "model.safetensors").write_text("new")
            raise RuntimeError("killed while writing")
    assert (out / "config.json").read_text() == "old" and not (out / "model.safetensors").exists()
    with atomic_save(OneProcess(), str(out)) as staging:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            Path(staging, name).write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [".posttrain-complete", "checkpoint-2", "config.json",
                                                     "model.safetensors", "tokenizer.json"]  # the marker: written last
    assert all((out / n).read_text() == "new" for n in ("config.json", "model.safetensors", "tokenizer.json"))
