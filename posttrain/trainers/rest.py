"""ReST: Reinforced Self-Training (Gulcehre et al., 2023) -- grow a dataset from the policy, then fine-tune
on its best samples with rising thresholds.

Recipe: for each Grow step, sample ``samples_per_prompt`` completions per prompt from the current
policy and score them (every sample and its reward is written to ``output_dir/grow-<g>.jsonl``);
then for each Improve step, keep the samples whose reward reaches the step's threshold (a fixed
value or a quantile of the grown rewards, rising step by step) and fine-tune on them with the NLL of
the completion tokens (behaviour cloning; optionally weighted by reward), ``num_epochs`` passes.
After every Improve step the policy's mean reward is measured on the evaluation prompts (fresh
samples, RNG untouched) and a checkpoint is written, so a run resumes between any two steps with
the same data and weights.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field

import torch

from ..losses.rl import aggregate
from ..rollout import Rollout, forward_completion, pad_with_attention
from .online import OnlineTrainer
from .online_config import OnlineConfig


@dataclass
class ReSTConfig(OnlineConfig):
    max_steps: int = field(default=1, metadata={
        "help": "Not set by hand for ReST: it becomes grow_steps x (1 + improve_steps), the number of phases."})
    grow_steps: int = field(default=2, metadata={"help": "Grow steps (each samples a fresh dataset from the policy)."})
    improve_steps: int = field(default=3, metadata={"help": "Improve steps per Grow step (rising thresholds)."})
    samples_per_prompt: int = field(default=4, metadata={"help": "Completions sampled per prompt in a Grow step."})
    thresholds: list[float] = field(default_factory=list, metadata={
        "help": "Reward threshold of each Improve step (as many as --improve_steps); overrides the quantiles."})
    threshold_quantiles: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.9], metadata={
        "help": "Threshold of each Improve step as a quantile of the Grow step's rewards (rising)."})
    reward_weighted: bool = field(default=False, metadata={
        "help": "Weight each kept sample's NLL by its reward divided by the kept samples' mean reward "
                "(rewards must be >= 0); default: plain behaviour cloning."})
    num_epochs: int = field(default=2, metadata={"help": "Passes over the kept samples per Improve step."})
    mini_batch_size: int | None = field(default=16, metadata={"help": "Samples per optimizer step."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    reference: str = field(default="none", metadata={"help": "ReST keeps no reference model."})
    output_dir: str = field(default="runs/rest", metadata={"help": "Where grown data, checkpoints and the model go."})

    def __post_init__(self):
        super().__post_init__()
        if self.thresholds and len(self.thresholds) != self.improve_steps:
            raise ValueError(f"--thresholds has {len(self.thresholds)} values for {self.improve_steps} improve steps.")
        if not self.thresholds and len(self.threshold_quantiles) < self.improve_steps:
            raise ValueError(f"--threshold_quantiles has {len(self.threshold_quantiles)} values for "
                             f"{self.improve_steps} improve steps; give one per step.")
        if any(not 0 <= q <= 1 for q in self.threshold_quantiles):
            raise ValueError("threshold_quantiles must lie in [0, 1].")


class ReSTTrainer(OnlineTrainer):
    method = "rest"
    needs_reference = False

    def __init__(self, model, args: ReSTConfig | None = None, eval_dataset=None, **kwargs):
        args = args or ReSTConfig()
        args.max_steps = args.grow_steps * (1 + args.improve_steps)  # phases (grow or improve): the unit of
        # steps, logging and checkpoints (--save_steps 1 checkpoints after every phase)
        super().__init__(model, args, **kwargs)
        if self.accelerator.num_processes > 1:
            raise ValueError("ReSTTrainer runs in one process (each would grow and filter its own data).")
        self.eval_prompts = eval_dataset

    def needs_sampling_logprobs(self) -> bool:
        return False

    # ---- Grow -------------------------------------------------------------------------------------
    def grow(self, g: int) -> list[dict]:
        """Sample and score ``samples_per_prompt`` completions for every prompt; written to disk."""
        samples, n = [], len(self.prompts)
        self.model.eval()
        for start in range(0, n, self.args.per_device_batch_size):
            indices = list(range(start, min(start + self.args.per_device_batch_size, n)))
            rollout = self.sample(indices, repeats=self.args.samples_per_prompt)
            rewards = self.score(rollout).rewards.tolist()
            texts = self.tokenizer.batch_decode(rollout.completion_lists(), skip_special_tokens=True)
            for j, (index, reward) in enumerate(zip([i for i in indices for _ in range(self.args.samples_per_prompt)],
                                                    rewards)):
                keep = rollout.completion_attention[j].bool()
                samples.append({"prompt_index": index, "prompt": self.prompts[index], "completion": texts[j],
                                "prompt_ids": rollout.prompt_ids[j][rollout.prompt_attention[j].bool()].tolist(),
                                "completion_ids": rollout.completion_ids[j][keep].tolist(),
                                "completion_mask": rollout.completion_mask[j][keep].tolist(),
                                "reward": None if reward != reward else reward})
        self.model.train()
        if self.accelerator.is_main_process:
            path = self._grow_path(g)
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(path + ".tmp", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(s) + "\n" for s in samples)
            os.replace(path + ".tmp", path)
        return samples

    def _grow_path(self, g: int) -> str:
        return os.path.join(self.args.output_dir, f"grow-{g}.jsonl")

    def checkpoint_files(self) -> list[str]:
        g = (self.step_count - 1) // (1 + self.args.improve_steps)  # the Grow step the last phase belongs to
        return [self._grow_path(g)] if os.path.exists(self._grow_path(g)) else []

    def load_trainer_state(self, state: dict, checkpoint: str) -> None:
        """Put the checkpoint's grown data back into this run's directory (it may be another run's)."""
        os.makedirs(self.args.output_dir, exist_ok=True)
        for name in os.listdir(checkpoint):
            if name.startswith("grow-") and name.endswith(".jsonl"):
                shutil.copy2(os.path.join(checkpoint, name), os.path.join(self.args.output_dir, name))

    def load_grown(self, g: int) -> list[dict]:
        with open(self._grow_path(g), encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]

    # ---- Improve ----------------------------------------------------------------------------------
    def threshold(self, i: int, rewards: list[float]) -> float:
        if self.args.thresholds:
            return self.args.thresholds[i]
        return torch.tensor(rewards).quantile(self.args.threshold_quantiles[i]).item()

    def improve(self, kept: list[dict]) -> dict:
        """Behaviour cloning on the kept samples (token-mean NLL of their generated tokens)."""
        device = self.accelerator.device
        pad = self.tokenizer.pad_token_id
        prompt_ids, prompt_attention = pad_with_attention([s["prompt_ids"] for s in kept], pad,
                                                          "left", device)
        ids, attention = pad_with_attention([s["completion_ids"] for s in kept], pad, device=device)
        mask, _ = pad_with_attention([s["completion_mask"] for s in kept], 0, device=device)
        batch = Rollout(prompt_ids, prompt_attention, ids, attention, mask)
        rewards = torch.tensor([s["reward"] for s in kept], dtype=torch.float32, device=device)
        if self.args.reward_weighted:
            if (rewards < 0).any():
                raise ValueError("reward_weighted needs rewards >= 0; shift or clip the reward, or turn it off.")
            weights = rewards / rewards.mean().clamp(min=1e-8)
        else:
            weights = torch.ones_like(rewards)
        return self.optimize(batch, self.loss, {"weights": weights})

    def loss(self, mb: Rollout, extras: dict, weight: float):
        logps, _ = forward_completion(self.model, mb, 1.0)
        nll = aggregate(-logps * extras["weights"][:, None], mb.completion_mask, "token")
        return nll * weight, {"nll": nll.detach()}

    # ---- the loop ---------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | None = None):
        resume = resume_from_checkpoint or self.args.resume_from_checkpoint
        if resume:
            self.load_checkpoint(resume)
        self.model.train()
        per_grow = 1 + self.args.improve_steps
        while self.step_count < self.args.max_steps:
            g, phase = divmod(self.step_count, per_grow)
            if phase == 0:
                grown = self.grow(g)
                scored = [s["reward"] for s in grown if s["reward"] is not None]
                entry = {"grow": g, "improve": -1, "grow_reward": sum(scored) / max(len(scored), 1),
                         "dropped": len(grown) - len(scored)}
            else:
                grown = [s for s in self.load_grown(g) if s["reward"] is not None]
                tau = self.threshold(phase - 1, [s["reward"] for s in grown])
                kept = [s for s in grown if s["reward"] >= tau]
                stats = self.improve(kept) if kept else {}
                entry = {"grow": g, "improve": phase - 1, "threshold": tau, "kept": len(kept), **stats}
                if self.eval_prompts is not None or self.prompts:
                    entry["reward"] = self.evaluate(self.eval_prompts if self.eval_prompts is not None
                                                    else self._train_rows())["eval_reward"]
            self.step_count += 1
            self.log(entry)
            if self.args.save_steps and self.step_count % self.args.save_steps == 0:
                self.save_checkpoint()
        if self.accelerator.is_main_process and not self.args.disable_tqdm:
            print(self.table())
        return self.log_history

    def _train_rows(self) -> list[dict]:
        return [{"prompt": p, **{c: v[i] for c, v in self.columns.items()}} for i, p in enumerate(self.prompts)]

    def table(self) -> str:
        """Reward per Grow / Improve step, as a markdown table."""
        lines = ["| grow | step | threshold | kept | mean reward |", "|---:|---|---:|---:|---:|"]
        for e in self.log_history:
            if e["improve"] < 0:
                lines.append(f"| {e['grow']} | grow (samples) | | | {e['grow_reward']:.4f} |")
            else:
                lines.append(f"| {e['grow']} | improve {e['improve']} | {e['threshold']:.4f} | {e['kept']} | "
                             f"{e.get('reward', float('nan')):.4f} |")
        return "\n".join(lines)
