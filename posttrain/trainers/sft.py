"""Supervised fine-tuning.

Recipe: rows (a ``formatting_func`` or ``dataset_text_field`` makes them plain text) -> validate ->
segments (prompt / completion, or non-assistant / assistant turns) -> token ids with a loss mask ->
optionally bin-packed into rows of ``max_length`` -> padded or padding-free batches -> per-token
log-probs -> NLL over the trainable tokens, normalised by the trainable tokens of the whole optimizer step.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from ..config import PostTrainConfig, unimplemented
from ..data.collate import SFTCollator
from ..data.formats import DataFormatError, load_rows
from ..data.packing import PACKING_STRATEGIES, pack_dataset
from ..data.tokenize import TRUNCATION_SIDES, has_trainable_tokens, tokenize_sft_row
from ..losses import labelled_logps, sft_loss, token_accuracy
from ..models.loading import load_tokenizer
from .base import PostTrainer

logger = logging.getLogger(__name__)

@dataclass
class SFTConfig(PostTrainConfig):
    """Supervised fine-tuning settings (on top of transformers.TrainingArguments), with TRL 1.16's names,
    meanings and defaults. posttrain additions: ``truncation_side``."""

    # ---- model -------------------------------------------------------------------------------------
    router_aux_loss_coef: float | None = unimplemented(None, "weight of a Mixture-of-Experts load-balancing loss.")
    chat_template_path: str | None = unimplemented(None, "a tokenizer or Jinja file whose chat template to use (set "
                                                   "tokenizer.chat_template and pass it as processing_class).")
    # ---- data --------------------------------------------------------------------------------------
    dataset_text_field: str = field(default="text", metadata={
        "help": "Column holding the text of language-modeling rows (used when the rows have no "
                "prompt/completion or messages)."})
    dataset_kwargs: dict[str, Any] | str | None = field(default=None, metadata={
        "help": "TRL's dataset-preparation options. The only key is skip_prepare_dataset, which posttrain does not "
                "support (rows are always validated and tokenized); {} or None."})
    eos_token: str | None = field(default=None, metadata={
        "help": "End-of-sequence token appended to text and completions (default: the tokenizer's eos token)."})
    pad_token: str | None = field(default=None, metadata={
        "help": "Padding token (default: the tokenizer's pad token, else its eos token). Deprecated in TRL in "
                "favour of setting tokenizer.pad_token."})
    truncation_mode: str = field(default="keep_start", metadata={
        "help": "Which part of a too-long example is kept: 'keep_start' or 'keep_end' (TRL's name; same as "
                "truncation_side 'right' / 'left').", "choices": ["keep_start", "keep_end"]})
    truncation_side: str = field(default="right", metadata={
        "help": "posttrain's name for truncation_mode: 'right' drops the end (keep_start), 'left' drops the "
                "start (keep_end)."})
    shuffle_dataset: bool = field(default=False, metadata={
        "help": "Shuffle the prepared dataset (seeded by --seed), before and after packing as TRL does."})
    packing: bool = field(default=False, metadata={
        "help": "Bin-pack tokenized examples into rows of at most max_length tokens (packing_strategy); with "
                "'bfd'/'bfd_split' position_ids restart per example and no token attends across examples."})
    packing_strategy: str = field(default="bfd", metadata={
        "help": "'bfd' (best-fit decreasing; an example longer than max_length is truncated), 'bfd_split' (its "
                "overflow becomes further examples) or 'wrapped' (cut every max_length tokens, mid-example; "
                "examples attend to each other).", "choices": list(PACKING_STRATEGIES)})
    padding_free: bool = field(default=False, metadata={
        "help": "Padding-free packing of each batch: concatenate it into one row with position_ids restarting per "
                "example (no pad tokens computed, no attention across examples). Works with SDPA/eager attention "
                "as well as flash-attention. Implied by packing with 'bfd'/'bfd_split'."})
    pad_to_multiple_of: int | str | None = field(default="auto", metadata={
        "help": "Pad each batch to a multiple of this length (e.g. 8 for tensor cores). 'auto': 128 on Neuron "
                "devices, else no extra padding."})
    eval_packing: bool | None = field(default=None, metadata={
        "help": "Pack the evaluation data too (default: the value of packing)."})
    # ---- loss --------------------------------------------------------------------------------------
    completion_only_loss: bool | None = field(default=None, metadata={
        "help": "Train only on completion tokens of prompt/completion rows. Default (None): True for "
                "prompt/completion data, every token for text data."})
    assistant_only_loss: bool = field(default=False, metadata={
        "help": "For conversational 'messages' rows, train only on assistant turns (default False: every token, "
                "as TRL)."})
    loss_type: str = field(default="nll", metadata={
        "help": "'nll' (negative log-likelihood) or 'dft' (Dynamic Fine-Tuning: each token's NLL weighted by its "
                "detached probability). 'chunked_nll' is TRL's deprecated alias of 'nll'.",
        "choices": ["nll", "dft", "chunked_nll"]})

    def __post_init__(self):
        if isinstance(self.dataset_kwargs, str):
            self.dataset_kwargs = json.loads(self.dataset_kwargs)
        if self.dataset_kwargs and self.dataset_kwargs.get("skip_prepare_dataset"):
            raise ValueError("dataset_kwargs={'skip_prepare_dataset': True} is not supported: posttrain always "
                             "validates and tokenizes the rows. Pass untokenized rows (text, prompt/completion or "
                             "messages) instead.")
        unknown = sorted(set(self.dataset_kwargs or {}) - {"skip_prepare_dataset"})
        if unknown:
            raise ValueError(f"Unknown dataset_kwargs keys {unknown}; TRL's only key is skip_prepare_dataset.")
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise ValueError(f"truncation_mode must be 'keep_start' or 'keep_end', got {self.truncation_mode!r}.")
        if self.truncation_side not in TRUNCATION_SIDES:
            raise ValueError(f"truncation_side must be one of {TRUNCATION_SIDES}, got {self.truncation_side!r}.")
        if self.truncation_mode == "keep_end":
            self.truncation_side = "left"
        self.packing_strategy = {"bfd-requeue": "bfd_split"}.get(self.packing_strategy, self.packing_strategy)
        if self.packing_strategy not in PACKING_STRATEGIES:
            raise ValueError(f"packing_strategy must be one of {PACKING_STRATEGIES}, got {self.packing_strategy!r}.")
        if (self.packing or self.eval_packing) and self.max_length is None:
            raise ValueError("packing=True needs max_length (the length of a packed row); set max_length, e.g. 1024.")
        self.loss_type = {"chunked_nll": "nll"}.get(self.loss_type, self.loss_type)
        if self.loss_type not in ("nll", "dft"):
            raise ValueError(f"loss_type must be 'nll' or 'dft', got {self.loss_type!r}.")
        super().__post_init__()
        if isinstance(self.pad_to_multiple_of, str):  # "auto", or a number / "none" from the command line
            value = self.pad_to_multiple_of.lower()
            self.pad_to_multiple_of = ((128 if self.device.type == "neuron" else None) if value == "auto"
                                       else None if value in ("none", "null") else int(value))

    def padding_free_for(self, packing: bool) -> bool:
        """Whether batches are padding-free: asked for, or implied by packing with seq_lengths (as in TRL)."""
        return self.padding_free or (packing and self.packing_strategy in ("bfd", "bfd_split"))


class SFTTrainer(PostTrainer):
    """Fine-tune a causal LM on language-modeling, prompt/completion or conversational rows.

    ``model`` is a model or a name (``tiny:llama``, hub name, directory); ``train_dataset`` a
    ``datasets.Dataset``, a list of dicts or a file path; ``peft_config`` trains a LoRA adapter;
    ``formatting_func`` (as in TRL 1.16) maps one row to one string, which is trained on as text.
    """

    method = "sft"
    task = "causal-lm"
    formats = ("language_modeling", "prompt_completion", "conversational")
    # compute_loss divides by the trainable tokens of the whole step, so the Trainer must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(self, model, args: SFTConfig | None = None, processing_class=None, formatting_func=None, **kwargs):
        args = args or SFTConfig()
        if processing_class is None:
            processing_class = load_tokenizer(model if isinstance(model, str) else model.config.name_or_path)
        self._set_special_tokens(processing_class, args)
        self._formatting_func = formatting_func
        super().__init__(model, args, processing_class=processing_class, **kwargs)
        if getattr(self.model.config, "is_encoder_decoder", False):
            raise ValueError(f"SFTTrainer trains decoder-only (causal) language models; {self.base_model_name!r} is "
                             "encoder-decoder. Use a causal model such as tiny:llama, or transformers' "
                             "Seq2SeqTrainer for T5-style models.")
        self._tell_model_special_tokens(processing_class, args)
        self.model_accepts_loss_kwargs = True  # makes the Trainer count num_items_in_batch for us

    @staticmethod
    def _set_special_tokens(tokenizer, args) -> None:
        for name in ("eos_token", "pad_token"):
            token = getattr(args, name)
            if token is not None:
                if token not in tokenizer.get_vocab():
                    raise ValueError(f"SFTConfig.{name}={token!r} is not in the tokenizer's vocabulary; use an "
                                     f"existing token or add it to the tokenizer (and resize the embeddings) first.")
                setattr(tokenizer, name, token)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    def _tell_model_special_tokens(self, tokenizer, args) -> None:
        """The model agrees with the tokenizer on pad (and on eos when eos_token is set), as in TRL."""
        generation = getattr(self.model, "generation_config", None)
        self.model.config.pad_token_id = tokenizer.pad_token_id
        if generation is not None:
            generation.pad_token_id = tokenizer.pad_token_id
        if args.eos_token is not None:
            self.model.config.eos_token_id = tokenizer.eos_token_id
            if generation is not None:
                ids = generation.eos_token_id
                ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
                generation.eos_token_id = ids if tokenizer.eos_token_id in ids else [tokenizer.eos_token_id, *ids]

    # ---- data --------------------------------------------------------------------------------------
    def _prepare(self, rows, tokenizer, args, split: str):
        if rows is None:
            return None
        packing = args.packing if split == "train" or args.eval_packing is None else args.eval_packing
        # Overflow is kept for bfd_split/wrapped packing, which cut it into pieces themselves.
        self._tokenize_max_length = None if packing and args.packing_strategy != "bfd" else args.max_length
        dataset = super()._prepare(self._as_text(load_rows(rows), args), tokenizer, args, split)
        if not packing:
            before = len(dataset)
            dataset = dataset.filter(has_trainable_tokens, num_proc=args.dataset_num_proc)
            if len(dataset) < before:
                logger.warning("Dropped %d of %d %s rows that truncation to max_length=%s left with no trainable "
                               "token (as TRL does). Raise max_length or shorten the prompts to keep them.",
                               before - len(dataset), before, split, args.max_length)
            if len(dataset) == 0:
                raise DataFormatError(f"No {split} row has a trainable token left after truncation to max_length="
                                      f"{args.max_length}; raise max_length.")
        if args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        if packing:
            dataset = pack_dataset(dataset, args.max_length, args.packing_strategy, args.dataset_num_proc)
            if args.shuffle_dataset:
                dataset = dataset.shuffle(seed=args.seed)
        return dataset

    def _as_text(self, dataset, args):
        """Rows as plain text when a ``formatting_func`` is given (called once per row, returning a
        string, as in TRL 1.16) or when ``dataset_text_field`` names the text column; other columns
        are dropped then, since the text is all that is trained on."""
        if self._formatting_func is not None:
            def format_row(row, i):
                text = self._formatting_func(row)
                if not isinstance(text, str):
                    raise DataFormatError(f"Row {i}: formatting_func returned a {type(text).__name__}; it is called "
                                          "with one row (a dict) and must return one string, as in TRL 1.16.")
                return {"text": text}

            if args.completion_only_loss:
                raise ValueError("formatting_func turns rows into plain text, so there is no completion to restrict "
                                 "the loss to; set completion_only_loss=False or None.")
            return dataset.map(format_row, with_indices=True, remove_columns=dataset.column_names,
                               num_proc=args.dataset_num_proc, desc="Applying formatting_func")
        columns = set(dataset.column_names)
        if {"prompt", "completion"} <= columns or "messages" in columns or args.dataset_text_field not in columns:
            return dataset
        if columns != {args.dataset_text_field}:
            logger.info("Training on column %r as text; dropping columns %s.", args.dataset_text_field,
                        sorted(columns - {args.dataset_text_field}))
        dataset = dataset.select_columns([args.dataset_text_field])
        return dataset if args.dataset_text_field == "text" else dataset.rename_column(args.dataset_text_field, "text")

    def tokenize_row(self, row, index, tokenizer, fmt, args):
        if args.assistant_only_loss and not fmt.conversational:
            raise ValueError("assistant_only_loss=True needs conversational rows ('messages', or message-list "
                             f"prompt/completion); this dataset is {fmt.name}. Set assistant_only_loss=False.")
        completion_only = args.completion_only_loss is not False  # None (TRL's default) means True here
        train_on_prompt = (fmt.name == "prompt_completion" and not completion_only) or (
            fmt.name == "conversational" and not args.assistant_only_loss)
        return tokenize_sft_row(row, index, tokenizer, fmt, self._tokenize_max_length, args.truncation_side,
                                train_on_prompt)

    def tokenize_settings(self, args):
        return (self._tokenize_max_length, args.truncation_side, args.completion_only_loss, args.assistant_only_loss)

    def make_collator(self, tokenizer, args):
        return SFTCollator(tokenizer.pad_token_id, padding_free=args.padding_free_for(args.packing),
                           pad_to_multiple_of=args.pad_to_multiple_of)

    # ---- loss --------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        out = labelled_logps(model, labels, **inputs)  # logits only where a label is predicted
        loss = sft_loss(out.logps, num_items_in_batch, dft=self.args.loss_type == "dft")
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; undo it for a token mean
        self.record(mean_token_accuracy=token_accuracy(out.predicted, out.targets))
        mask_or_ids = inputs.get("attention_mask", inputs["input_ids"])
        self.count_tokens(mask_or_ids.sum() if "attention_mask" in inputs else mask_or_ids.numel())
        return (loss, {}) if return_outputs else loss
