"""KTO (Ethayarajh et al., 2024): preference optimisation on unpaired rows, each a prompt, one completion
and a desirable/undesirable label; also TRL's unpaired APO-zero. Paired preference data is unpaired
first (chosen -> desirable, rejected -> undesirable), as TRL does.

Recipe: rows -> prompt / completion ids -> a batch of B matched sequences plus B mismatched ones (prompt
i with completion i-1) -> policy forward on the matched ones (grad), on the mismatched ones (no grad)
-> reference forward on both -> reference point z0 = max(0, mean log-ratio of the mismatched pairs,
averaged over processes), detached -> loss -> step. The reference is a frozen copy, the given
ref_model, or the LoRA policy with its adapter off; everything else is shared with DPOTrainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import (ConfigError, PostTrainConfig, check_padding, check_ranges, config_rules, non_negative, positive,
                      unimplemented)
from ..data.collate import UnpairedCollator
from ..data.formats import load_rows
from ..data.tokenize import extract_prompt, tokenize_unpaired_row
from ..losses.logprobs import answer_logps
from ..losses.preference import UNPAIRED_LOSSES, kto_kl_estimate, kto_loss
from ..models import reference as ref
from .dpo import DPOTrainer


@dataclass
class KTOConfig(PostTrainConfig):
    """KTO settings (on top of transformers.TrainingArguments), with TRL 1.16's names and defaults."""

    learning_rate: float = field(default=1e-6, metadata={"help": "Initial AdamW learning rate (TRL's default)."})
    loss_type: str = field(default="kto", metadata={
        "help": "kto (the paper's loss) or apo_zero_unpaired (unpaired APO-zero: no KL reference point).",
        "choices": list(UNPAIRED_LOSSES)})
    beta: float = field(default=0.1, metadata={
        "help": "Strength of the KL leash β: higher stays closer to the reference model."})
    desirable_weight: float = field(default=1.0, metadata={
        "help": "Weight of the desirable rows' losses (counter an unequal number of desirable and undesirable "
                "rows: the paper suggests w_D·n_D / (w_U·n_U) in [1, 4/3])."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "Weight of the undesirable rows' losses."})
    train_sampling_strategy: str = field(default="sequential", metadata={
        "help": "Order of the training rows: sequential (dataset order each epoch; TRL 1.16's KTO default, which "
                "TRL needs because it pairs the KL completions in dataset order) or random (shuffled). posttrain "
                "builds the mismatched pairs inside each batch, so 'random' is safe here and usually better for "
                "SGD; the default keeps TRL's order so a TRL script sees the same batches.",
        "choices": ["random", "sequential", "group_by_length", "batch_rebalance"]})
    reference: str = field(default="auto", metadata={
        "help": "Reference model (posttrain): copy (frozen copy of the start, or the ref_model given), adapter "
                "(LoRA policy with the adapter off), or auto (the ref_model if given, adapter with LoRA, else copy)."})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Keep only the last N prompt tokens; completions are then cut to fit max_length (posttrain)."})
    pad_to_multiple_of: str | None = field(default="auto", metadata={
        "help": "TRL: pad to a multiple of N. Only 'auto' (no padding except on Neuron) and None are supported."})
    # ---- TRL options posttrain does not implement ---------------------------------------------------
    precompute_ref_log_probs: bool = unimplemented(False, "precompute the reference log-probs before training "
                                                          "(posttrain builds KL pairs per shuffled batch).")
    precompute_ref_batch_size: int | None = unimplemented(None, "batch size of that precomputation.")
    router_aux_loss_coef: float | None = unimplemented(None, "weight of a Mixture-of-Experts load-balancing loss.")
    sync_ref_model: bool = unimplemented(False, "TR-DPO: mix the policy into the reference every few steps.")
    ref_model_mixup_alpha: float = unimplemented(0.6, "TR-DPO's mixing α.")
    ref_model_sync_steps: int = unimplemented(512, "TR-DPO's sync interval.")

    RANGES = {"beta": positive(), "desirable_weight": non_negative(), "undesirable_weight": non_negative()}

    def __post_init__(self):
        check_ranges(self, config_rules(self))
        if self.desirable_weight == 0 and self.undesirable_weight == 0:
            raise ConfigError("desirable_weight=0 and undesirable_weight=0: every row would weigh 0; give at least "
                              "one of them a weight > 0.")
        if self.loss_type not in UNPAIRED_LOSSES:
            raise ValueError(f"Unknown KTO loss_type {self.loss_type!r}; choose from {', '.join(UNPAIRED_LOSSES)} "
                             "(paired losses are DPOTrainer's).")
        if self.reference not in ("auto", "copy", "adapter"):
            raise ValueError(f"KTOConfig.reference={self.reference!r}: use auto, copy or adapter. KTO's KL term pairs "
                             "prompts with other rows' completions in each batch, so it cannot be precomputed.")
        check_padding(self)
        super().__post_init__()


def unpair(dataset):
    """Paired preference rows -> unpaired ones, as TRL's ``unpair_preference_dataset``: per block of 1000
    pairs, the chosen answers (label True) then the rejected ones (label False); other columns repeat."""
    def rows(batch):
        if "prompt" in batch:
            prompts, chosen, rejected = batch["prompt"], batch["chosen"], batch["rejected"]
        else:
            split = [extract_prompt(c, r) for c, r in zip(batch["chosen"], batch["rejected"])]
            prompts, chosen, rejected = ([s[i] for s in split] for i in range(3))
        out = {"prompt": prompts + prompts, "completion": chosen + rejected,
               "label": [True] * len(chosen) + [False] * len(rejected)}
        out.update({k: v + v for k, v in batch.items() if k not in ("prompt", "chosen", "rejected")})
        return out

    return dataset.map(rows, batched=True, remove_columns=dataset.column_names, desc="Unpairing preference rows")


class KTOTrainer(DPOTrainer):
    """Train a causal LM on unpaired ``prompt``/``completion``/``label`` rows (or paired rows, unpaired
    first). TRL's signature: ``KTOTrainer(model, ref_model=None, args=None, data_collator=None,
    train_dataset=None, eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
    optimizers=(None, None), peft_config=None)``; ``KTOTrainer(model, config, ...)`` works too."""

    method = "kto"
    formats = ("unpaired_preference",)
    config_class = KTOConfig

    def check_args(self, args) -> None:
        self.needs_kl = args.loss_type == "kto"
        self.method = "kto" if self.needs_kl else f"kto ({args.loss_type})"
        if self.needs_kl and args.per_device_train_batch_size < 2:
            raise ValueError("KTO estimates its KL reference point from mismatched pairs within a batch: "
                             "use per_device_train_batch_size >= 2.")

    def reference_free(self, args) -> bool:
        return False

    # ---- data -------------------------------------------------------------------------------------
    def _prepare(self, rows, tokenizer, args, split: str):
        if rows is not None:
            rows = load_rows(rows)
            if {"chosen", "rejected"} <= set(rows.column_names):
                rows = unpair(rows)
        return super()._prepare(rows, tokenizer, args, split)

    def tokenize_row(self, row, index, tokenizer, fmt, args):
        return tokenize_unpaired_row(row, index, tokenizer, fmt, args.max_length, args.max_prompt_length)

    def tokenize_settings(self, args):
        return (args.max_length, args.max_prompt_length, "unpaired")

    def make_collator(self, tokenizer, args):
        return UnpairedCollator(tokenizer.pad_token_id)

    # ---- loss -------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args, label = self.args, inputs["label"].bool()
        n = label.shape[0]
        matched = {k: v[:n] for k, v in inputs.items() if k != "label"}
        mismatched = {k: v[n:] for k, v in inputs.items() if k != "label"}
        logps, _ = answer_logps(model, matched)
        with torch.no_grad():  # the KL reference point is detached: no graph needed for it
            if self.model.training:
                self.reference_forwards += 1
            kl_logps = answer_logps(model, mismatched)[0] if self.needs_kl else None
            if self.reference_strategy == "adapter":
                with ref.adapter_disabled(self.accelerator.unwrap_model(self.model)) as base:
                    ref_logps, ref_kl = self._reference_logps(base, matched, mismatched)
            else:
                ref_logps, ref_kl = self._reference_logps(self.ref_model, matched, mismatched)
        z0 = torch.zeros((), device=logps.device)
        if self.needs_kl:  # averaged over processes, then clamped (as TRL)
            z0 = self.accelerator.reduce(kto_kl_estimate(kl_logps, ref_kl), reduction="mean").clamp(min=0)
        loss, rewards = kto_loss(logps, ref_logps, label, z0, args.beta, args.desirable_weight,
                                 args.undesirable_weight, args.loss_type)
        values = {"kl": z0}
        if label.any():
            values.update({"rewards/chosen": rewards[label].mean(), "logps/chosen": logps[label].detach().mean()})
        if (~label).any():
            values.update({"rewards/rejected": rewards[~label].mean(), "logps/rejected": logps[~label].detach().mean()})
        if label.any() and (~label).any():
            values["rewards/margins"] = rewards[label].mean() - rewards[~label].mean()
        self.record(**values)
        self.count_tokens(inputs["attention_mask"][:n].sum())
        return (loss, {}) if return_outputs else loss

    def _reference_logps(self, model, matched, mismatched):
        kl = answer_logps(model, mismatched)[0] if self.needs_kl else None
        return answer_logps(model, matched)[0], kl
