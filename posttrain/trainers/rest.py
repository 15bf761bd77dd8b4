"""ReST: Reinforced Self-Training (Gulcehre et al., 2023) -- grow a dataset from the policy, then fine-tune
on its best samples with rising thresholds.

The recipe (``train`` below, top to bottom), for each of ``grow_steps`` Grow steps:

1. Grow: sample ``num_generations`` completions for every prompt from the current policy and score
   them; every sample and its reward is written to ``output_dir/grow-<g>.jsonl``;
2. for each of ``improve_steps`` Improve steps: keep the samples whose reward reaches the step's
   threshold (a fixed value, or a rising quantile of the grown rewards) and fine-tune on them with
   the NLL of the completion tokens (behaviour cloning, optionally reward-weighted), ``num_iterations``
   passes; then measure the policy's mean reward on the evaluation prompts (fresh samples, RNG
   untouched).

A ReST step (``global_step``) is one phase, Grow or Improve: ``max_steps`` is ``grow_steps x (1 +
improve_steps)``, every phase is logged, and ``save_steps`` counts phases, so a run resumes between
any two phases with the same data and weights.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field

import torch

from accelerate.utils import gather_object

from .. import distributed
from ..eval.policy import evaluate_policy
from ..losses.logprobs import forward_completion
from ..losses.rl import aggregate
from ..rollout import Rollout, pad_with_attention
from ..config import ConfigError, integer
from ..rewards import RewardError
from .online import OnlineTrainer
from .online_config import OnlineConfig


@dataclass
class ReSTConfig(OnlineConfig):
    grow_steps: int = field(default=2, metadata={"help": "Grow steps (each samples a fresh dataset from the policy)."})
    improve_steps: int = field(default=3, metadata={"help": "Improve steps per Grow step (rising thresholds)."})
    num_generations: int = field(default=4, metadata={"help": "Completions sampled per prompt in a Grow step."})
    thresholds: list[float] = field(default_factory=list, metadata={
        "help": "Reward threshold of each Improve step (as many as --improve_steps); overrides the quantiles."})
    threshold_quantiles: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.9], metadata={
        "help": "Threshold of each Improve step as a quantile of the Grow step's rewards (rising)."})
    reward_weighted: bool = field(default=False, metadata={
        "help": "Weight each kept sample's NLL by its reward divided by the kept samples' mean reward "
                "(rewards must be >= 0); default: plain behaviour cloning."})
    num_iterations: int = field(default=2, metadata={"help": "Passes over the kept samples per Improve step."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    lr_scheduler_type: str = field(default="constant", metadata={
        "help": "Learning-rate schedule, stepped once per Improve step."})
    reference: str = field(default="none", metadata={"help": "ReST keeps no reference model."})

    RANGES = {"grow_steps": integer(1), "improve_steps": integer(1), "num_generations": integer(1)}

    def __post_init__(self):
        super().__post_init__()
        for name in ("thresholds", "threshold_quantiles"):
            values = getattr(self, name)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise ConfigError(f"{name}={values!r} is out of range: it must be a list of finite numbers.")
            used = values[: self.improve_steps]
            if any(b < a for a, b in zip(used, used[1:])):
                raise ConfigError(f"{name}={values!r}: the thresholds of the Improve steps must rise (each at least "
                                  "the one before), as in ReST; sort them.")
        if self.max_steps > 0:
            raise ValueError("ReST's length is grow_steps x (1 + improve_steps) phases; leave max_steps unset.")
        if self.thresholds and len(self.thresholds) != self.improve_steps:
            raise ValueError(f"--thresholds has {len(self.thresholds)} values for {self.improve_steps} improve steps.")
        if not self.thresholds and len(self.threshold_quantiles) < self.improve_steps:
            raise ValueError(f"--threshold_quantiles has {len(self.threshold_quantiles)} values for "
                             f"{self.improve_steps} improve steps; give one per step.")
        if any(not 0 <= q <= 1 for q in self.threshold_quantiles):
            raise ConfigError(f"threshold_quantiles={self.threshold_quantiles!r} is out of range: each must be a "
                              "quantile in [0, 1] (0.9: the best 10% of the grown samples).")


class ReSTTrainer(OnlineTrainer):
    """``ReSTTrainer(model, reward_funcs, args=ReSTConfig(...), train_dataset=..., eval_dataset=...)``."""

    method = "rest"

    def __init__(self, model, reward_funcs=None, args: ReSTConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, callbacks=None, peft_config=None, rollout_source=None):
        args = args or ReSTConfig()
        super().__init__(model, args, reward_funcs=reward_funcs, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         peft_config=peft_config, rollout_source=rollout_source,
                         max_steps=args.grow_steps * (1 + args.improve_steps))

    def train(self, resume_from_checkpoint=None):
        method_state = self.begin_training(resume_from_checkpoint)
        if method_state:  # the checkpoint's grown data back into this run's directory (it may be another run's)
            os.makedirs(self.args.output_dir, exist_ok=True)
            for name in method_state["grown"]:
                shutil.copy2(os.path.join(method_state["checkpoint"], name), os.path.join(self.args.output_dir, name))
        per_grow = 1 + self.args.improve_steps
        while not self.training_finished():
            g, phase = divmod(self.state.global_step, per_grow)
            if phase == 0:  # 1. Grow
                grown = self.grow(g)
                scored = [s["reward"] for s in grown if s["reward"] is not None]
                if not scored and self.args.max_unscored_generations:  # a Grow step is a whole dataset: stop now
                    names = ", ".join(self.rewards.names) if self.rewards else "the environment's rewards"
                    raise RewardError(f"Grow step {g}: none of the {len(grown)} grown samples got a reward (every "
                                      f"reward function ({names}) returned None for each), so ReST has nothing to "
                                      "filter or learn from. Check the reward functions (None means 'does not "
                                      "apply').")
                entry = {"grow": g, "improve": -1, "grow_reward": sum(scored) / max(len(scored), 1),
                         "dropped": len(grown) - len(scored)}
            else:  # 2. Improve on the samples above this step's threshold
                grown = [s for s in self.load_grown(g) if s["reward"] is not None]
                tau = self.threshold(phase - 1, [s["reward"] for s in grown])
                kept = [s for s in grown if s["reward"] >= tau]
                stats = self.improve(kept) if kept else {}
                self.lr_scheduler.step()  # the schedule runs over Improve steps
                entry = {"grow": g, "improve": phase - 1, "threshold": tau, "kept": len(kept), **stats,
                         "reward": self.mean_reward()}
            entry.update(self.drain_metrics())
            self.step_end()
            self.log(entry)  # every phase is logged (the table of the run)
            if self.checkpoint_due():
                name = os.path.basename(self._grow_path(g))
                self.save_checkpoint({"grown": [name]}, files=[self._grow_path(g)])
        if self.accelerator.is_main_process and not self.args.disable_tqdm:
            print(self.table())
        return self.end_training()

    def load_checkpoint(self, path: str) -> dict:
        state = super().load_checkpoint(path)
        return {**state, "checkpoint": path}

    # ---- Grow -------------------------------------------------------------------------------------
    def grow(self, g: int) -> list[dict]:
        """Sample and score ``num_generations`` completions for every prompt (each process its share of the
        prompts, with the weights gathered once under FSDP); every process gets all samples, in prompt
        order; written to disk."""
        n, k = len(self.train_prompts.values), self.args.num_generations
        per_batch = max(1, self.args.completions_per_process() // k)
        self.model.eval()
        local = []
        with self.accelerator.split_between_processes(list(range(n))) as mine, \
                distributed.gathered_for_generation(self.model):
            for start in range(0, len(mine), per_batch):
                indices = mine[start: start + per_batch]
                rollout = self.sample(indices, repeats=k, with_logprobs=False)
                rewards = self.score(rollout).rewards.tolist()
                texts = self.tokenizer.batch_decode(rollout.completion_lists(), skip_special_tokens=True)
                for j, (index, reward) in enumerate(zip([i for i in indices for _ in range(k)], rewards)):
                    keep = rollout.completion_attention[j].bool()
                    local.append({"prompt_index": index, "prompt": self.train_prompts.values[index],
                                  "completion": texts[j],
                                  "prompt_ids": rollout.prompt_ids[j][rollout.prompt_attention[j].bool()].tolist(),
                                  "completion_ids": rollout.completion_ids[j][keep].tolist(),
                                  "completion_mask": rollout.completion_mask[j][keep].tolist(),
                                  "reward": None if math.isnan(reward) else reward})
        self.model.train()
        samples = gather_object(local) if self.accelerator.num_processes > 1 else local  # rank order = prompt order
        path = self._grow_path(g)
        if self.accelerator.is_main_process:
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(path + ".tmp", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(s) + "\n" for s in samples)
            os.replace(path + ".tmp", path)
        self.accelerator.wait_for_everyone()
        return samples

    def _grow_path(self, g: int) -> str:
        return os.path.join(self.args.output_dir, f"grow-{g}.jsonl")

    def load_grown(self, g: int) -> list[dict]:
        with open(self._grow_path(g), encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]

    # ---- Improve ----------------------------------------------------------------------------------
    def threshold(self, i: int, rewards: list[float]) -> float:
        if self.args.thresholds:
            return self.args.thresholds[i]
        if not rewards:
            raise ValueError("No grown sample has a reward (every reward function returned None); ReST has "
                             "nothing to filter. Check the reward functions.")
        return torch.tensor(rewards).quantile(self.args.threshold_quantiles[i]).item()

    def improve(self, kept: list[dict]) -> dict:
        """Behaviour cloning on the kept samples: ``num_iterations`` passes, token-mean NLL of their
        generated tokens over each optimizer step's samples."""
        device, pad = self.accelerator.device, self.tokenizer.pad_token_id
        prompt_ids, prompt_attention = pad_with_attention([s["prompt_ids"] for s in kept], pad, "left", device)
        ids, attention = pad_with_attention([s["completion_ids"] for s in kept], pad, device=device)
        mask, _ = pad_with_attention([s["completion_mask"] for s in kept], 0, device=device)
        batch = Rollout(prompt_ids, prompt_attention, ids, attention, mask)
        rewards = torch.tensor([s["reward"] for s in kept], dtype=torch.float32, device=device)
        if self.args.reward_weighted and (rewards < 0).any():
            raise ValueError("reward_weighted needs rewards >= 0; shift or clip the reward, or turn it off.")
        weights = rewards / rewards.mean().clamp(min=1e-8) if self.args.reward_weighted else torch.ones_like(rewards)
        losses = []
        micro, processes = self.args.per_device_train_batch_size, self.accelerator.num_processes
        generator = torch.Generator().manual_seed(self.args.seed * 100003 + self.state.global_step)
        for _ in range(self.args.num_iterations):
            order = torch.randperm(len(kept), generator=generator)
            window = micro * self.args.gradient_accumulation_steps * processes  # every process's rows of a step
            for start in range(0, len(kept), window):
                rows_in_window = order[start: start + window]
                # DDP and FSDP average the processes' gradients: each normalises by the window's tokens / processes
                tokens = batch.completion_mask[rows_in_window].sum().clamp(min=1) / processes
                mine = rows_in_window.tensor_split(processes)[self.accelerator.process_index]
                # the same number of micro-batches on every process (forwards and backwards run in lockstep);
                # a process left without rows runs one row with weight 0
                parts = list(mine.split(micro))
                parts += [mine[:0]] * (math.ceil(len(rows_in_window) / (micro * processes)) - len(parts))
                window_nll = torch.zeros((), device=device)  # each micro-batch's nll: its share of the token mean
                for j, rows in enumerate(parts):
                    scale = 1.0 if len(rows) else 0.0
                    rows = rows if len(rows) else rows_in_window[:1]
                    with self.accumulating(j == len(parts) - 1), self.accelerator.autocast():
                        mb = batch.select(rows)
                        logps, _ = forward_completion(self.model, mb, 1.0)
                        nll = aggregate(-logps * weights[rows][:, None], mb.completion_mask, "dapo", num_items=tokens)
                        self.accelerator.backward(nll * scale)
                    window_nll += nll.detach() * scale
                window_nll = self.accelerator.reduce(window_nll, reduction="sum") / processes
                losses.append(float(window_nll) * len(rows_in_window))
                self.apply_gradients(schedule=False)
        return {"nll": sum(losses) / (len(kept) * self.args.num_iterations)}

    def mean_reward(self) -> float:
        """The policy's mean reward on the evaluation prompts (the training prompts if none were given)."""
        prompts = self.eval_prompts or self.train_prompts
        with distributed.gathered_for_generation(self.model):
            result = evaluate_policy(self.model, self.tokenizer, prompts.values, self.rewards, columns=prompts.columns,
                                     sampler=self.sampler, prompt_ids=prompts.ids, seed=self.args.seed + 1,
                                     batch_size=self.args.per_device_eval_batch_size, trainer_state=self.state)
        return result["reward"]

    def table(self) -> str:
        """Reward per Grow / Improve step, as a markdown table."""
        lines = ["| grow | step | threshold | kept | mean reward |", "|---:|---|---:|---:|---:|"]
        for e in self.state.log_history:
            if e.get("improve", 0) < 0:
                lines.append(f"| {e['grow']} | grow (samples) | | | {e['grow_reward']:.4f} |")
            elif "improve" in e:
                lines.append(f"| {e['grow']} | improve {e['improve']} | {e['threshold']:.4f} | {e['kept']} | "
                             f"{e.get('reward', float('nan')):.4f} |")
        return "\n".join(lines)
