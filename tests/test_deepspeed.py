"""DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (DeepSpeed's CPU accelerator, gloo), launched as a user would:
``accelerate launch`` with a DeepSpeed config. The offline trainers (SFT, reward, DPO with a reference copy, KTO)
and GRPO log the same losses as one process with the same global batch and end at the same weights; under ZeRO-3
each process holds half of the policy's parameters and of the reference copy's (``distributed.shard_frozen``),
and GRPO's real sampling (weights gathered once, ``distributed.gathered_for_generation``) equals the full model's.
A GRPO checkpoint (DeepSpeed's own, every process's partitions) resumes to the uninterrupted run. The other online
trainers refuse a DeepSpeed launch with a clear error instead of quietly running plain DDP.

Skipped where DeepSpeed is not importable (it is an optional dependency, installed apart from the project's
environment here: run with ``/work/venv-ds/bin/python -m pytest tests/test_deepspeed.py``)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("deepspeed")

from launch_helpers import ENV, ROOT, free_port  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "deepspeed_script.py")
ZERO2_CONFIG = os.path.join(ROOT, "examples", "accelerate", "zero2.yaml")
# ZeRO-3 through a DeepSpeed json: the tiny test model's parameters are all below DeepSpeed's default
# stage3_param_persistence_threshold (1e5 elements), which would keep every one of them whole on every process.
DS3_JSON = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                  "stage3_gather_16bit_weights_on_model_save": True},
            "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
ZERO3_YAML = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  deepspeed_config_file: {json}
  zero3_init_flag: false
num_machines: 1
num_processes: 2
machine_rank: 0
rdzv_backend: static
same_network: true
use_cpu: false
"""
BOTH = ["sft", "dpo", "kto", "grpo"]  # grpo last: the script checks its sampling after
ZERO2_ONLY = ["reward"]  # tiny:llama's sequence-classification head cannot be built once a ZeRO-3 config is active
RUN_ENV = dict(ENV, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


def zero3_config(tmp_path):
    (tmp_path / "ds3.json").write_text(json.dumps(DS3_JSON))
    config = tmp_path / "zero3.yaml"
    config.write_text(ZERO3_YAML.format(json=tmp_path / "ds3.json"))
    return config


def launch(config, kinds, out, *more, check=True):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
               "2", "--num_machines", "1", "--main_process_port", str(free_port()), SCRIPT, ",".join(kinds), str(out),
               "1", *more]
    done = subprocess.run(command, env=RUN_ENV, capture_output=True, text=True, timeout=240)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def results(directory, kind, suffix=""):
    with open(os.path.join(directory, f"{kind}{suffix}.json")) as fh:
        return json.load(fh)


def test_offline_trainers_under_zero2_and_zero3_match_one_process_and_zero3_partitions(tmp_path):
    zero3 = zero3_config(tmp_path)
    one = subprocess.run([sys.executable, SCRIPT, ",".join(ZERO2_ONLY + BOTH), str(tmp_path / "one"), "2"],
                         env=RUN_ENV, capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    launch(ZERO2_CONFIG, ZERO2_ONLY + BOTH, tmp_path / "zero2")
    launch(zero3, BOTH, tmp_path / "zero3")
    for stage, kinds in ((2, ZERO2_ONLY + BOTH), (3, BOTH)):
        for kind in kinds:
            ds, single = results(tmp_path / f"zero{stage}", kind), results(tmp_path / "one", kind)
            assert ds["world_size"] == 2 and single["world_size"] == 1
            assert len(ds["losses"]) == len(single["losses"]) == 3, (stage, kind)
            assert ds["losses"] == pytest.approx(single["losses"], abs=1e-5), (stage, kind)
            assert ds["checksum"] == pytest.approx(single["checksum"], rel=1e-6), (stage, kind)
            if kind == "grpo":  # its own loop, not a transformers.Trainer: the same measures from the sampling check
                sampling = results(tmp_path / f"zero{stage}", kind, ".sampling")
                stats = {"stage": sampling["stage"], "policy": sampling["policy"], "ref_engine": "DeepSpeedEngine",
                         "ref": {"local": ds["local_ref"], "full": single["local_ref"]}}
            else:
                stats = results(tmp_path / f"zero{stage}", kind, ".ds")
            assert stats["stage"] == stage, kind
            policy = stats["policy"]
            assert policy["full"] == single["local_params"], kind
            if stage == 3:  # each process holds about half of the parameters, the reference copy's too
                assert 0.45 <= policy["local"] / policy["full"] <= 0.55, (kind, policy)
                if single["local_ref"]:
                    assert stats["ref_engine"] == "DeepSpeedEngine"
                    assert stats["ref"]["full"] == single["local_ref"]
                    assert 0.45 <= stats["ref"]["local"] / stats["ref"]["full"] <= 0.55, (kind, stats["ref"])
            else:  # ZeRO-2: full parameters, half of the optimizer state
                assert policy["local"] == policy["full"], kind
                assert 0.45 <= ds["local_optim"] / ds["total_optim"] <= 0.55, kind
        sampling = results(tmp_path / f"zero{stage}", "grpo", ".sampling")  # real sampling, after training
        assert sampling["all_ranks"] == [1, 1] and sampling["tokens"] > 0, (stage, sampling)
        assert sampling["policy"]["local"] == sampling["policy"]["full"] // (2 if stage == 3 else 1), sampling
    assert {k for k in BOTH if results(tmp_path / "one", k)["local_ref"]} == {"dpo", "kto", "grpo"}


def test_grpo_under_zero3_resumes_to_the_uninterrupted_run(tmp_path):
    zero3 = zero3_config(tmp_path)
    launch(zero3, ["grpo"], tmp_path / "full", "4", "2")
    checkpoint = tmp_path / "full" / "grpo" / "checkpoint-2"
    assert len(list((checkpoint / "deepspeed").glob("*_optim_states.pt"))) == 2  # every process's partitions
    launch(zero3, ["grpo"], tmp_path / "resumed", "4", "2", str(tmp_path / "full" / "{kind}" / "checkpoint-2"))
    full, resumed = results(tmp_path / "full", "grpo"), results(tmp_path / "resumed", "grpo")
    assert resumed["losses"] == pytest.approx(full["losses"][2:], abs=1e-6)
    assert resumed["checksum"] == pytest.approx(full["checksum"], rel=1e-9)


def test_other_online_trainers_refuse_deepspeed(tmp_path, monkeypatch):
    import posttrain

    args = posttrain.RLOOConfig(output_dir=str(tmp_path), max_steps=1, report_to="none")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` with a DeepSpeed config exports
    with pytest.raises(ValueError, match="RLOOTrainer runs under DDP or FSDP2; DeepSpeed is supported for the offline "
                                         "trainers and GRPOTrainer only"):
        posttrain.RLOOTrainer("tiny:llama", lambda completions, **kwargs: [0.0] * len(completions), args=args)
