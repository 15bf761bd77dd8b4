"""`accelerate launch --num_processes 2` (CPU, gloo) gives the same SFT losses as one process with the
same global batch."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_sft_script.py")


def test_two_processes_match_one(tmp_path):
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    # --multi_gpu selects the torchrun launcher; with no GPU, accelerate runs the processes on CPU with gloo.
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", "29517", SCRIPT, str(tmp_path / "ddp"), "4",
           str(tmp_path / "ddp.json")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "one"), "8", str(tmp_path / "one.json")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp, one = (json.loads((tmp_path / f).read_text()) for f in ("ddp.json", "one.json"))
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert len(ddp["losses"]) == len(one["losses"]) == 5
    assert ddp["losses"] == pytest.approx(one["losses"], abs=1e-5)
