"""Run by tests/test_distributed.py, under `accelerate launch` or plain python: a short SFT run whose
logged losses are written to a JSON file for comparison across process counts."""

import json
import sys

import torch

from posttrain import SFTConfig, SFTTrainer
from posttrain.data import toy

out_dir, per_device_batch, result_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = toy.prompt_completion(64, seed=4)
for i, row in enumerate(rows):  # uneven lengths: the token-mean normaliser must be global, not per process
    row["completion"] += " Really." * (i % 5)
args = SFTConfig(output_dir=out_dir, per_device_train_batch_size=per_device_batch, max_steps=5, learning_rate=1e-3,
                 logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0, lr_scheduler_type="constant",
                 warmup_steps=0, max_length=64, use_cpu=True, ddp_find_unused_parameters=False)
trainer = SFTTrainer("tiny:llama", args, train_dataset=rows)
trainer.train()
if trainer.is_world_process_zero():
    with open(result_path, "w") as fh:
        json.dump({"world_size": trainer.args.world_size,
                   "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e]}, fh)
if torch.distributed.is_initialized():
    # Tear the process group down before exit: left to interpreter shutdown, gloo's threads can abort
    # a rank ("terminate called without an active exception") after the work is done.
    trainer.accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()
