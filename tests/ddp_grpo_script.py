"""Run by tests/test_distributed.py under `accelerate launch`: a short GRPO run whose reward function
records, on each process, the prompts and rewards it saw, and the prompt rows each process sampled at
each step (seen from a callback's on_step_begin); rank 0 writes the logged metrics."""

import json
import os
import sys

import torch
from transformers import TrainerCallback

from posttrain import GRPOConfig, GRPOTrainer
from posttrain.data import toy

out_dir = sys.argv[1]
rank = int(os.environ.get("RANK", 0))
seen, indices = [], []


def digits(prompts, completions, **kw):
    """A deterministic reward that varies across samples: the share of digits in the completion."""
    rewards = [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
    seen.append({"prompts": list(prompts), "rewards": rewards})
    return rewards


class StepBegins(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        indices.append({"step": state.global_step, "rows": rows_taken[-1]})


# 4 prompts x 4 generations = 16 completions per process per step; one optimizer step per generation
args = GRPOConfig(output_dir=out_dir, max_steps=3, per_device_train_batch_size=16, num_generations=4,
                  max_completion_length=4, learning_rate=1e-3, disable_tqdm=True, seed=0, logging_steps=1,
                  save_strategy="no", lr_scheduler_type="constant", report_to="none",
                  use_cpu=True)  # as ddp_sft_script.py: on CPU, TrainingArguments otherwise sets up 1 process
rows = toy.arithmetic_problems(32, seed=0)
trainer = GRPOTrainer("tiny:llama", digits, args=args, train_dataset=rows, callbacks=[StepBegins()])
# the prompt rows of each generation, as the trainer takes them (next_prompts() moves on to the next batch,
# so it is wrapped rather than called again); one optimizer step per generation here
rows_taken, take = [], trainer.next_prompts
trainer.next_prompts = lambda: rows_taken.append(take()) or rows_taken[-1]
trainer.train()
with open(os.path.join(out_dir, f"seen-{rank}.json"), "w") as fh:
    json.dump({"world_size": trainer.accelerator.num_processes, "seen": seen, "indices": indices,
               "dataset_prompts": [r["prompt"] for r in rows]}, fh)
if rank == 0:
    with open(os.path.join(out_dir, "log.json"), "w") as fh:
        json.dump(trainer.state.log_history, fh)
if torch.distributed.is_initialized():
    trainer.accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()
