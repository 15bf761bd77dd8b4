"""GRPO and RLOO: several completions per prompt, and the group itself is the baseline.

Recipe, per step: sample G completions for each prompt -> score them -> advantages relative to the
group (GRPO: (r - group mean) / group std; RLOO: r - mean of the other G-1) -> ``num_epochs``
passes of clipped-ratio policy updates. The KL to the reference (``beta``) is a loss term in GRPO
(k3 per token) and a reward penalty in RLOO (k1 summed over the completion), as in the papers.

A sample whose rewards are all None is dropped: its loss weight is zero, and for the baselines it
counts as the mean of its group's scored samples (so it shifts no one's advantage in GRPO).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..losses.rl import (aggregate, clipped_policy_loss, group_advantages, kl_per_token,
                         leave_one_out_advantages, masked_mean)
from ..rollout import forward_completion
from .online import OnlineTrainer
from .online_config import OnlineConfig

AGGREGATIONS = ("sequence", "token", "constant")


@dataclass
class GRPOConfig(OnlineConfig):
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt (the group, G)."})
    beta: float = field(default=0.0, metadata={
        "help": "Weight of the KL to the reference (0: no reference model is kept)."})
    kl_estimator: str = field(default="k3", metadata={"help": "Per-token KL estimator: k1 or k3."})
    epsilon: float = field(default=0.2, metadata={"help": "Clip range of the importance ratio (lower side)."})
    epsilon_high: float | None = field(default=None, metadata={
        "help": "Upper clip range (DAPO's clip-higher); default: epsilon."})
    scale_rewards: str = field(default="group", metadata={
        "help": "Divide advantages by the group's reward std (group), the batch's (batch), or not (none, Dr. GRPO)."})
    loss_aggregation: str = field(default="token", metadata={
        "help": "How token losses become one number: sequence (mean per completion, then over completions: "
                "the original GRPO), token (mean over all tokens: DAPO), constant (sum / (completions x "
                "max_new_tokens): Dr. GRPO)."})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate."})
    output_dir: str = field(default="runs/grpo", metadata={"help": "Where checkpoints and the model go."})

    def __post_init__(self):
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: the group's other samples are the baseline.")
        if self.loss_aggregation not in AGGREGATIONS:
            raise ValueError(f"loss_aggregation must be one of {AGGREGATIONS}, got {self.loss_aggregation!r}.")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards must be group, batch or none, got {self.scale_rewards!r}.")

    def episodes_per_step(self) -> int:
        return self.per_device_batch_size * self.num_generations


@dataclass
class RLOOConfig(GRPOConfig):
    beta: float = field(default=0.05, metadata={
        "help": "Weight of the KL penalty subtracted from each completion's reward (0: no reference)."})
    kl_estimator: str = field(default="k1", metadata={"help": "Per-token KL estimator summed into the penalty."})
    output_dir: str = field(default="runs/rloo", metadata={"help": "Where checkpoints and the model go."})


class GRPOTrainer(OnlineTrainer):
    """Group Relative Policy Optimization (Shao et al., 2024) with DAPO / Dr. GRPO aggregation options."""

    method = "grpo"
    kl_in_reward = False

    def __init__(self, model, args: GRPOConfig | None = None, **kwargs):
        super().__init__(model, args or GRPOConfig(), **kwargs)

    def uses_reference(self) -> bool:
        return self.args.beta > 0

    def needs_sampling_logprobs(self) -> bool:
        """With one optimizer step per batch the sampling policy is the updated one: its log-probs are the
        current ones, detached, and need no separate forward pass (RLOO's KL penalty still needs them)."""
        return self.optimizer_steps_per_step() > 1 or (self.kl_in_reward and self.reference is not None)

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        return group_advantages(rewards, self.args.num_generations, self.args.scale_rewards)

    def training_step(self, indices: list[int]) -> dict:
        args, temperature = self.args, self.args.temperature or 1.0
        rollout = self.sample(indices, repeats=args.num_generations)
        scored = self.score(rollout)
        rewards = scored.rewards.to(rollout.completion_ids.device)
        valid = ~rewards.isnan()
        ref_logps = self.reference_logps(rollout, temperature) if self.reference is not None else None
        kl_seq = None
        if ref_logps is not None and rollout.logprobs is not None:
            kl_seq = (kl_per_token(rollout.logprobs, ref_logps, args.kl_estimator) * rollout.completion_mask).sum(1)
        penalised = rewards - args.beta * kl_seq if self.kl_in_reward and kl_seq is not None else rewards
        advantages = self.advantages(_fill_dropped(penalised, args.num_generations))
        rollout.completion_mask = rollout.completion_mask * valid[:, None]
        extras = {"advantages": advantages}
        if ref_logps is not None and not self.kl_in_reward:
            extras["ref_logps"] = ref_logps
        stats = self.optimize(rollout, lambda mb, ex, w: self.loss(mb, ex, w, temperature), extras)
        metrics = {"reward": self.gather_mean(rewards), "reward_std": _group_std(rewards, args.num_generations),
                   "dropped": float(self.accelerator.gather((~valid).sum().reshape(1)).sum()),
                   "completion_length": self.gather_mean(rollout.completion_attention.sum(1).float())}
        metrics.update({f"rewards/{k}": self.gather_mean(v) for k, v in scored.per_function.items()})
        if kl_seq is not None:
            metrics["kl"] = self.gather_mean(kl_seq)
        return {**metrics, **stats}

    def loss(self, mb, extras: dict, weight: float, temperature: float):
        args = self.args
        logps, _ = forward_completion(self.model, mb, temperature)
        old_logps = logps.detach() if mb.logprobs is None else mb.logprobs
        loss, stats = clipped_policy_loss(logps, old_logps, extras["advantages"], mb.completion_mask, args.epsilon,
                                          args.loss_aggregation, args.max_new_tokens, args.epsilon_high)
        if "ref_logps" in extras:
            kl = kl_per_token(logps, extras["ref_logps"], args.kl_estimator)
            loss = loss + args.beta * aggregate(kl, mb.completion_mask, args.loss_aggregation, args.max_new_tokens)
            stats["policy_kl"] = masked_mean(kl, mb.completion_mask)
        stats["loss"] = loss.detach()
        return loss * weight, stats

    def loss_aggregation(self) -> str:
        return self.args.loss_aggregation


class RLOOTrainer(GRPOTrainer):
    """REINFORCE Leave-One-Out (Ahmadian et al., 2024): each sample's baseline is the mean reward of
    the other samples for its prompt; the KL to the reference is subtracted from the reward."""

    method = "rloo"
    kl_in_reward = True

    def __init__(self, model, args: RLOOConfig | None = None, **kwargs):
        super().__init__(model, args or RLOOConfig(), **kwargs)

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        return leave_one_out_advantages(rewards, self.args.num_generations)


def _fill_dropped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """NaN rewards (dropped samples) replaced by their group's mean over scored samples (0 if none)."""
    groups = rewards.view(-1, group_size)
    valid = ~groups.isnan()
    means = torch.where(valid, groups, 0).sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp(min=1)
    return torch.where(valid, groups, means).reshape(-1)


def _group_std(rewards: torch.Tensor, group_size: int) -> float:
    """Mean within-group reward std (0 means the group gives no learning signal)."""
    groups = _fill_dropped(rewards, group_size).view(-1, group_size)
    return groups.std(1).mean().item()
