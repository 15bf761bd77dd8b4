"""`accelerate launch --num_processes 2` (CPU, gloo): SFT gives the same losses as one process with the
same global batch; GRPO splits the prompts across processes and logs rewards gathered from both."""

import json
import os
import subprocess
import sys

import pytest

from launch_helpers import ENV, launch_two

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_sft_script.py")
GRPO_SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_grpo_script.py")


def test_two_processes_match_one(tmp_path):
    launch_two(SCRIPT, str(tmp_path / "ddp"), "4", str(tmp_path / "ddp.json"))
    single = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "one"), "8", str(tmp_path / "one.json")],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp, one = (json.loads((tmp_path / f).read_text()) for f in ("ddp.json", "one.json"))
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert len(ddp["losses"]) == len(one["losses"]) == 5
    assert ddp["losses"] == pytest.approx(one["losses"], abs=1e-5)


def test_grpo_on_two_processes_gathers_rewards(tmp_path):
    launch_two(GRPO_SCRIPT, str(tmp_path))
    ranks = [json.loads((tmp_path / f"seen-{r}.json").read_text()) for r in (0, 1)]
    log = json.loads((tmp_path / "log.json").read_text())
    assert [r["world_size"] for r in ranks] == [2, 2] and len(log) == 3
    assert [e["step"] for e in log] == [1, 2, 3]
    dataset = ranks[0]["dataset_prompts"]
    for step in range(3):
        rows = [r["indices"][step] for r in ranks]
        assert rows[0]["step"] == rows[1]["step"] == step and len(rows[0]["rows"]) == len(rows[1]["rows"]) == 4
        # each process sampled its own 4 prompts x 4 generations; together the global batch of 8 prompts
        assert not set(rows[0]["rows"]) & set(rows[1]["rows"])
        for rank, seen in zip(rows, ranks):  # the reward function scored those rows' prompts, 4 times each
            assert seen["seen"][step]["prompts"] == [dataset[i] for i in rank["rows"] for _ in range(4)]
        rewards = ranks[0]["seen"][step]["rewards"] + ranks[1]["seen"][step]["rewards"]
        assert len(rewards) == 32 and len(set(rewards)) > 1
        assert log[step]["reward"] == pytest.approx(sum(rewards) / 32, abs=1e-6)
