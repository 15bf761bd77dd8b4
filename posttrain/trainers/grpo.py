"""GRPO: Group Relative Policy Optimization (Shao et al., 2024), with the DAPO and Dr. GRPO variants.

The recipe, per generation (``train`` below, top to bottom):

1. sample ``num_generations`` completions for each prompt;
2. score them with the reward functions (a sample no function scores is dropped: no loss, no baseline);
3. advantages relative to the group: ``(r - group mean) / group std`` (``scale_rewards``);
4. ``num_iterations`` passes of clipped-ratio policy updates (``epsilon``, ``epsilon_high``), plus
   ``beta`` x the k3 KL to the reference per token (weighted by the ratio: ``use_bias_correction_kl``),
   token losses reduced by ``loss_type`` (grpo, bnpo, dr_grpo, dapo: as in TRL);
5. log, evaluate and checkpoint as ``TrainingArguments`` say.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses.logprobs import completion_logps
from ..losses.rl import LOSS_TYPES, aggregate, clipped_policy_loss, group_advantages, grpo_kl
from ..config import integer, non_negative, positive
from .online import OnlineTrainer
from .online_config import OnlineConfig
from .trl_fields import TRLGRPOFields

SCALES = ("group", "batch", "none")


@dataclass
class GRPOConfig(OnlineConfig, TRLGRPOFields):
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt (the group, G)."})
    beta: float = field(default=0.0, metadata={
        "help": "Weight of the KL to the reference model (0: no reference model is kept)."})
    epsilon: float = field(default=0.2, metadata={"help": "Clip range of the importance ratio (lower side)."})
    epsilon_high: float | None = field(default=None, metadata={
        "help": "Upper clip range (DAPO's clip-higher); default: epsilon."})
    scale_rewards: str = field(default="group", metadata={
        "help": "Divide advantages by the group's reward std (group), the batch's (batch), or not (none: Dr. GRPO)."})
    loss_type: str = field(default="dapo", metadata={
        "help": "How token losses become one number, as in TRL: grpo (mean per completion, then over completions), "
                "bnpo (mean over the micro-batch's tokens), dr_grpo (sum / (completions x max_completion_length)), "
                "dapo (mean over all tokens of the optimizer step, on every process: TRL's default)."})
    use_bias_correction_kl: bool = field(default=True, metadata={
        "help": "Weight the per-token KL by the importance ratio, an unbiased KL gradient off-policy (TRL's default)."})

    RANGES = {"num_generations": integer(2, note=" (the group's other samples are the baseline)"),
              "beta": non_negative(note=" (0: no KL term, no reference model)"),
              "epsilon": positive(), "epsilon_high": positive(none="epsilon"),
              "temperature": positive(note=": greedy decoding (0) samples one completion G times, so every "
                                      "group's rewards are equal and nothing is learned")}

    def __post_init__(self):
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: the group's other samples are the baseline.")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}.")
        if self.scale_rewards not in SCALES:
            raise ValueError(f"scale_rewards must be one of {SCALES}, got {self.scale_rewards!r}.")


class GRPOTrainer(OnlineTrainer):
    """``GRPOTrainer(model, reward_funcs, args=GRPOConfig(...), train_dataset=..., ...)``, as in TRL."""

    method = "grpo"

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, callbacks=None, peft_config=None, ref_model=None,
                 rollout_source=None):
        args = args or GRPOConfig()
        super().__init__(model, args, reward_funcs=reward_funcs, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         peft_config=peft_config, ref_model=ref_model, rollout_source=rollout_source,
                         uses_reference=args.beta > 0, group_size=args.num_generations)

    def train(self, resume_from_checkpoint=None):
        args, temperature = self.args, self.args.temperature or 1.0
        self.begin_training(resume_from_checkpoint)
        while not self.training_finished():
            # 1. sample: the policy moves between sampling and an update only with several optimizer steps
            # per generation; otherwise the sampling log-probs are the current ones, detached (no extra forward)
            off_policy = args.optimizer_steps_per_generation() > 1
            rollout = self.sample(self.next_prompts(), repeats=args.num_generations, with_logprobs=off_policy)
            # 2. score
            scored = self.score(rollout)
            rewards = scored.rewards.to(rollout.completion_ids.device)
            valid = ~rewards.isnan()
            rollout.completion_mask = rollout.completion_mask * valid[:, None]  # dropped samples carry no loss
            # 3. advantages
            advantages = group_advantages(rewards, args.num_generations, args.scale_rewards)
            ref_logps = self.reference.completion_logps(self.model, rollout, temperature, self.shared_group) \
                if self.reference else None
            self.record_generation(rollout, scored, args.num_generations)
            # 4. update
            for window, window_rows in self.update_windows(len(rollout)):
                num_items = self.accelerator.gather(rollout.completion_mask[window_rows].sum().reshape(1)).sum()
                num_items = num_items / self.accelerator.num_processes  # DDP averages the processes' gradients
                for j, rows in enumerate(window):
                    with self.accumulating(j == len(window) - 1), self.accelerator.autocast():
                        mb = rollout.select(rows)
                        logps = completion_logps(self.model, mb, temperature, self.shared_group)
                        old_logps = logps.detach() if mb.logprobs is None else mb.logprobs
                        loss = self.loss(mb, logps, old_logps, advantages[rows], ref_logps, rows, num_items)
                        if args.loss_type in ("grpo", "dr_grpo"):  # means over completions: weight by share
                            loss = loss * len(rows) / len(window_rows)
                        elif args.loss_type == "bnpo":  # per micro-batch, as in TRL
                            loss = loss / len(window)
                        self.accelerator.backward(loss)
                self.optimizer_step()
            # 5. checkpoint (logging and evaluation happen at each optimizer step)
            if self.checkpoint_due():
                self.save_checkpoint()
        return self.end_training()

    def loss(self, mb, logps, old_logps, advantages, ref_logps, rows, num_items):
        """The clipped surrogate plus beta x KL for one micro-batch; records its statistics."""
        args, mask = self.args, mb.completion_mask
        loss, stats = clipped_policy_loss(logps, old_logps, advantages, mask, args.epsilon, args.loss_type,
                                          args.max_completion_length, args.epsilon_high, num_items)
        if ref_logps is not None:
            kl = grpo_kl(logps, ref_logps[rows], old_logps, args.use_bias_correction_kl, mask)
            loss = loss + args.beta * aggregate(kl, mask, args.loss_type, args.max_completion_length, num_items)
            k3 = grpo_kl(logps.detach(), ref_logps[rows], old_logps, False, mask)
            self.record(kl=self.gather_token_mean(k3, mask), kl_sum=self.gather_mean((k3 * mask).sum(1)))
        self.record(loss=loss.detach(), **stats)
        return loss
