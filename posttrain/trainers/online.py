"""What PPO, GRPO, RLOO and ReST are built on: the ``transformers.Trainer`` contract (``TrainingArguments``,
``TrainerState``, callbacks, ``report_to``, ``eval_dataset``, ``push_to_hub``, checkpoints) around a
loop that each method writes out itself.

This class holds services, not hooks: it never calls into a subclass. A method's file reads top to
bottom -- its ``train()`` samples (``sample``), scores (``score``), computes its advantages, runs its
loss over ``update_windows`` and calls ``optimizer_step`` -- and every shared mechanism it calls lives
in one place: rollouts in ``rollout/``, log-probs in ``losses/logprobs.py``, the reference in
``models/reference.py``, rewards in ``rewards/``, the loss math in ``losses/rl.py``, checkpoints in
``checkpoint.py``, held-out evaluation in ``eval/policy.py``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from collections import defaultdict

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import TrainerControl, TrainerState
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, PrinterCallback, ProgressCallback
from transformers.integrations import get_reporting_integration_callbacks
from transformers.trainer_utils import TrainOutput

from .. import checkpoint as ckpt
from .. import distributed
from ..output_dir import output_dir_lock
from ..card import final_metrics, write_model_card
from ..data.prompts import load_prompts
from ..data.tokenize import check_tokenizer
from ..eval.policy import evaluate_policy
from ..hub import push_folder
from ..models.loading import add_adapter, disable_dropout, is_encoder_decoder, load_model, load_tokenizer
from ..models.reference import online_reference, peft_trunk
from ..rewards import RewardSet
from ..rewards.base import RewardError, score_rollout
from ..rollout import PolicySampler, Rollout
from .online_config import OnlineConfig

METHOD_STATE_FILE = "method_state.json"
# The methods checked under DeepSpeed ZeRO-2/3 against one process (tests/test_deepspeed.py); the others refuse it.
DEEPSPEED_METHODS = ("grpo",)


def prefix_sharing_group(wanted: bool | None, model, group_size: int, micro_batch: int) -> int:
    """Rows per shared prompt in the policy and reference forwards (1: no sharing). ``wanted`` None (auto) shares
    wherever it can: groups (GRPO, RLOO), micro-batches of whole groups, a decoder-only model whose attention
    takes a custom mask (sdpa, eager). True where it cannot is an error that says why."""
    attention = getattr(model.config, "_attn_implementation", None) or "sdpa"
    problems = [why for bad, why in [
        (group_size < 2, "prefix_sharing needs groups (GRPO, RLOO)"),
        (group_size >= 2 and micro_batch % group_size, f"prefix_sharing needs micro-batches of whole groups: "
         f"per_device_train_batch_size ({micro_batch}) must be a multiple of num_generations ({group_size})"),
        (is_encoder_decoder(model), "prefix_sharing is for decoder-only models"),
        (attention not in ("sdpa", "eager"), f"prefix_sharing needs a custom attention mask, which {attention!r} "
         "attention does not take; load the model with attn_implementation='sdpa'")] if bad]
    if wanted and problems:
        raise ValueError("; ".join(problems) + ". Or set prefix_sharing=False.")
    return group_size if (wanted or wanted is None) and not problems else 1


def enable_activation_checkpointing(model, kwargs: dict | None = None) -> None:
    """Gradient (activation) checkpointing as ``transformers.Trainer`` turns it on for the offline trainers: every
    decoder layer recomputed in the backward (``every_n_layers`` and ``offload`` taken as transformers takes
    them), non-reentrant unless ``use_reentrant`` is given. transformers also makes the embeddings' output require
    grad, so a LoRA policy (frozen embeddings) gets gradients under reentrant checkpointing too. A value-head
    wrapper passes it on to its trunk. Sampling is unaffected: it runs in eval mode without grad, with its KV cache."""
    kwargs = dict(kwargs or {})
    layout = {k: kwargs.pop(k) for k in ("every_n_layers", "offload") if k in kwargs}
    kwargs.setdefault("use_reentrant", False)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **layout)
    else:  # transformers before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, **layout)


def _holding_output_dir(train):
    """A method's ``train()``, run holding ``output_dir`` (one writer per directory) when it writes checkpoints."""
    @functools.wraps(train)
    def holding(self, *args, **kwargs):
        with self.hold_output_dir(writes=self.args.save_strategy != "no"):
            return train(self, *args, **kwargs)
    return holding


class OnlineTrainer:
    method = "online"  # the name on the model card

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "train" in cls.__dict__:
            cls.train = _holding_output_dir(cls.__dict__["train"])

    def hold_output_dir(self, writes: bool = True):
        """One writer per ``output_dir`` (``output_dir.output_dir_lock``), taken by the main process."""
        return output_dir_lock(self.args.output_dir, overwrite=self.args.overwrite_output_dir,
                               save_total_limit=self.args.save_total_limit,
                               enabled=writes and self.accelerator.is_main_process)

    def __init__(self, model, args: OnlineConfig, *, reward_funcs=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, callbacks=None, peft_config=None, ref_model=None, rollout_source=None,
                 uses_reference: bool = False, group_size: int = 1, max_steps: int | None = None):
        self.args, self.group_size = args, group_size
        deepspeed = distributed.deepspeed_requested()
        if deepspeed and self.method not in DEEPSPEED_METHODS:  # never a quiet fallback to plain DDP
            raise ValueError(f"{type(self).__name__} runs under DDP or FSDP2; DeepSpeed is supported for the offline "
                             "trainers and GRPOTrainer only. Launch it with examples/accelerate/fsdp2.yaml (sharded) "
                             "or ddp.yaml instead of a DeepSpeed config.")
        if args.push_to_hub:
            push_folder(None, args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir)),
                        args.hub_token, check_only=True)  # offline: fail now, not after training
        set_seed(args.seed)
        distributed.start_fsdp_on_cpu(args)
        # Without CUDA, OnlineConfig sets use_cpu: under `accelerate launch` that is what makes the (already
        # created) accelerate state start gloo across the CPU processes; cpu=True keeps this one on the CPU too.
        # Under DeepSpeed, cpu stays False: DeepSpeed needs it, and on CPU processes its own CPU accelerator runs gloo.
        self.accelerator = Accelerator(mixed_precision=distributed.mixed_precision(args),
                                       cpu=not torch.cuda.is_available() and not deepspeed,
                                       **({"deepspeed_plugin": distributed.online_deepspeed_plugin(args)}
                                          if deepspeed else {}))
        self.base_model_name = model if isinstance(model, str) else getattr(model.config, "name_or_path", "")
        self.processing_class = self.tokenizer = processing_class or load_tokenizer(self.base_model_name)
        check_tokenizer(self.tokenizer)
        if isinstance(model, str):
            model = load_model(model, "causal-lm", seed=args.seed, trust_remote_code=args.trust_remote_code,
                               **(args.model_init_kwargs or {}))
        # a quantized base: prepared for k-bit training, and an error without an adapter
        model = add_adapter(model, peft_config, args.seed)
        # with prefix sharing, the rows of a group stay together in micro-batches and share one prompt forward
        self.shared_group = prefix_sharing_group(args.prefix_sharing, model, group_size, args.per_device_train_batch_size)
        if args.disable_dropout:  # after LoRA: its dropout too would make the two log-probs of the ratio differ
            disable_dropout(model)
        if args.gradient_checkpointing:
            enable_activation_checkpointing(model, args.gradient_checkpointing_kwargs)
        self.dataset_name = train_dataset if isinstance(train_dataset, str) else None
        name = type(self).__name__
        self.train_prompts = load_prompts(train_dataset, self.tokenizer, args.max_prompt_length, name) \
            if train_dataset is not None else None
        self.eval_prompts = load_prompts(eval_dataset, self.tokenizer, args.max_prompt_length, f"{name} eval") \
            if eval_dataset is not None else None
        self.rewards = RewardSet(reward_funcs, args.reward_weights, nonfinite=args.nonfinite_rewards) \
            if reward_funcs is not None else None
        for fn in self.rewards.funcs if self.rewards else []:  # reward models run where the policy runs
            if isinstance(getattr(fn, "model", None), torch.nn.Module):
                fn.model.to(self.accelerator.device)
        self.sampler = rollout_source or PolicySampler(self.tokenizer, args.sampling(), backend=args.generation_backend)
        if hasattr(self.sampler, "bind"):  # an environment takes our tokenizer, sampling and prompt limit
            self.sampler.bind(self.tokenizer, args.sampling(), max_prompt_length=args.max_prompt_length)
        self.reference = online_reference(args.reference, model, ref_model, needed=uses_reference)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("The policy has no trainable parameters.")
        optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                      eps=args.adam_epsilon, weight_decay=args.weight_decay)
        if distributed.is_fsdp(self.accelerator) and peft_trunk(model) is not None:  # as transformers.Trainer does
            from transformers.integrations.fsdp import update_fsdp_plugin_peft

            update_fsdp_plugin_peft(peft_trunk(model), self.accelerator)  # FSDP2: one group, adapter and base
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self.reference is not None:
            self.reference.place(self.accelerator)
        max_steps = max_steps or self._max_steps()
        self.lr_scheduler = transformers.get_scheduler(
            args.lr_scheduler_type, self.optimizer, num_warmup_steps=args.get_warmup_steps(max_steps),
            num_training_steps=max_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
        self.state = TrainerState(is_local_process_zero=self.accelerator.is_local_main_process,
                                  is_world_process_zero=self.accelerator.is_main_process)
        self.state.max_steps, self.state.train_batch_size = max_steps, args.per_device_train_batch_size
        self.state.compute_steps(args, max_steps)
        self.control = TrainerControl()
        reporting = [DefaultFlowCallback, *get_reporting_integration_callbacks(args.report_to)]
        self.callback_handler = CallbackHandler(reporting + list(callbacks or []), self.model, self.tokenizer,
                                                self.optimizer, self.lr_scheduler)
        self.callback_handler.add_callback(PrinterCallback if args.disable_tqdm else ProgressCallback)
        self._metrics, self._save_due, self._step_stats = defaultdict(list), False, None
        self._unscored, self._scored_any = 0, False  # generations in a row with no reward at all; any with one
        self.generations = 0  # generations sampled: the index of prompt batches and update shuffles

    # ---- callbacks, as on transformers.Trainer ----------------------------------------------------------
    def add_callback(self, callback):
        self.callback_handler.add_callback(callback)

    def remove_callback(self, callback):
        self.callback_handler.remove_callback(callback)

    # ---- prompts: a pure function of the generation count, so resuming needs no sampler state ---------
    def _prompts_per_generation(self) -> int:
        size = self.args.completions_per_process()
        if size % self.group_size:
            raise ValueError(f"per_device_train_batch_size x steps_per_generation = {size} completions per process "
                             f"is not a multiple of num_generations = {self.group_size}; each process samples whole "
                             "groups.")
        return size // self.group_size

    def _max_steps(self) -> int:
        if self.args.max_steps > 0:
            return self.args.max_steps
        if self.train_prompts is None:
            raise ValueError("Set max_steps, or pass train_dataset so num_train_epochs can be counted in steps.")
        generations = len(self.train_prompts.values) // (self._prompts_per_generation() * self.accelerator.num_processes)
        return max(1, math.ceil(self.args.num_train_epochs * generations)) * self.args.optimizer_steps_per_generation()

    def next_prompts(self) -> list[int]:
        """This process's prompt rows for the next generation, and a step to it (like ``next()`` on a data
        loader: call it once per generation). A seeded permutation per epoch over the prompts, cut into
        global batches (a partial last batch is dropped), each split across processes."""
        n, per_process = len(self.train_prompts.values), self._prompts_per_generation()
        global_batch = per_process * self.accelerator.num_processes
        if n < global_batch:
            raise ValueError(f"{n} prompts cannot fill one generation of {global_batch} prompts (per_device_train_"
                             "batch_size x steps_per_generation / num_generations x processes); add prompts or "
                             "lower per_device_train_batch_size.")
        epoch, k = divmod(self.generations, n // global_batch)
        self.state.epoch = self.generations / (n // global_batch)
        self.generations += 1
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed + epoch)).tolist()
        start = k * global_batch + self.accelerator.process_index * per_process
        return order[start: start + per_process]

    # ---- sample and score ---------------------------------------------------------------------------------
    def sample(self, rows: list[int], repeats: int = 1, with_logprobs: bool | str = True):
        """Sample ``repeats`` consecutive completions for each training prompt row."""
        prompts = self.train_prompts
        rows = [i for i in rows for _ in range(repeats)]
        with self.accelerator.autocast(), distributed.gathered_for_generation(self.model):
            rollout = self.sampler(self.model, [prompts.ids[i] for i in rows], [prompts.values[i] for i in rows],
                                   {c: [v[i] for i in rows] for c, v in prompts.columns.items()}, with_logprobs)
        rollout.truncated_prompts = max(rollout.truncated_prompts, sum(prompts.truncated[i] for i in rows))
        return rollout

    def score(self, rollout: Rollout):
        """Every reward function's score of each episode, called with keywords as in TRL (see
        ``posttrain.rewards``): a ``RewardResult`` (NaN where every function returned None)."""
        return score_rollout(self.rewards, rollout, self.tokenizer, self.state)

    def record_generation(self, rollout: Rollout, scored, group_size: int = 1) -> None:
        """What every method logs of a generation, under TRL's names and meanings: mean reward (and of each
        function), ``reward_std`` (the spread of all the generation's rewards, every process's), for the group
        methods ``frac_reward_zero_std`` (groups whose rewards are all equal: no signal), dropped samples,
        completion length, truncated prompts."""
        rewards = scored.rewards.to(rollout.completion_ids.device)
        everyone = self.accelerator.gather(rewards)
        scored_rewards = everyone[~everyone.isnan()]
        spread = scored_rewards.std() if scored_rewards.numel() > 1 else torch.zeros((), device=rewards.device)
        extra = {}
        if group_size > 1:
            groups = everyone.view(-1, group_size)
            lo, hi = groups.nan_to_num(float("inf")).amin(1), groups.nan_to_num(float("-inf")).amax(1)
            extra["frac_reward_zero_std"] = (~(hi > lo)).float().mean()
        self.check_scored(bool(everyone.isnan().all()), everyone.numel())
        if self.args.nonfinite_rewards == "skip":
            extra["nonfinite_rewards"] = self.accelerator.reduce(
                torch.tensor(float(scored.num_nonfinite), device=self.accelerator.device), reduction="sum")
        self.record(reward=self.gather_mean(rewards), reward_std=spread, **extra,
                    dropped=float(everyone.isnan().sum()),
                    completion_length=self.gather_mean(rollout.completion_attention.sum(1).float()),
                    truncated_prompts=rollout.truncated_prompts,
                    **{f"rewards/{k}": self.gather_mean(v) for k, v in scored.per_function.items()})

    def check_scored(self, unscored: bool, samples: int) -> None:
        """Count generations in a row in which no completion got a reward (the same on every process: from
        gathered rewards); after ``max_unscored_generations`` of them, a RewardError."""
        self._unscored = self._unscored + 1 if unscored else 0
        self._scored_any = self._scored_any or not unscored
        limit = self.args.max_unscored_generations
        if limit and self._unscored >= limit:
            names = ", ".join(self.rewards.names) if self.rewards else "the environment's rewards"
            raise RewardError(f"No completion got a reward in {self._unscored} generations in a row ({samples} "
                              f"samples each): every reward function ({names}) returned None for every sample, so "
                              "there is nothing to learn from. Check the reward functions (None means 'does not "
                              "apply'), or raise max_unscored_generations (0: never stop).")

    # ---- the update: windows of micro-batches, one optimizer step each -------------------------------
    def update_windows(self, n_rows: int, stop_at_max_steps: bool = True):
        """``num_iterations`` passes over a generation's rows in a seeded shuffled order, cut into optimizer
        steps of ``gradient_accumulation_steps`` micro-batches of ``per_device_train_batch_size`` rows.
        Yields ``(micro_batches, window_rows)`` per optimizer step (index tensors), until max_steps."""
        args = self.args
        generator = torch.Generator().manual_seed(args.seed * 100003 + self.generations)
        micro_size = math.ceil(n_rows / args.steps_per_generation)
        for _ in range(args.num_iterations):
            if self.shared_group > 1:  # whole groups, in a shuffled order
                groups = torch.randperm(n_rows // self.shared_group, generator=generator)
                order = (groups[:, None] * self.shared_group + torch.arange(self.shared_group)).reshape(-1)
            else:
                order = torch.randperm(n_rows, generator=generator)
            micro = list(order.split(micro_size))
            for s in range(0, len(micro), args.gradient_accumulation_steps):
                if stop_at_max_steps and (self.state.global_step >= self.state.max_steps
                                          or self.control.should_training_stop):  # e.g. set by a callback
                    return
                window = micro[s: s + args.gradient_accumulation_steps]
                self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
                yield window, torch.cat(window)

    def accumulating(self, is_last: bool):
        """No gradient all-reduce until the window's last micro-batch (DDP). Under DeepSpeed, the window's last
        micro-batch is the accumulation boundary: its ``accelerator.backward`` runs DeepSpeed's reduction,
        clipping (``gradient_clipping``) and optimizer step; ``apply_gradients`` then only reads the norm."""
        if distributed.is_deepspeed(self.accelerator):
            return distributed.deepspeed_boundary(self.accelerator, is_last)
        return contextlib.nullcontext() if is_last else self.accelerator.no_sync(self.model)

    def record(self, **values) -> None:
        """Metrics averaged over the logging window (NaN values skipped)."""
        for key, value in values.items():
            value = float(value.detach()) if torch.is_tensor(value) else float(value)
            self._metrics[key].append(value)
            if self._step_stats is not None:  # PPOTrainer.step: all it recorded, whatever a log drained meanwhile
                self._step_stats[key].append(value)

    def gather_mean(self, values: torch.Tensor) -> float:
        """Mean over every process's values (NaNs, i.e. dropped samples, excluded)."""
        values = self.accelerator.gather(values.detach().float().to(self.accelerator.device).reshape(-1))
        values = values[~values.isnan()]
        return values.mean().item() if values.numel() else float("nan")

    def gather_token_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean over every process's masked tokens (e.g. the per-token KL)."""
        totals = torch.stack([(values * mask).sum(), mask.sum()]).float().to(self.accelerator.device)
        totals = self.accelerator.reduce(totals, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1)).item()

    def optimizer_step(self) -> None:
        """One optimizer step, then the Trainer's step-end flow (``step_end``)."""
        self.apply_gradients()
        self.step_end()

    def apply_gradients(self, schedule: bool = True) -> None:
        """Clip, step the optimizer (and the learning-rate schedule), zero the gradients."""
        if self.args.max_grad_norm:
            self.record(grad_norm=self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm))
        self.control = self.callback_handler.on_pre_optimizer_step(self.args, self.state, self.control)
        self.optimizer.step()
        self.control = self.callback_handler.on_optimizer_step(self.args, self.state, self.control)
        if schedule:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step_end(self) -> None:
        """``global_step + 1``, then as on transformers.Trainer: ``on_step_end`` callbacks, and logging and
        evaluation when due; a due checkpoint is written at the end of the generation (``checkpoint_due``)."""
        self.state.global_step += 1
        self.control = self.callback_handler.on_step_end(self.args, self.state, self.control)
        if self.control.should_log:
            self.control.should_log = False
            if self._metrics:
                self.log({})
        if self.control.should_evaluate:
            self.control.should_evaluate = False
            if self.eval_prompts is not None:
                self.evaluate()
        if self.control.should_save:
            self.control.should_save, self._save_due = False, True

    def drain_metrics(self) -> dict:
        """The recorded metrics averaged over the window (and over processes), then forgotten."""
        out = {}
        for key, values in self._metrics.items():
            values = [v for v in values if not math.isnan(v)]
            mean = torch.tensor(sum(values) / len(values) if values else float("nan"), device=self.accelerator.device)
            out[key] = round(self.accelerator.reduce(mean, reduction="mean").item(), 6)
        self._metrics.clear()
        return out

    def log(self, logs: dict) -> None:
        """Add the recorded metrics to ``logs``, append to ``state.log_history`` and call ``on_log``
        (TensorBoard and the other ``report_to`` integrations write from there)."""
        logs.update(self.drain_metrics())
        if not any(k.startswith("eval_") for k in logs):
            logs["learning_rate"] = self.lr_scheduler.get_last_lr()[0]
        logs["epoch"] = round(self.state.epoch or 0.0, 4)
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    # ---- the run --------------------------------------------------------------------------------------
    def begin_training(self, resume_from_checkpoint=None) -> dict:
        """Resume from a checkpoint (returns the method's saved state, {} when starting fresh) and call
        ``on_train_begin``."""
        if self.train_prompts is None:
            raise ValueError(f"{type(self).__name__}.train() needs train_dataset (rows with a 'prompt' column).")
        path = ckpt.resolve_resume(resume_from_checkpoint or self.args.resume_from_checkpoint, self.args.output_dir)
        if path:
            method_state = self.load_checkpoint(path)  # restores the RNG state too
            if self.training_finished():
                transformers.utils.logging.get_logger(__name__).warning(
                    "%s is at step %d, the end of this run: nothing to train (raise max_steps to train on).", path,
                    self.state.global_step)
                self.finished_at_start = True
        else:  # the RNG state a transformers Trainer starts from: seeded, then one draw for the DataLoader's
            set_seed(self.args.seed)  # base seed -- so the same seed samples the same completions as TRL
            torch.empty((), dtype=torch.int64).random_()
            method_state = {}
        self.model.train()
        self.control = self.callback_handler.on_train_begin(self.args, self.state, self.control)
        return method_state

    def training_finished(self) -> bool:
        return self.state.global_step >= self.state.max_steps or self.control.should_training_stop

    def checkpoint_due(self) -> bool:
        """Whether a checkpoint fell due during this generation. Checkpoints are written between generations
        only, so that resuming never needs a half-used generation (exactly as not stopping)."""
        due, self._save_due = self._save_due, False
        return due

    def end_training(self) -> TrainOutput:
        if self._unscored and not self._scored_any:  # a run shorter than max_unscored_generations, never scored
            transformers.utils.logging.get_logger(__name__).warning(
                "No completion got a reward in this run (%d generations): every reward function returned None for "
                "every sample, so nothing was learned from rewards. Check the reward functions.", self._unscored)
        if self._metrics:  # the last, partial logging window (a run shorter than logging_steps logs too)
            self.log({})
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        metrics = final_metrics(self.state.log_history)
        return TrainOutput(self.state.global_step, metrics.get("loss", float("nan")), metrics)

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, metric_key_prefix: str = "eval") -> dict:
        """Mean reward, KL to the reference and completion length on the evaluation prompts (fresh samples,
        seeded, RNG of the run untouched), logged with the ``eval_`` prefix."""
        prompts = self.eval_prompts if eval_dataset is None else \
            load_prompts(eval_dataset, self.tokenizer, self.args.max_prompt_length, f"{type(self).__name__} eval")
        if prompts is None:
            raise ValueError("evaluate() needs eval_dataset (here or when the trainer was built).")
        with distributed.gathered_for_generation(self.model):  # the policy's weights gathered once
            result = evaluate_policy(
                self.model, self.tokenizer, prompts.values, self.rewards, reference=self.reference, columns=prompts.columns,
                sampler=self.sampler, seed=self.args.seed + 1, batch_size=self.args.per_device_eval_batch_size,
                prompt_ids=prompts.ids, trainer_state=self.state)
        metrics = {f"{metric_key_prefix}_{k}": self.gather_mean(torch.tensor(v)) for k, v in result.items()
                   if k != "samples"}
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    # ---- checkpoints and the final model ---------------------------------------------------------------
    def save_checkpoint(self, method_state: dict | None = None, files: list[str] = ()) -> str:
        """``checkpoint-<step>``: trainable weights, optimizer, scheduler, trainer state, the method's own
        state (e.g. PPO's KL controller) and files (ReST's grown data), RNG per process; atomic."""
        name = ckpt.checkpoint_name(self.state.global_step)
        with ckpt.atomic_checkpoint(self.accelerator, self.args.output_dir, name, self.args.save_total_limit) as staging:
            ckpt.save_training_state(self.accelerator, self.model, self.optimizer, staging,
                                     sharded=distributed.sharded_checkpoints(self.accelerator))
            if self.accelerator.is_main_process:
                torch.save(self.lr_scheduler.state_dict(), os.path.join(staging, "scheduler.pt"))
                self.state.save_to_json(os.path.join(staging, transformers.trainer.TRAINER_STATE_NAME))
                with open(os.path.join(staging, METHOD_STATE_FILE), "w", encoding="utf-8") as fh:
                    json.dump({"generations": self.generations, "method": method_state or {}}, fh)
                for file in files:
                    with open(file, "rb") as src, open(os.path.join(staging, os.path.basename(file)), "wb") as dst:
                        dst.write(src.read())
            ckpt.save_rng(staging, self.accelerator.process_index)
        self.control = self.callback_handler.on_save(self.args, self.state, self.control)
        return os.path.join(self.args.output_dir, name)

    def load_checkpoint(self, path: str) -> dict:
        state_file = os.path.join(path, transformers.trainer.TRAINER_STATE_NAME)
        if not os.path.exists(os.path.join(path, METHOD_STATE_FILE)):
            raise FileNotFoundError(f"{path} is not a checkpoint of an online posttrain trainer (no {METHOD_STATE_FILE}).")
        ckpt.load_training_state(self.model, self.optimizer, path)
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=True))
        saved = TrainerState.load_from_json(state_file)
        self.state.global_step, self.state.log_history, self.state.epoch = saved.global_step, saved.log_history, saved.epoch
        ckpt.load_rng(path, self.accelerator.process_index)
        with open(os.path.join(path, METHOD_STATE_FILE), encoding="utf-8") as fh:
            saved = json.load(fh)
        self.generations = saved["generations"]
        return saved["method"]

    def save_model(self, output_dir: str | None = None) -> None:
        """The trained policy (with its value head, or only its adapter for LoRA), tokenizer and model card, as
        a normal ``from_pretrained`` directory (gathered from the shards under FSDP), written atomically
        (``checkpoint.atomic_save``); pushed to the hub too when ``push_to_hub`` is set."""
        output_dir = output_dir or self.args.output_dir
        gathered = distributed.full_state_dict(self.accelerator, self.model) \
            if distributed.is_fsdp(self.accelerator) or distributed.is_deepspeed(self.accelerator) else None
        with self.hold_output_dir(writes=os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir)), \
                ckpt.atomic_save(self.accelerator, output_dir) as staging:
            if self.accelerator.is_main_process:
                model = self.accelerator.unwrap_model(self.model)
                model.save_pretrained(staging, **({"state_dict": gathered} if gathered is not None else {}))
                self.tokenizer.save_pretrained(staging)
                write_model_card(staging, base_model=self.base_model_name, method=self.method, dataset=self.dataset_name,
                                 args=self.args, metrics=final_metrics(self.state.log_history),
                                 adapter=peft_trunk(model) is not None)
        if self.args.push_to_hub:
            self.push_to_hub()

    def push_to_hub(self, commit_message: str = "End of training") -> str:
        """Upload ``output_dir`` (the saved model and card) to ``hub_model_id``; a clear error when offline."""
        repo = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        if self.accelerator.is_main_process:
            return push_folder(self.args.output_dir, repo, self.args.hub_token, commit_message=commit_message)
        return repo
