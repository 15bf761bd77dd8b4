"""Run by tests/test_distributed.py under `accelerate launch`: a short GRPO run whose reward function
records, on each process, the prompts and rewards it saw; rank 0 writes the logged metrics."""

import json
import os
import sys

import torch

from posttrain import GRPOConfig, GRPOTrainer
from posttrain.data import toy

out_dir = sys.argv[1]
rank = int(os.environ.get("RANK", 0))
seen = []


def digits(prompts, completions, **kw):
    """A deterministic reward that varies across samples: the share of digits in the completion."""
    rewards = [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
    seen.append({"prompts": list(prompts), "rewards": rewards})
    return rewards


args = GRPOConfig(output_dir=out_dir, max_steps=3, per_device_batch_size=4, num_generations=4, max_new_tokens=4,
                  learning_rate=1e-3, disable_tqdm=True, seed=0)
trainer = GRPOTrainer("tiny:llama", args, train_dataset=toy.arithmetic_problems(32, seed=0), reward_funcs=digits)
trainer.train()
with open(os.path.join(out_dir, f"seen-{rank}.json"), "w") as fh:
    json.dump({"world_size": trainer.accelerator.num_processes, "seen": seen,
               "indices": [trainer.batch_indices(s) for s in range(3)]}, fh)
if rank == 0:
    with open(os.path.join(out_dir, "log.json"), "w") as fh:
        json.dump(trainer.log_history, fh)
if torch.distributed.is_initialized():
    trainer.accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()
