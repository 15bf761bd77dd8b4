"""PPO with a value head and a KL leash to the reference model (Ziegler et al., 2019; Ouyang et al., 2022).

Recipe, per step: sample one completion per prompt -> score it -> per-token rewards = -kl_coef x KL
to the reference, plus the score on the last token -> GAE advantages from the value head -> whitened
-> ``num_epochs`` passes of mini-batches with the clipped policy loss + vf_coef x clipped value loss
-> the adaptive KL controller moves kl_coef toward the target KL.

Two ways in: ``train()`` over a prompt dataset with reward functions, or the classic
``stats = trainer.step(queries, responses, scores)`` for your own generation/scoring loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..losses.rl import (RunningMoments, clipped_policy_loss, clipped_value_loss, gae, kl_controller,
                         kl_per_token, masked_mean, masked_whiten)
from ..models.loading import is_encoder_decoder
from ..models.value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from ..rollout import Rollout, forward_completion, pad_with_attention
from .online import OnlineTrainer
from .online_config import OnlineConfig


@dataclass
class PPOConfig(OnlineConfig):
    init_kl_coef: float = field(default=0.2, metadata={"help": "Initial weight of the per-token KL penalty."})
    target_kl: float | None = field(default=6.0, metadata={
        "help": "Adaptive KL control: move the coefficient so the KL per completion nears this value "
                "(None: keep init_kl_coef fixed)."})
    kl_horizon: int = field(default=10000, metadata={"help": "Adaptive KL controller horizon, in episodes."})
    kl_estimator: str = field(default="k1", metadata={
        "help": "Per-token KL estimator in the reward: k1 (log-ratio) or k3 (non-negative, lower variance)."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor of GAE."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of GAE (bias/variance trade-off)."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Normalise advantages over the batch."})
    score_clip: float | None = field(default=None, metadata={"help": "Clip scores to [-c, c] (None: off)."})
    score_scaling: bool = field(default=False, metadata={
        "help": "Divide scores by their running standard deviation."})
    score_norm: bool = field(default=False, metadata={
        "help": "With score_scaling, also subtract the running mean."})
    early_stop_kl: float | None = field(default=None, metadata={
        "help": "Stop a step's remaining epochs when the policy moved further than this approximate KL "
                "from the sampling policy (None: never)."})
    num_epochs: int = field(default=4, metadata={"help": "PPO epochs over each batch of episodes."})
    learning_rate: float = field(default=1.41e-5, metadata={"help": "AdamW learning rate."})
    output_dir: str = field(default="runs/ppo", metadata={"help": "Where checkpoints and the model go."})


class PPOTrainer(OnlineTrainer):
    method = "ppo"

    def __init__(self, model, args: PPOConfig | None = None, **kwargs):
        args = args or PPOConfig()
        self.kl_ctl = kl_controller(args.init_kl_coef, args.target_kl, args.kl_horizon)
        self.score_moments = RunningMoments()
        super().__init__(model, args, **kwargs)

    def build_policy(self, model, peft_config):
        if hasattr(model, "v_head"):
            return model
        wrapper = AutoModelForSeq2SeqLMWithValueHead if is_encoder_decoder(model) else AutoModelForCausalLMWithValueHead
        return wrapper.from_pretrained(model, peft_config=peft_config, seed=self.args.seed)

    def needs_sampling_logprobs(self) -> bool:
        return False  # update() computes them in the same forward pass as the values

    # ---- the classic API --------------------------------------------------------------------------
    def step(self, queries: list, responses: list, scores) -> dict:
        """One PPO update on your own episodes: ``queries`` and ``responses`` are lists of 1-D token id
        tensors (no padding), ``scores`` one number per episode. Returns the step's statistics."""
        if not len(queries) == len(responses) == len(scores):
            raise ValueError(f"step() needs as many queries, responses and scores; got {len(queries)}, "
                             f"{len(responses)}, {len(scores)}.")
        if any(len(r) == 0 for r in responses):
            raise ValueError("step() got an empty response; every response needs at least one token.")
        device = self.accelerator.device
        pad = self.tokenizer.pad_token_id
        prompt_ids, prompt_attention = pad_with_attention([q.tolist() for q in queries], pad, "left", device)
        completion_ids, completion_attention = pad_with_attention([r.tolist() for r in responses], pad, device=device)
        rollout = Rollout(prompt_ids, prompt_attention, completion_ids, completion_attention,
                          completion_attention.clone())
        scores = torch.as_tensor([float(s) for s in scores], dtype=torch.float32, device=device)
        self.model.train()
        stats = self.update(rollout, scores)
        self.step_count += 1
        return stats

    # ---- train() over a prompt dataset ------------------------------------------------------------
    def training_step(self, indices: list[int]) -> dict:
        rollout = self.sample(indices)
        scored = self.score(rollout)
        valid = scored.valid.to(rollout.completion_ids.device)
        dropped = float(self.accelerator.gather((~valid).sum().reshape(1)).sum())
        metrics = {"reward": self.gather_mean(scored.rewards), "dropped": dropped}
        metrics.update({f"rewards/{k}": self.gather_mean(v) for k, v in scored.per_function.items()})
        if valid.any():
            metrics.update(self.update(rollout.select(valid), scored.rewards.to(valid.device)[valid]))
        return metrics

    # ---- the update -------------------------------------------------------------------------------
    def process_scores(self, scores: torch.Tensor) -> torch.Tensor:
        if self.args.score_scaling:
            gathered = self.accelerator.gather(scores)
            self.score_moments.update(gathered)
            scale = max(self.score_moments.std, 1e-8)
            scores = (scores - self.score_moments.mean) / scale if self.args.score_norm else scores / scale
        if self.args.score_clip is not None:
            scores = scores.clamp(-self.args.score_clip, self.args.score_clip)
        return scores

    def update(self, rollout: Rollout, scores: torch.Tensor) -> dict:
        args, temperature = self.args, self.args.temperature or 1.0
        mask = rollout.completion_mask.float()
        with torch.no_grad(), self.accelerator.autocast():
            logps, values = forward_completion(self.model, rollout, temperature, with_values=True)
        # reference="none" turns the KL penalty off (the policy is its own reference)
        ref_logps = self.reference_logps(rollout, temperature) if self.reference is not None else logps
        kl = kl_per_token(logps, ref_logps, args.kl_estimator) * mask
        processed = self.process_scores(scores)
        rewards = -self.kl_ctl.value * kl
        last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)
        rewards[torch.arange(len(rollout), device=mask.device), last] += processed
        advantages, returns = gae(rewards, values * mask, mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        rollout.logprobs = logps
        extras = {"advantages": advantages, "returns": returns, "old_values": values}
        stats = self.optimize(rollout, lambda mb, ex, w: self.loss(mb, ex, w, temperature), extras)
        kl_seq = kl.sum(1)
        mean_kl = self.gather_mean(kl_seq)
        stats.update({"kl": mean_kl, "kl_coef": self.kl_ctl.value, "score": self.gather_mean(scores),
                      "non_score_reward": self.gather_mean(-self.kl_ctl.value * kl_seq),
                      "completion_length": self.gather_mean(mask.sum(1)),
                      "returns": self.gather_mean(masked_mean(returns, mask, dim=1))})
        self.kl_ctl.update(mean_kl, len(rollout) * self.accelerator.num_processes)
        return stats

    def loss(self, mb: Rollout, extras: dict, weight: float, temperature: float):
        args, mask = self.args, mb.completion_mask.float()
        logps, values = forward_completion(self.model, mb, temperature, with_values=True)
        pg_loss, stats = clipped_policy_loss(logps, mb.logprobs, extras["advantages"], mask, args.cliprange, "token")
        vf_loss, vf_clipfrac = clipped_value_loss(values, extras["old_values"], extras["returns"], mask,
                                                  args.cliprange_value)
        loss = pg_loss + args.vf_coef * vf_loss
        stats.update({"policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach(), "value_clipfrac": vf_clipfrac,
                      "loss": loss.detach()})
        return loss * weight, stats

    def early_stop(self, epoch_stats: list[dict]) -> bool:
        if self.args.early_stop_kl is None or not epoch_stats:
            return False
        return sum(s["approx_kl"] for s in epoch_stats) / len(epoch_stats) > self.args.early_stop_kl

    # ---- state for resume -------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        return {"kl_ctl": self.kl_ctl.state_dict(), "score_moments": self.score_moments.state_dict()}

    def load_trainer_state(self, state: dict, checkpoint: str) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.score_moments.load_state_dict(state["score_moments"])

