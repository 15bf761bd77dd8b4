"""Supervised fine-tuning.

Recipe: rows -> validate -> segments (prompt / completion, or non-assistant / assistant turns) ->
token ids with a loss mask -> padded or padding-free packed batches -> per-token log-probs ->
NLL over the trainable tokens, normalised by the trainable tokens of the whole optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import PostTrainConfig
from ..data.collate import SFTCollator
from ..data.tokenize import tokenize_sft_row
from ..losses import labelled_logps, sft_loss, token_accuracy
from .base import PostTrainer


@dataclass
class SFTConfig(PostTrainConfig):
    """Supervised fine-tuning settings (on top of transformers.TrainingArguments)."""

    packing: bool = field(default=False, metadata={
        "help": "Padding-free packing: concatenate each batch into one row with position_ids restarting "
                "per example (no pad tokens computed, no attention across examples)."})
    truncation_side: str = field(default="right", metadata={
        "help": "Which end of a too-long example is cut: 'right' keeps the start, 'left' keeps the end."})
    completion_only_loss: bool = field(default=True, metadata={
        "help": "For prompt/completion data, train only on completion tokens (False: on the prompt too)."})
    assistant_only_loss: bool = field(default=True, metadata={
        "help": "For conversational data, train only on assistant turns (False: on every token)."})
    pad_to_multiple_of: int | None = field(default=None, metadata={
        "help": "Pad each (unpacked) batch to a multiple of this length (e.g. 8 for tensor cores)."})


class SFTTrainer(PostTrainer):
    """Fine-tune a causal LM on language-modeling, prompt/completion or conversational rows.

    ``model`` is a model or a name (``tiny:llama``, hub name, directory); ``train_dataset`` a
    ``datasets.Dataset``, a list of dicts or a file path; ``peft_config`` trains a LoRA adapter.
    """

    method = "sft"
    task = "causal-lm"
    formats = ("language_modeling", "prompt_completion", "conversational")
    # compute_loss divides by the trainable tokens of the whole step, so the Trainer must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(self, model, args: SFTConfig | None = None, **kwargs):
        args = args or SFTConfig()
        super().__init__(model, args, **kwargs)
        if getattr(self.model.config, "is_encoder_decoder", False):
            raise ValueError(f"SFTTrainer trains decoder-only (causal) language models; {self.base_model_name!r} is "
                             "encoder-decoder. Use a causal model such as tiny:llama, or transformers' "
                             "Seq2SeqTrainer for T5-style models.")
        self.model_accepts_loss_kwargs = True  # makes the Trainer count num_items_in_batch for us

    def tokenize_row(self, row, index, tokenizer, fmt, args):
        train_on_prompt = (fmt.name == "prompt_completion" and not args.completion_only_loss) or (
            fmt.name == "conversational" and not args.assistant_only_loss)
        return tokenize_sft_row(row, index, tokenizer, fmt, args.max_length, args.truncation_side, train_on_prompt)

    def tokenize_settings(self, args):
        return (args.max_length, args.truncation_side, args.completion_only_loss, args.assistant_only_loss)

    def make_collator(self, tokenizer, args):
        return SFTCollator(tokenizer.pad_token_id, packing=args.packing, pad_to_multiple_of=args.pad_to_multiple_of)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        out = labelled_logps(model, labels, **inputs)  # logits only where a label is predicted
        loss = sft_loss(out.logps, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; undo it for a token mean
        self.record(mean_token_accuracy=token_accuracy(out.logits, out.targets))
        mask_or_ids = inputs.get("attention_mask", inputs["input_ids"])
        self.count_tokens(mask_or_ids.sum() if "attention_mask" in inputs else mask_or_ids.numel())
        return (loss, {}) if return_outputs else loss
