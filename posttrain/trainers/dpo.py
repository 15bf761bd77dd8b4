"""Offline preference optimisation on pairs: DPO and its family (every TRL 1.16 ``loss_type``, combinable
with ``loss_weights``), and the reference-free SimPO and ORPO. KTO (unpaired rows) is ``KTOTrainer``.

Recipe: preference rows -> prompt / chosen / rejected ids (prompt tokenized once) -> a batch of
chosen and rejected sequences (or one shared-prefix row per pair) -> ONE policy forward -> summed
answer log-probs -> reference log-probs (frozen copy, adapter switched off, precomputed, or none)
-> weighted sum of the losses -> step.

``DPOConfig`` takes TRL 1.16's field names with TRL's meanings and defaults; TRL fields posttrain does
not implement are accepted at their defaults and raise an error when set to anything else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import TrainingArguments

from .. import distributed
from ..config import PostTrainConfig, check_padding, integer, interval, positive, rule, unimplemented
from ..data.collate import PreferenceCollator, SharedPrefixCollator
from ..data.formats import DataFormatError
from ..data.tokenize import tokenize_preference_row
from ..losses.logprobs import answer_logps, shared_prefix_pair_logps
from ..losses.preference import PAIRED_LOSSES, REFERENCE_FREE, chosen_nll, dpo_loss, orpo_loss, simpo_loss
from ..models import reference as ref
from ..models.loading import disable_dropout
from .base import PostTrainer


@dataclass
class DPOConfig(PostTrainConfig):
    """Preference-optimisation settings (on top of transformers.TrainingArguments), with TRL 1.16's names
    and defaults plus posttrain's additions (reference, prefix_sharing, max_prompt_length, simpo/orpo)."""

    learning_rate: float = field(default=1e-6, metadata={"help": "Initial AdamW learning rate (TRL's default)."})
    # ---- the loss -----------------------------------------------------------------------------------
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"], metadata={
        "help": "Loss, or several whose weighted sum is the loss (a string becomes a one-item list, as TRL): "
                "sigmoid (DPO; with label_smoothing > 0 conservative DPO, which TRL ignores), hinge (SLiC), ipo, "
                "exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, "
                "sigmoid_norm, sft (NLL of the chosen answers), and posttrain's reference-free simpo and orpo. "
                "Unpaired KTO is KTOTrainer/KTOConfig."})
    loss_weights: list[float] | None = field(default=None, metadata={
        "help": "Weight of each loss_type in the sum (default 1.0 each), e.g. [0.8, 0.2, 1.0] for MPO."})
    beta: float = field(default=0.1, metadata={
        "help": "Strength of the KL leash (β; IPO's τ); SimPO's reward scale; ORPO's λ."})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "Assumed rate of flipped preference labels: robust (in [0, 0.5)), exo_pair (> 0, e.g. 1e-3), aot, "
                "and sigmoid, where ε > 0 gives conservative DPO (cDPO). Differs from TRL 1.16, whose sigmoid "
                "ignores it: leave it at 0 for TRL's sigmoid."})
    discopop_tau: float = field(default=0.05, metadata={"help": "DiscoPOP's temperature τ (loss_type discopop)."})
    ipo_normalize_length: bool = field(default=False, metadata={
        "help": "IPO on per-token average log-ratios (TRL 1.16's IPO) instead of the paper's summed ones "
                "(posttrain's default). True gives TRL's numbers."})
    simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO's target reward margin γ (posttrain)."})
    # ---- the reference model ------------------------------------------------------------------------
    precompute_ref_log_probs: bool = field(default=False, metadata={
        "help": "Compute the reference log-probs once before training (cached on disk), so no reference model "
                "is kept or run during training. Same as reference='precomputed'."})
    precompute_ref_batch_size: int | None = field(default=None, metadata={
        "help": "Batch size of that precomputation (default: per_device_train_batch_size for training data, "
                "per_device_eval_batch_size for evaluation data)."})
    reference: str = field(default="auto", metadata={
        "help": "Reference model (posttrain): copy (frozen copy of the start, or the ref_model given), adapter "
                "(LoRA policy with the adapter off: no second copy), precomputed (= precompute_ref_log_probs), "
                "none (simpo/orpo/sft only), or auto (none for reference-free losses, the ref_model if given, "
                "adapter with LoRA, else copy; as TRL)."})
    reference_cache_dir: str | None = field(default=None, metadata={
        "help": "Where precomputed reference log-probs are cached (default ~/.cache/posttrain/reference, "
                "or $POSTTRAIN_CACHE/reference)."})
    # ---- data ---------------------------------------------------------------------------------------
    truncation_mode: str = field(default="keep_start", metadata={
        "help": "Which part of a too-long sequence is kept; only TRL's 'keep_start' is supported (answers keep "
                "their start). See max_prompt_length to keep a prompt's end."})
    padding_free: bool = field(default=False, metadata={
        "help": "TRL: unavailable in TRL 1.16 DPO (warns, falls back to padding); posttrain does the same."})
    pad_to_multiple_of: str | None = field(default="auto", metadata={
        "help": "TRL: pad to a multiple of N. Only 'auto' (no padding except on Neuron) and None are supported."})
    prefix_sharing: bool = field(default=False, metadata={
        "help": "Compute each pair as one row prompt+chosen+rejected so the prompt is computed once "
                "(same log-probs; faster when prompts are long). Needs sdpa or eager attention (posttrain)."})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Keep only the last N prompt tokens; answers are then cut to fit max_length (posttrain)."})
    # ---- TRL options posttrain does not implement ---------------------------------------------------
    router_aux_loss_coef: float | None = unimplemented(None, "weight of a Mixture-of-Experts load-balancing loss.")
    ld_alpha: float | None = unimplemented(None, "LD-DPO weight of the verbose tail of the longer answer.")
    f_divergence_type: str = unimplemented("reverse_kl", "f-DPO divergence between policy and reference.")
    f_alpha_divergence_coef: float = unimplemented(0.5, "α of f-DPO's alpha_divergence.")
    use_weighting: bool = unimplemented(False, "WPO weighting of pairs by their length-normalised probabilities.")
    sync_ref_model: bool = unimplemented(False, "TR-DPO: mix the policy into the reference every few steps.")
    ref_model_mixup_alpha: float = unimplemented(0.6, "TR-DPO's mixing α.")
    ref_model_sync_steps: int = unimplemented(512, "TR-DPO's sync interval.")
    pad_token: str | None = unimplemented(None, "deprecated in TRL; set tokenizer.pad_token instead.")

    RANGES = {"beta": positive(), "label_smoothing": interval(0, 0.5, "[)", note=" (a rate of flipped labels)"),
              "discopop_tau": positive(), "simpo_gamma": rule(lambda v: abs(v) < float("inf"), "a finite number"),
              "loss_weights": rule(lambda v: all(abs(w) < float("inf") for w in v), "a list of finite numbers",
                                   none="1.0 each"),
              "precompute_ref_batch_size": integer(1, none="the training or evaluation batch size")}

    def __post_init__(self):
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        unknown = [t for t in self.loss_type if t not in PAIRED_LOSSES]
        if "kto" in unknown or "apo_zero_unpaired" in unknown:
            raise ValueError(f"loss_type {unknown} is for unpaired data: use KTOTrainer with KTOConfig (as in TRL), "
                             "e.g. `from posttrain import KTOConfig, KTOTrainer` or `posttrain kto`.")
        if unknown or not self.loss_type:
            raise ValueError(f"Unknown loss_type {unknown or self.loss_type}; choose from {', '.join(PAIRED_LOSSES)}.")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} values for {len(self.loss_type)} loss types "
                             f"{self.loss_type}; give one weight per loss type (or none for 1.0 each).")
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            raise ValueError("exo_pair needs label_smoothing > 0 (the EXO paper suggests 1e-3).")
        if self.truncation_mode != "keep_start":
            raise ValueError(f"truncation_mode={self.truncation_mode!r} is not supported (TRL deprecates 'keep_end'); "
                             "use 'keep_start', and max_prompt_length to keep the end of long prompts.")
        sync_precompute(self)
        check_padding(self)
        super().__post_init__()


def sync_precompute(config) -> None:
    """TRL's ``precompute_ref_log_probs`` and posttrain's ``reference='precomputed'`` are one setting."""
    if config.precompute_ref_log_probs:
        if config.reference not in ("auto", "precomputed"):
            raise ValueError(f"precompute_ref_log_probs=True contradicts reference={config.reference!r}; "
                             "set one of them.")
        config.reference = "precomputed"
    config.precompute_ref_log_probs = config.reference == "precomputed"


def split_model_ref_args(ref_model, args):
    """Accept TRL's ``(model, ref_model, args)`` and posttrain's older ``(model, args, ref_model)``: a
    TrainingArguments in the ``ref_model`` slot is the config."""
    if isinstance(ref_model, TrainingArguments):
        if isinstance(args, TrainingArguments):
            raise TypeError("Two configs given (in the ref_model and args places); pass one, as args=.")
        return args, ref_model
    return ref_model, args


class DPOTrainer(PostTrainer):
    """Train a causal LM on preference pairs. TRL's signature: ``DPOTrainer(model, ref_model=None,
    args=None, data_collator=None, train_dataset=None, eval_dataset=None, processing_class=None,
    compute_metrics=None, callbacks=None, optimizers=(None, None), peft_config=None)``;
    ``DPOTrainer(model, config, ...)`` works too. ``ref_model`` gives the reference explicitly; without
    it a LoRA policy (``peft_config``) is its own reference with the adapter off, else a frozen copy.
    """

    method = "dpo"
    task = "causal-lm"
    formats = ("preference", "implicit_preference")
    config_class = DPOConfig
    loss_is_scaled_for_ga = False  # per-batch means: the Trainer divides by accumulation steps

    def __init__(self, model, ref_model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, compute_metrics=None, callbacks=None, optimizers=(None, None),
                 quantization_config=None, peft_config=None, **kwargs):
        ref_model, args = split_model_ref_args(ref_model, args)
        args = args if args is not None else self.config_class()
        if not isinstance(args, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a posttrain {self.config_class.__name__} as args, got "
                            f"{type(args).__module__}.{type(args).__name__}; import it from posttrain too.")
        if quantization_config is not None:  # TRL 0.x's argument: the base is loaded quantized
            if not isinstance(model, str):
                raise ValueError("quantization_config applies when the model is loaded: pass the model by name or "
                                 "directory, or load it quantized yourself (load_model(..., quantization_config=...)).")
            args.model_init_kwargs = {**(args.model_init_kwargs or {}), "quantization_config": quantization_config}
        if ref_model is not None and ref_model is model:
            raise ValueError("model and ref_model are the same object; omit ref_model and a frozen copy is made.")
        self.check_args(args)
        self.reference_forwards = 0  # counts reference passes during training (0 with 'precomputed')
        super().__init__(model, args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, peft_config=peft_config, data_collator=data_collator,
                         callbacks=callbacks, compute_metrics=compute_metrics, optimizers=optimizers, **kwargs)
        self.model_accepts_loss_kwargs = False
        requested = "copy" if args.reference == "auto" and ref_model is not None else args.reference
        self.reference_strategy = ref.resolve_strategy(requested, self.model, self.reference_free(args))
        self.ref_model = None
        if ref_model is not None and args.disable_dropout:  # like the policy (as TRL); it runs in eval mode anyway
            disable_dropout(ref_model)
        if self.reference_strategy == "copy":
            self.ref_model = ref_model if ref_model is not None else ref.frozen_copy(self.model)
            self.ref_model.requires_grad_(False)
            self.ref_model = distributed.shard_frozen(self.accelerator, self.ref_model) \
                if distributed.is_fsdp(self.accelerator) or distributed.is_deepspeed(self.accelerator) else \
                self.accelerator.prepare_model(self.ref_model.eval(), evaluation_mode=True)
        elif self.reference_strategy == "precomputed":
            reference_model = ref_model if ref_model is not None else self.accelerator.unwrap_model(self.model)
            size = args.precompute_ref_batch_size
            self.train_dataset = self._with_reference_logps(self.train_dataset, reference_model,
                                                            size or args.per_device_train_batch_size)
            if self.eval_dataset is not None and not isinstance(self.eval_dataset, dict):
                self.eval_dataset = self._with_reference_logps(self.eval_dataset, reference_model,
                                                               size or args.per_device_eval_batch_size)

    def check_args(self, args) -> None:
        self.loss_weights = args.loss_weights or [1.0] * len(args.loss_type)
        self.method = f"dpo ({'+'.join(args.loss_type)})"

    def reference_free(self, args) -> bool:
        return all(t in REFERENCE_FREE for t in args.loss_type)

    # ---- data -------------------------------------------------------------------------------------
    def tokenize_row(self, row, index, tokenizer, fmt, args):
        out = tokenize_preference_row(row, index, tokenizer, fmt, args.max_length, args.max_prompt_length)
        if args.prefix_sharing and not out["prompt_ids"]:
            raise DataFormatError(f"Row {index}: prefix sharing needs a non-empty prompt (chosen and rejected share "
                                  "no beginning). Give an explicit prompt or turn prefix_sharing off.")
        return out

    def tokenize_settings(self, args):
        return (args.max_length, args.max_prompt_length, args.prefix_sharing)

    def make_collator(self, tokenizer, args):
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

    def _with_reference_logps(self, dataset, model, batch_size: int):
        """Add ``ref_chosen_logps``/``ref_rejected_logps`` columns, computed once with ``model`` (the
        starting policy unless a ref_model was given) and cached on disk under a fingerprint of model,
        tokenizer and data."""
        columns = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_dict()
        key = ref.fingerprint(model, self.processing_class, columns, {"kind": "dpo-pair-logps"})
        path = os.path.join(ref.cache_dir(self.args.reference_cache_dir), f"{key}.safetensors")
        cached = ref.load_cached(path)
        self.precomputed_rows = 0
        if cached is None:  # each process computes its share of the rows; every process gets all of them
            with self.accelerator.split_between_processes(list(range(len(dataset)))) as mine:
                chosen, rejected = self._reference_logps_of(dataset, mine, model, batch_size)
            self.precomputed_rows = len(mine)
            pieces = gather_object([(mine, chosen, rejected)])
            order = torch.tensor([i for rows, _, _ in pieces for i in rows]).argsort()
            cached = {"chosen": torch.cat([c for _, c, _ in pieces])[order],
                      "rejected": torch.cat([r for _, _, r in pieces])[order]}
            if self.args.should_save:
                ref.save_cached(path, cached)
        self.reference_cache_path = path
        return dataset.add_column("ref_chosen_logps", cached["chosen"].tolist()).add_column(
            "ref_rejected_logps", cached["rejected"].tolist())

    def _reference_logps_of(self, dataset, rows: list[int], model, batch_size: int):
        """Summed reference log-probs of the chosen and rejected answers of ``rows``, on CPU."""
        chosen, rejected = [torch.zeros(0)], [torch.zeros(0)]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for start in tqdm(range(0, len(rows), batch_size), desc="Precomputing reference log-probs",
                              disable=self.args.disable_tqdm or not self.accelerator.is_local_main_process):
                batch = self.data_collator([dataset[i] for i in rows[start: start + batch_size]])
                # where the model is: under FSDP the unsharded model has not been placed on the device yet
                device = next(model.parameters()).device
                c, r = self.pair_logps(model, {k: v.to(device) for k, v in batch.items()})[:2]
                chosen.append(c.float().cpu())
                rejected.append(r.float().cpu())
        model.train(was_training)
        return torch.cat(chosen), torch.cat(rejected)

    # ---- loss -------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        chosen, rejected, n_chosen, n_rejected = self.pair_logps(model, inputs)
        ref_chosen = ref_rejected = None
        if self.reference_strategy != "none":
            ref_chosen, ref_rejected = self.reference_pair_logps(inputs)
        loss, rewards = 0.0, None
        for loss_type, weight in zip(args.loss_type, self.loss_weights):
            if loss_type == "sft":
                term, r_chosen = chosen_nll(chosen, n_chosen), None
            elif loss_type == "simpo":
                term, r_chosen, r_rejected = simpo_loss(chosen / n_chosen, rejected / n_rejected, args.beta,
                                                        args.simpo_gamma)
            elif loss_type == "orpo":
                term, r_chosen, r_rejected = orpo_loss(chosen / n_chosen, rejected / n_rejected,
                                                       chosen_nll(chosen, n_chosen), args.beta)
            else:
                term, r_chosen, r_rejected = dpo_loss(
                    chosen, rejected, ref_chosen, ref_rejected, args.beta, loss_type, args.label_smoothing,
                    args.discopop_tau, n_chosen, n_rejected, args.ipo_normalize_length)
            loss = loss + weight * term
            if rewards is None and r_chosen is not None:
                rewards = (r_chosen, r_rejected)
        if ref_chosen is not None:  # TRL's implicit rewards, β·(log π - log ref), whatever the loss
            rewards = (args.beta * (chosen - ref_chosen).detach(), args.beta * (rejected - ref_rejected).detach())
        values = {"logps/chosen": chosen.detach().mean(), "logps/rejected": rejected.detach().mean()}
        if rewards is not None:
            r_chosen, r_rejected = rewards
            values.update({"rewards/chosen": r_chosen.mean(), "rewards/rejected": r_rejected.mean(),
                           "rewards/accuracies": (r_chosen > r_rejected).float().mean(),
                           "rewards/margins": (r_chosen - r_rejected).mean()})
        self.record(**values)
        self.count_tokens(inputs["attention_mask"].sum() if "attention_mask" in inputs
                          else (inputs["segment_ids"] >= 0).sum())
        return (loss, {}) if return_outputs else loss
