"""What every posttrain trainer shares on top of ``transformers.Trainer``: loading a model given by
name (with an optional LoRA adapter), turning rows into a tokenized dataset, metrics averaged over
each logging window, atomic checkpoints and a model card at every save."""

from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict

import torch
import transformers

from .. import __version__
from ..card import final_metrics, write_model_card
from .. import distributed
from ..checkpoint import atomic_checkpoint, atomic_save, checkpoint_name, finished_step
from ..output_dir import output_dir_lock
from ..data.formats import load_rows, validate
from ..data.tokenize import TOKENIZATION_VERSION, check_tokenizer
from ..models.loading import add_adapter, disable_dropout, load_model, load_tokenizer


class PostTrainer(transformers.Trainer):
    """Subclasses set ``method``, ``task`` and ``formats``, and implement ``tokenize_row``,
    ``make_collator`` and ``compute_loss``."""

    method = "posttrain"
    task = "causal-lm"
    formats: tuple[str, ...] = ()

    def __init__(self, model, args, train_dataset=None, eval_dataset=None, processing_class=None,
                 peft_config=None, data_collator=None, callbacks=None, **kwargs):
        distributed.start_fsdp_on_cpu(args)  # before transformers builds the Accelerator
        self.base_model_name = model if isinstance(model, str) else model.config.name_or_path
        if isinstance(model, str):
            model = load_model(model, self.task, seed=args.seed, trust_remote_code=args.trust_remote_code,
                               **(args.model_init_kwargs or {}))
        if args.disable_dropout:  # before LoRA is added, so an adapter keeps the lora_dropout it asks for
            disable_dropout(model)
        if processing_class is None:
            processing_class = load_tokenizer(self.base_model_name)
        # a quantized base: prepared for k-bit training, and an error without an adapter
        model = add_adapter(model, peft_config, args.seed)
        self.dataset_name = train_dataset if isinstance(train_dataset, str) else None
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._tokens_since_log, self._last_log_time = 0, None
        train_dataset = self._prepare(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepare(v, processing_class, args, k) for k, v in eval_dataset.items()}
        else:
            eval_dataset = self._prepare(eval_dataset, processing_class, args, "eval")
        super().__init__(
            model=model, args=args, data_collator=data_collator or self.make_collator(processing_class, args),
            train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
            callbacks=callbacks, **kwargs)

    # ---- data -------------------------------------------------------------------------------------
    def _prepare(self, rows, tokenizer, args, split: str):
        if rows is None:
            return None
        dataset, fmt = validate(load_rows(rows), self.formats, args.extra_columns,
                                what=f"{type(self).__name__}")
        check_tokenizer(tokenizer, needs_chat_template=fmt.conversational)
        settings = repr((__version__, TOKENIZATION_VERSION, self.tokenize_settings(args), tokenizer.name_or_path,
                         len(tokenizer), getattr(tokenizer, "chat_template", None)))
        fingerprint = hashlib.sha256(f"{dataset._fingerprint}{settings}".encode()).hexdigest()[:16]
        return dataset.map(
            lambda row, i: self.tokenize_row(row, i, tokenizer, fmt, args), with_indices=True,
            remove_columns=dataset.column_names, new_fingerprint=fingerprint, num_proc=args.dataset_num_proc,
            desc=f"Tokenizing {split} rows")

    def tokenize_settings(self, args) -> tuple:
        """Config values that change tokenization (part of the cache fingerprint)."""
        return (args.max_length,)

    # ---- metrics ----------------------------------------------------------------------------------
    def record(self, **values: float) -> None:
        mode = "train" if self.model.training else "eval"
        for key, value in values.items():  # kept as tensors: no device sync until the log step
            self._metrics[mode][key].append(value.detach() if torch.is_tensor(value) else value)

    def count_tokens(self, n) -> None:
        if self.model.training:  # kept as a tensor: no device sync until the log step
            self._tokens_since_log = self._tokens_since_log + (n.detach() if torch.is_tensor(n) else n)

    def log(self, logs: dict, start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        sums = self._metrics[mode]
        for key, values in sums.items():
            mean = torch.tensor([float(v) for v in values], device=self.args.device).mean()
            mean = self.accelerator.reduce(mean, reduction="mean").item()
            logs[f"eval_{key}" if mode == "eval" else key] = round(mean, 6)
        if mode == "train" and "loss" in logs:
            now = time.perf_counter()
            if self._last_log_time is not None:
                tokens = torch.as_tensor(self._tokens_since_log, device=self.args.device)
                tokens = self.accelerator.reduce(tokens, reduction="sum").item()
                logs["tokens_per_second"] = round(tokens / max(now - self._last_log_time, 1e-9), 1)
            self._tokens_since_log, self._last_log_time = 0, now
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``transformers.Trainer.train`` holding ``output_dir`` (``output_dir.output_dir_lock``) when it writes
        checkpoints. Resuming from a checkpoint that already reached the end of the run does no work: it says so,
        loads the checkpoint's weights and state, and returns (transformers would train one more step)."""
        with self.hold_output_dir(writes=self.args.save_strategy != "no"):
            path = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
            if resume_from_checkpoint is True and os.path.isdir(self.args.output_dir):
                path = transformers.trainer_utils.get_last_checkpoint(self.args.output_dir)
            done = finished_step(path, self.args.max_steps, self.args.num_train_epochs)
            if done is not None and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
                transformers.utils.logging.get_logger(__name__).warning(
                    "%s is at step %d, the end of this run: nothing to train (raise max_steps to train on).", path, done)
                self._load_from_checkpoint(path)
                self.state = transformers.TrainerState.load_from_json(
                    os.path.join(path, transformers.trainer.TRAINER_STATE_NAME))
                self.finished_at_start = True
                metrics = self.final_metrics()
                return transformers.trainer_utils.TrainOutput(self.state.global_step, metrics.get("train_loss", metrics.get("loss", 0.0)),
                                                              metrics)
            self._last_log_time, self._tokens_since_log = time.perf_counter(), 0
            return super().train(resume_from_checkpoint, *args, **kwargs)

    def hold_output_dir(self, writes: bool = True):
        """One writer per ``output_dir`` (``output_dir.output_dir_lock``), taken by the main process."""
        return output_dir_lock(self.args.output_dir, overwrite=self.args.overwrite_output_dir,
                               save_total_limit=self.args.save_total_limit,
                               enabled=writes and self.is_world_process_zero())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation runs the training loss (and records the same metrics, under ``eval_``)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---- saving -----------------------------------------------------------------------------------
    def _get_output_dir(self, trial) -> str:
        return getattr(self, "_staging_run_dir", None) or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Let transformers write the whole checkpoint into a staging directory, then rename it into
        place (``posttrain.checkpoint``): a run killed mid-save leaves no ``checkpoint-<n>`` that resume
        would pick up."""
        run_dir = super()._get_output_dir(trial)
        name = checkpoint_name(self.state.global_step)
        best = lambda: self.state.best_model_checkpoint  # noqa: E731  (set while transformers saves)
        with atomic_checkpoint(self.accelerator, run_dir, name, self.args.save_total_limit, best) as staging:
            self._staging_run_dir = os.path.dirname(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_run_dir = None
        if self.state.best_model_checkpoint == staging:
            self.state.best_model_checkpoint = os.path.join(run_dir, name)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The model, tokenizer and card. A checkpoint's model (``_internal_call``, already staged) is saved
        as the accelerate config says, sharded under FSDP's SHARDED_STATE_DICT; the final model is always
        a normal full ``from_pretrained`` directory, written atomically (``checkpoint.atomic_save``)."""
        output_dir = output_dir or self.args.output_dir
        if _internal_call:
            super().save_model(output_dir, _internal_call=True)
            self._write_card(output_dir)
            return
        with self.hold_output_dir(writes=os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir)), \
                atomic_save(self.accelerator, output_dir) as staging:
            if distributed.is_fsdp(self.accelerator):  # gathered from every process's shards
                self._save(staging, state_dict=distributed.full_state_dict(self.accelerator, self.model))
            else:
                super().save_model(staging, _internal_call=True)
            self._write_card(staging)
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _write_card(self, directory: str) -> None:
        if self.args.should_save:
            write_model_card(directory, base_model=self.base_model_name, method=self.method,
                             dataset=self.dataset_name, args=self.args, metrics=self.final_metrics(),
                             adapter=hasattr(self.model, "peft_config"))

    def final_metrics(self) -> dict:
        """The most recent value of each logged metric."""
        return final_metrics(self.state.log_history)

