"""RLOO: REINFORCE Leave-One-Out (Kool et al., 2019; Ahmadian et al., 2024), sequence-level, as in the paper
and TRL 1.16.

The recipe, per generation (``train`` below, top to bottom):

1. sample ``num_generations`` completions for each prompt, with their log-probs;
2. score them; the KL to the reference, summed over each completion's tokens (k1), is subtracted
   from its reward: ``r - beta * sum_t (log pi - log pi_ref)``;
3. advantages: each completion's reward minus the mean reward of the other completions of its prompt
   (optionally normalised over the batch: ``normalize_advantages``);
4. ``num_iterations`` passes of the sequence-level clipped objective: the ratio is that of whole
   completions, ``exp(sum_t log pi - sum_t log pi_old)``, and the loss is a mean over completions
   (the REINFORCE estimator of the paper, not a per-token mean);
5. log, evaluate and checkpoint as ``TrainingArguments`` say.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses.logprobs import completion_logps
from ..losses.rl import leave_one_out_advantages, rloo_sequence_loss
from ..config import integer, non_negative, positive
from .online import OnlineTrainer
from .online_config import OnlineConfig
from .trl_fields import TRLRLOOFields


@dataclass
class RLOOConfig(OnlineConfig, TRLRLOOFields):
    num_generations: int = field(default=2, metadata={"help": "Completions sampled per prompt (TRL's default, 2)."})
    beta: float = field(default=0.05, metadata={
        "help": "Weight of the KL penalty subtracted from each completion's reward (0: no reference model)."})
    epsilon: float = field(default=0.2, metadata={"help": "Clip range of the sequence ratio (lower side)."})
    epsilon_high: float | None = field(default=None, metadata={"help": "Upper clip range; default: epsilon."})
    normalize_advantages: bool = field(default=False, metadata={
        "help": "Normalise the advantages over the batch (mean 0, std 1), as TRL's option of that name."})

    RANGES = {"num_generations": integer(2, note=" (the group's other samples are the baseline)"),
              "beta": non_negative(note=" (0: no KL term, no reference model)"),
              "epsilon": positive(), "epsilon_high": positive(none="epsilon"),
              "temperature": positive(note=": greedy decoding (0) samples one completion G times, so every "
                                      "group's rewards are equal and nothing is learned")}

    def __post_init__(self):
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: the other samples of a prompt are the baseline.")


class RLOOTrainer(OnlineTrainer):
    """``RLOOTrainer(model, reward_funcs, args=RLOOConfig(...), train_dataset=..., ...)``, as in TRL."""

    method = "rloo"

    def __init__(self, model, reward_funcs=None, args: RLOOConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, callbacks=None, peft_config=None, ref_model=None,
                 rollout_source=None):
        args = args or RLOOConfig()
        super().__init__(model, args, reward_funcs=reward_funcs, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         peft_config=peft_config, ref_model=ref_model, rollout_source=rollout_source,
                         uses_reference=args.beta > 0, group_size=args.num_generations)

    def train(self, resume_from_checkpoint=None):
        args, temperature = self.args, self.args.temperature or 1.0
        self.begin_training(resume_from_checkpoint)
        while not self.training_finished():
            # 1. sample, with the sampling policy's log-probs (the KL penalty and the old ratio need them)
            rollout = self.sample(self.next_prompts(), repeats=args.num_generations)
            mask = rollout.completion_mask
            # 2. score, and subtract the KL penalty from the reward
            scored = self.score(rollout)
            rewards = scored.rewards.to(mask.device)
            valid = ~rewards.isnan()
            penalised = rewards
            if self.reference is not None:
                ref_logps = self.reference.completion_logps(self.model, rollout, temperature, self.shared_group)
                kl = (rollout.logprobs - ref_logps) * mask
                penalised = rewards - args.beta * kl.sum(1)
                self.record(kl=self.gather_token_mean(kl, mask), kl_sum=self.gather_mean(kl.sum(1)))
            # 3. advantages: leave-one-out baselines (a dropped sample gets 0 and carries no loss)
            advantages = leave_one_out_advantages(penalised, args.num_generations, args.normalize_advantages)
            rollout.completion_mask = mask * valid[:, None]
            self.record_generation(rollout, scored, args.num_generations)
            # 4. update: a mean over completions, so each micro-batch weighs its share of the window's rows
            for window, window_rows in self.update_windows(len(rollout)):
                for j, rows in enumerate(window):
                    with self.accumulating(j == len(window) - 1), self.accelerator.autocast():
                        mb = rollout.select(rows)
                        logps = completion_logps(self.model, mb, temperature, self.shared_group)
                        loss, stats = rloo_sequence_loss(logps, mb.logprobs, advantages[rows], mb.completion_mask,
                                                         args.epsilon, args.epsilon_high)
                        self.record(loss=loss.detach(), **stats)
                        self.accelerator.backward(loss * len(rows) / len(window_rows))
                self.optimizer_step()
            # 5. checkpoint (logging and evaluation happen at each optimizer step)
            if self.checkpoint_due():
                self.save_checkpoint()
        return self.end_training()

