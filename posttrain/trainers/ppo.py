"""PPO with a value head and a KL leash to the reference model (Ziegler et al., 2019; Ouyang et al., 2022).

The recipe, per generation (``train`` below, top to bottom):

1. sample one completion per prompt;
2. score it with the reward functions (scaled and clipped if asked);
3. per-token rewards: ``-kl_coef x KL`` to the reference, plus the score on the last token; GAE
   advantages and returns from the value head; advantages whitened;
4. ``num_iterations`` passes (PPO's epochs) of the clipped policy loss + ``vf_coef`` x the clipped
   value loss; the adaptive KL controller then moves kl_coef toward ``target_kl``;
5. log, evaluate and checkpoint as ``TrainingArguments`` say.

Two ways in: ``train()`` over a prompt dataset with reward functions, or the classic
``stats = trainer.step(queries, responses, scores)`` for your own generation/scoring loop.
TRL 1.16 has no PPO; the PPO-only settings keep the names of TRL 0.11's value-head PPO.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from ..losses.logprobs import forward_completion
from ..losses.rl import (RunningMoments, clipped_policy_loss, clipped_value_loss, gae, kl_controller,
                         kl_per_token, masked_mean, masked_whiten)
from ..models.loading import is_encoder_decoder
from ..models.value_head import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from ..rollout import Rollout, pad_with_attention
from ..config import integer, interval, non_negative, positive
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
        "help": "Skip a generation's remaining optimizer steps once the policy moved further than this "
                "approximate KL from the sampling policy (None: never)."})
    num_iterations: int = field(default=4, metadata={
        "help": "PPO epochs over each generation (TRL 0.11's ppo_epochs)."})
    learning_rate: float = field(default=1.41e-5, metadata={"help": "AdamW learning rate."})

    RANGES = {"gamma": interval(0, 1), "lam": interval(0, 1), "cliprange": positive(), "cliprange_value": positive(),
              "vf_coef": non_negative(), "init_kl_coef": non_negative(),
              "target_kl": positive(none="keep init_kl_coef fixed"), "kl_horizon": integer(1),
              "score_clip": positive(none="off"), "early_stop_kl": non_negative(none="never")}


class PPOTrainer(OnlineTrainer):
    """``PPOTrainer(model, reward_funcs, args=PPOConfig(...), train_dataset=...)``; ``model`` is wrapped with a
    value head unless it has one (``AutoModelForCausalLMWithValueHead`` or the seq2seq one)."""

    method = "ppo"

    def __init__(self, model, reward_funcs=None, args: PPOConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, callbacks=None, peft_config=None, ref_model=None,
                 rollout_source=None):
        args = args or PPOConfig()
        self.kl_ctl = kl_controller(args.init_kl_coef, args.target_kl, args.kl_horizon)
        self.score_moments = RunningMoments()
        if not hasattr(model, "v_head"):
            wrapper = AutoModelForSeq2SeqLMWithValueHead if is_encoder_decoder(model) else AutoModelForCausalLMWithValueHead
            name = model if isinstance(model, str) else getattr(model.config, "name_or_path", "")
            model = wrapper.from_pretrained(model, peft_config=peft_config, seed=args.seed,
                                            **({"trust_remote_code": args.trust_remote_code,
                                                **(args.model_init_kwargs or {})} if isinstance(model, str) else {}))
            model.config.name_or_path = name
        super().__init__(model, args, reward_funcs=reward_funcs, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         ref_model=ref_model, rollout_source=rollout_source, uses_reference=True)

    def train(self, resume_from_checkpoint=None):
        args = self.args
        method_state = self.begin_training(resume_from_checkpoint)
        if method_state:
            self.kl_ctl.load_state_dict(method_state["kl_ctl"])
            self.score_moments.load_state_dict(method_state["score_moments"])
        while not self.training_finished():
            # 1. sample one completion per prompt, with its log-probs and values where generation gives them exactly
            # (posttrain's backend in float32; dropout off, so the update's train-mode forward would agree)
            rollout = self.sample(self.next_prompts(), with_logprobs="if_free" if args.disable_dropout else False)
            # 2. score; samples no reward function scores are dropped
            scored = self.score(rollout)
            valid = scored.valid.to(rollout.completion_ids.device)
            self.record_generation(rollout, scored)
            # 3-4. rewards with the KL penalty, advantages, PPO epochs
            if valid.any():
                self.update(rollout.select(valid), scored.rewards.to(valid.device)[valid])
            else:  # every sample dropped: nothing to learn from, but the generation's steps still count
                for _ in range(args.optimizer_steps_per_generation()):
                    self.step_end()
            # 5. checkpoint (logging and evaluation happen at each optimizer step)
            if self.checkpoint_due():
                self.save_checkpoint({"kl_ctl": self.kl_ctl.state_dict(), "score_moments": self.score_moments.state_dict()})
        return self.end_training()

    def step(self, queries: list, responses: list, scores) -> dict:
        """One PPO update on your own episodes: ``queries`` and ``responses`` are lists of 1-D token id
        tensors (no padding), ``scores`` one number per episode. Returns the update's statistics."""
        if not len(queries) == len(responses) == len(scores):
            raise ValueError(f"step() needs as many queries, responses and scores; got {len(queries)}, "
                             f"{len(responses)}, {len(scores)}.")
        if any(len(r) == 0 for r in responses):
            raise ValueError("step() got an empty response; every response needs at least one token.")
        device, pad = self.accelerator.device, self.tokenizer.pad_token_id
        prompt_ids, prompt_attention = pad_with_attention([q.tolist() for q in queries], pad, "left", device)
        completion_ids, completion_attention = pad_with_attention([r.tolist() for r in responses], pad, device=device)
        rollout = Rollout(prompt_ids, prompt_attention, completion_ids, completion_attention, completion_attention.clone())
        scores = torch.as_tensor([float(s) for s in scores], dtype=torch.float32, device=device)
        self.model.train()
        self._metrics.clear()
        self._step_stats = defaultdict(list)  # a log due at one of the optimizer steps drains _metrics
        try:
            self.update(rollout, scores, stop_at_max_steps=False)
            self.generations += 1
            stats = {k: sum(v) / len(v) for k, v in self._step_stats.items() if v}
        finally:
            self._step_stats = None
        self._metrics.clear()
        return stats

    def update(self, rollout: Rollout, scores: torch.Tensor, stop_at_max_steps: bool = True) -> None:
        args, temperature = self.args, self.args.temperature or 1.0
        mask = rollout.completion_mask.float()
        if rollout.logprobs is not None and rollout.values is not None:  # from generation, exact: no forward
            logps, values = rollout.logprobs, rollout.values
        else:
            with torch.no_grad(), self.accelerator.autocast():
                logps, values = forward_completion(self.model, rollout, temperature, with_values=True)
        # reference="none" turns the KL penalty off (the policy is its own reference)
        ref_logps = self.reference.completion_logps(self.model, rollout, temperature) if self.reference else logps
        kl = kl_per_token(logps, ref_logps, args.kl_estimator) * mask
        score = self.process_scores(scores)
        rewards = -self.kl_ctl.value * kl
        last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)
        rewards[torch.arange(len(rollout), device=mask.device), last] += score
        advantages, returns = gae(rewards, values * mask, mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        rollout.logprobs = logps
        kl_sum = self.gather_mean(kl.sum(1))
        self.record(kl=self.gather_token_mean(kl, mask), kl_sum=kl_sum, kl_coef=self.kl_ctl.value,
                    score=self.gather_mean(scores), non_score_reward=self.gather_mean(-self.kl_ctl.value * kl.sum(1)),
                    returns=self.gather_mean(masked_mean(returns, mask, dim=1)))
        moved = []
        for window, window_rows in self.update_windows(len(rollout), stop_at_max_steps):
            # token means over the whole window (all processes), so accumulation equals one big batch
            num_items = self.accelerator.gather(mask[window_rows].sum().reshape(1)).sum() / self.accelerator.num_processes
            for j, rows in enumerate(window):
                with self.accumulating(j == len(window) - 1), self.accelerator.autocast():
                    mb = rollout.select(rows)
                    new_logps, new_values = forward_completion(self.model, mb, temperature, with_values=True)
                    mb_mask = mb.completion_mask.float()
                    pg_loss, stats = clipped_policy_loss(new_logps, mb.logprobs, advantages[rows], mb_mask,
                                                         args.cliprange, "dapo", num_items=num_items)
                    vf_loss, vf_clipfrac = clipped_value_loss(new_values, values[rows], returns[rows], mb_mask,
                                                              args.cliprange_value)
                    vf_loss = vf_loss * mb_mask.sum() / num_items  # the window's token mean
                    self.accelerator.backward(pg_loss + args.vf_coef * vf_loss)
                self.record(policy_loss=pg_loss.detach(), value_loss=vf_loss.detach(), value_clipfrac=vf_clipfrac,
                            loss=(pg_loss + args.vf_coef * vf_loss).detach(), **stats)
                moved.append(float(stats["approx_kl"]))
            self.optimizer_step()
            if args.early_stop_kl is not None and sum(moved) / len(moved) > args.early_stop_kl:
                break
        self.kl_ctl.update(kl_sum, len(rollout) * self.accelerator.num_processes)

    def process_scores(self, scores: torch.Tensor) -> torch.Tensor:
        if self.args.score_scaling:
            self.score_moments.update(self.accelerator.gather(scores))
            scale = max(self.score_moments.std, 1e-8)
            scores = (scores - self.score_moments.mean) / scale if self.args.score_norm else scores / scale
        if self.args.score_clip is not None:
            scores = scores.clamp(-self.args.score_clip, self.args.score_clip)
        return scores
