"""Offline preference optimisation: DPO and its family (cDPO, robust DPO, IPO, SLiC hinge), the
reference-free SimPO and ORPO, and KTO for unpaired data -- one trainer, the loss chosen by name.

Recipe: preference rows -> prompt / chosen / rejected ids (prompt tokenized once) -> a batch of
chosen and rejected sequences (or one shared-prefix row per pair) -> ONE policy forward -> summed
answer log-probs -> reference log-probs (frozen copy, adapter switched off, precomputed, or none)
-> loss -> step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..config import PostTrainConfig
from ..data.collate import PreferenceCollator, SharedPrefixCollator, UnpairedCollator
from ..data.formats import DataFormatError
from ..data.tokenize import tokenize_preference_row, tokenize_unpaired_row
from ..losses.logprobs import answer_logps, shared_prefix_pair_logps
from ..losses.preference import PAIRED_LOSSES, REFERENCE_FREE, dpo_loss, kto_loss, orpo_loss, simpo_loss
from ..models import reference as ref
from ..models.loading import disable_dropout
from .base import PostTrainer

LOSS_TYPES = (*PAIRED_LOSSES, "kto")


@dataclass
class DPOConfig(PostTrainConfig):
    """Preference-optimisation settings (on top of transformers.TrainingArguments)."""

    loss_type: str = field(default="sigmoid", metadata={
        "help": "Loss: sigmoid (DPO; with --label_smoothing: conservative DPO), robust, ipo, hinge (SLiC), "
                "simpo and orpo (reference-free), or kto (unpaired prompt/completion/label data)."})
    beta: float = field(default=0.1, metadata={
        "help": "Strength of the KL leash (DPO/IPO/hinge/KTO β); SimPO's reward scale; ORPO's λ."})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "Assumed rate of flipped preference labels for sigmoid (cDPO) and robust losses, in [0, 0.5)."})
    simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO's target reward margin γ."})
    desirable_weight: float = field(default=1.0, metadata={"help": "KTO weight of desirable examples."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "KTO weight of undesirable examples."})
    reference: str = field(default="auto", metadata={
        "help": "Reference model: copy (frozen copy of the start), adapter (LoRA policy with the adapter off: "
                "no second copy), precomputed (log-probs computed once before training and cached on disk), "
                "none (simpo/orpo), or auto (none for reference-free losses, adapter with LoRA, else copy)."})
    reference_cache_dir: str | None = field(default=None, metadata={
        "help": "Where precomputed reference log-probs are cached (default ~/.cache/posttrain/reference, "
                "or $POSTTRAIN_CACHE/reference)."})
    prefix_sharing: bool = field(default=False, metadata={
        "help": "Compute each pair as one row prompt+chosen+rejected so the prompt is computed once "
                "(same log-probs; faster when prompts are long). Needs sdpa or eager attention."})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Keep only the last N prompt tokens; answers are then cut to fit --max_length."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Initial AdamW learning rate."})


class DPOTrainer(PostTrainer):
    """Train a causal LM on preference pairs (or, with ``loss_type="kto"``, unpaired labelled rows).

    ``ref_model`` optionally gives the reference explicitly (``reference="copy"`` then uses it
    instead of copying the policy).
    """

    method = "dpo"
    task = "causal-lm"
    loss_is_scaled_for_ga = False  # per-batch means: the Trainer divides by accumulation steps

    def __init__(self, model, args: DPOConfig | None = None, ref_model=None, **kwargs):
        args = args or DPOConfig()
        if args.loss_type not in LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {args.loss_type!r}; choose from {LOSS_TYPES}.")
        self.is_kto = args.loss_type == "kto"
        self.method = "kto" if self.is_kto else f"dpo ({args.loss_type})"
        self.formats = ("unpaired_preference",) if self.is_kto else ("preference", "implicit_preference")
        if self.is_kto and args.prefix_sharing:
            raise ValueError("prefix_sharing applies to paired losses; KTO rows have one completion each.")
        if self.is_kto and args.per_device_train_batch_size < 2:
            raise ValueError("KTO estimates its KL reference point from mismatched pairs within a batch: "
                             "use per_device_train_batch_size >= 2.")
        self.reference_forwards = 0  # counts reference passes during training (0 with 'precomputed')
        super().__init__(model, args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.reference_strategy = ref.resolve_strategy(args.reference, self.model, args.loss_type in REFERENCE_FREE)
        if self.is_kto and self.reference_strategy == "precomputed":
            raise ValueError("KTO's KL term pairs prompts with other rows' completions in each shuffled batch, so "
                             "it cannot be precomputed; use reference='copy' or 'adapter'.")
        self.ref_model = None
        if ref_model is not None and args.disable_dropout:  # like the policy (as TRL); it runs in eval mode anyway
            disable_dropout(ref_model)
        if self.reference_strategy == "copy":
            self.ref_model = ref_model if ref_model is not None else ref.frozen_copy(self.model)
            self.ref_model.requires_grad_(False)
            self.ref_model = self.accelerator.prepare_model(self.ref_model.eval(), evaluation_mode=True)
        elif self.reference_strategy == "precomputed":
            reference_model = ref_model if ref_model is not None else self.accelerator.unwrap_model(self.model)
            self.train_dataset = self._with_reference_logps(self.train_dataset, reference_model)
            if self.eval_dataset is not None and not isinstance(self.eval_dataset, dict):
                self.eval_dataset = self._with_reference_logps(self.eval_dataset, reference_model)

    # ---- data -------------------------------------------------------------------------------------
    def tokenize_row(self, row, index, tokenizer, fmt, args):
        if self.is_kto:
            return tokenize_unpaired_row(row, index, tokenizer, fmt, args.max_length, args.max_prompt_length)
        out = tokenize_preference_row(row, index, tokenizer, fmt, args.max_length, args.max_prompt_length)
        if args.prefix_sharing and not out["prompt_ids"]:
            raise DataFormatError(f"Row {index}: prefix sharing needs a non-empty prompt (chosen and rejected share "
                                  "no beginning). Give an explicit prompt or turn prefix_sharing off.")
        return out

    def tokenize_settings(self, args):
        return (args.max_length, args.max_prompt_length, args.loss_type == "kto", args.prefix_sharing)

    def make_collator(self, tokenizer, args):
        if args.loss_type == "kto":
            return UnpairedCollator(tokenizer.pad_token_id)
        return (SharedPrefixCollator if args.prefix_sharing else PreferenceCollator)(tokenizer.pad_token_id)

    # ---- log-probs --------------------------------------------------------------------------------
    def pair_logps(self, model, batch) -> tuple[torch.Tensor, ...]:
        """``(chosen, rejected, chosen_counts, rejected_counts)`` from one forward pass over the batch."""
        if self.args.prefix_sharing:
            return shared_prefix_pair_logps(model, batch)
        sums, counts = answer_logps(model, batch)
        return (*sums.chunk(2), *counts.chunk(2))

    @torch.no_grad()
    def reference_pair_logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen_logps" in batch:
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.model.training:
            self.reference_forwards += 1
        if self.reference_strategy == "adapter":
            with ref.adapter_disabled(self.accelerator.unwrap_model(self.model)) as base:
                return self.pair_logps(base, batch)[:2]
        return self.pair_logps(self.ref_model, batch)[:2]

    def _with_reference_logps(self, dataset, model):
        """Add ``ref_chosen_logps``/``ref_rejected_logps`` columns, computed once with ``model`` (the
        starting policy unless a ref_model was given) and cached on disk under a fingerprint of model,
        tokenizer and data."""
        columns = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_dict()
        key = ref.fingerprint(model, self.processing_class, columns, {"kind": "dpo-pair-logps"})
        path = os.path.join(ref.cache_dir(self.args.reference_cache_dir), f"{key}.safetensors")
        cached = ref.load_cached(path)
        if cached is None:
            collator, size = self.data_collator, self.args.per_device_eval_batch_size
            chosen, rejected = [], []
            was_training = model.training
            model.eval()
            with torch.no_grad():
                for start in tqdm(range(0, len(dataset), size), desc="Precomputing reference log-probs",
                                  disable=self.args.disable_tqdm):
                    batch = collator([dataset[i] for i in range(start, min(start + size, len(dataset)))])
                    batch = {k: v.to(self.args.device) for k, v in batch.items()}
                    c, r = self.pair_logps(model, batch)[:2]
                    chosen.append(c.float().cpu())
                    rejected.append(r.float().cpu())
            model.train(was_training)
            cached = {"chosen": torch.cat(chosen), "rejected": torch.cat(rejected)}
            if self.args.should_save:
                ref.save_cached(path, cached)
        self.reference_cache_path = path
        return dataset.add_column("ref_chosen_logps", cached["chosen"].tolist()).add_column(
            "ref_rejected_logps", cached["rejected"].tolist())

    # ---- loss -------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.is_kto:
            loss = self._kto_loss(model, inputs)
            return (loss, {}) if return_outputs else loss
        args = self.args
        chosen, rejected, n_chosen, n_rejected = self.pair_logps(model, inputs)
        if args.loss_type == "simpo":
            loss, r_chosen, r_rejected = simpo_loss(chosen / n_chosen, rejected / n_rejected, args.beta,
                                                    args.simpo_gamma)
        elif args.loss_type == "orpo":
            loss, r_chosen, r_rejected = orpo_loss(chosen / n_chosen, rejected / n_rejected,
                                                   -(chosen.sum() / n_chosen.sum()), args.beta)
        else:
            ref_chosen, ref_rejected = self.reference_pair_logps(inputs)
            loss, r_chosen, r_rejected = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, args.beta,
                                                  args.loss_type, args.label_smoothing)
        self.record(**{"rewards/chosen": r_chosen.mean(), "rewards/rejected": r_rejected.mean(),
                       "rewards/accuracy": (r_chosen > r_rejected).float().mean(),
                       "rewards/margin": (r_chosen - r_rejected).mean(),
                       "logps/chosen": chosen.detach().mean(), "logps/rejected": rejected.detach().mean()})
        self.count_tokens(inputs["attention_mask"].sum() if "attention_mask" in inputs
                          else (inputs["segment_ids"] >= 0).sum())
        return (loss, {}) if return_outputs else loss

    def _kto_loss(self, model, inputs):
        n = inputs["label"].shape[0]
        matched = {k: v[:n] for k, v in inputs.items() if k != "label"}
        mismatched = {k: v[n:] for k, v in inputs.items() if k != "label"}
        logps, _ = answer_logps(model, matched)
        with torch.no_grad():  # the KL reference point is detached: no graph needed for it
            kl_logps, _ = answer_logps(model, mismatched)
            if self.model.training:
                self.reference_forwards += 1
            if self.reference_strategy == "adapter":
                with ref.adapter_disabled(self.accelerator.unwrap_model(self.model)) as base:
                    ref_logps, ref_kl = answer_logps(base, matched)[0], answer_logps(base, mismatched)[0]
            else:
                ref_logps, ref_kl = answer_logps(self.ref_model, matched)[0], answer_logps(self.ref_model, mismatched)[0]
        label = inputs["label"]
        loss, rewards, z0 = kto_loss(logps, ref_logps, kl_logps, ref_kl, label, self.args.beta,
                                     self.args.desirable_weight, self.args.undesirable_weight)
        values = {"kl": z0}
        if label.any():
            values["rewards/desirable"] = rewards[label].mean()
        if (~label).any():
            values["rewards/undesirable"] = rewards[~label].mean()
        self.record(**values)
        self.count_tokens(inputs["attention_mask"][:n].sum())
        return loss
