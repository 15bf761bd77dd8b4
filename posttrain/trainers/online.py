"""What PPO, GRPO and RLOO share: prompts in, a loop of sample -> score -> update, checkpoints out.

A subclass implements ``update(rollout, scores) -> metrics`` (the method's own math) and may wrap the
policy (PPO adds a value head). Everything else lives here once: prompt tokenization, the seeded
prompt order (a pure function of the step, so resuming needs no sampler state), the rollout source,
reward scoring with dropped samples, the reference model, the optimizer loop over mini-batches with
gradient accumulation, logging, evaluation, and atomic checkpoints that resume exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..card import write_model_card
from ..data.formats import DataFormatError, load_rows, validate
from ..data.tokenize import check_tokenizer, tokenize_prompt
from ..models.loading import load_model, load_tokenizer
from ..models.reference import frozen_copy, is_peft_model
from ..rewards import RewardSet
from ..rollout import PolicySampler, Rollout, forward_completion
from .online_config import OnlineConfig

STAGING_DIR = ".staging"
STATE_FILE = "trainer_state.json"


def _peft_trunk(model):
    """The model whose adapter can be switched off (a value-head wrapper's trunk, or the model)."""
    trunk = getattr(model, "pretrained_model", model)
    return trunk if is_peft_model(trunk) else None


class OnlineTrainer:
    method = "online"
    needs_reference = True

    def __init__(self, model, args: OnlineConfig, train_dataset=None, reward_funcs=None, reward_weights=None,
                 processing_class=None, peft_config=None, ref_model=None, rollout_source=None, callbacks=None):
        self.args, self.callbacks = args, list(callbacks or [])
        set_seed(args.seed)
        self.base_model_name = model if isinstance(model, str) else getattr(model.config, "name_or_path", "")
        # cpu=True without CUDA: under `accelerate launch` that is what starts gloo across CPU processes.
        self.accelerator = Accelerator(mixed_precision="bf16" if args.bf16 else "no", cpu=not torch.cuda.is_available())
        self.tokenizer = processing_class or load_tokenizer(self.base_model_name)
        check_tokenizer(self.tokenizer)
        policy = self.build_policy(model, peft_config)
        if args.disable_dropout:
            for module in policy.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        self.dataset_name = train_dataset if isinstance(train_dataset, str) else None
        self.prompts, self.prompt_ids, self.columns = self._load_prompts(train_dataset) if train_dataset is not None \
            else ([], [], {})
        self.rewards = self._reward_set(reward_funcs, reward_weights)
        self.sampler = rollout_source or PolicySampler(self.tokenizer, args.sampling())
        if hasattr(self.sampler, "bind"):  # an environment (e.g. TextEnvironment) takes our tokenizer and sampling
            self.sampler.bind(self.tokenizer, args.sampling())
        self.reference = self._reference(policy, ref_model)
        trainable = [p for p in policy.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("The policy has no trainable parameters.")
        optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                      eps=args.adam_epsilon, weight_decay=args.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(policy, optimizer)
        if self.reference is not None and self.reference != "adapter":
            self.reference = self.reference.to(self.accelerator.device)
        self.lr_scheduler = transformers.get_scheduler(
            args.lr_scheduler_type, self.optimizer, num_warmup_steps=args.warmup_steps,
            num_training_steps=args.max_steps * self.optimizer_steps_per_step())
        self.step_count, self.log_history = 0, []

    # ---- setup ------------------------------------------------------------------------------------
    def build_policy(self, model, peft_config):
        """The model to train; PPO wraps it with a value head."""
        if isinstance(model, str):
            model = load_model(model, "causal-lm", seed=self.args.seed)
        if peft_config is not None:
            import peft

            model = peft.get_peft_model(model, peft_config)
        return model

    def uses_reference(self) -> bool:
        return self.needs_reference

    def _reference(self, policy, ref_model):
        if not self.uses_reference() or self.args.reference == "none":
            return None
        if ref_model is not None:
            return ref_model.eval().requires_grad_(False)
        lora = _peft_trunk(policy) is not None
        if self.args.reference == "adapter" or (self.args.reference == "auto" and lora):
            if not lora:
                raise ValueError("reference='adapter' needs a LoRA policy: pass peft_config (CLI: --use_lora true).")
            return "adapter"
        if self.args.reference not in ("copy", "auto"):
            raise ValueError(f"Unknown reference {self.args.reference!r}; use copy, adapter, none or auto.")
        return frozen_copy(getattr(policy, "pretrained_model", policy))

    def _load_prompts(self, rows):
        dataset = load_rows(rows)
        if "prompt" not in dataset.column_names:
            raise DataFormatError(f"{type(self).__name__} needs a 'prompt' column (text or chat messages); the "
                                  f"dataset has {dataset.column_names}. Other columns are passed to the rewards.")
        validate(dataset.select_columns(["prompt"]), ("prompt_only",), what=type(self).__name__)
        prompts = dataset["prompt"]
        ids = [tokenize_prompt(self.tokenizer, p, self.args.max_prompt_length) for p in prompts]
        columns = {c: dataset[c] for c in dataset.column_names if c != "prompt"}
        return prompts, ids, columns

    def _reward_set(self, reward_funcs, weights):
        """Reward functions by object or spec (see ``posttrain.rewards.resolve_reward``); reward models
        move to the policy's device."""
        if reward_funcs is None:
            return None
        rewards = RewardSet(reward_funcs, weights)
        for fn in rewards.funcs:
            if isinstance(getattr(fn, "model", None), torch.nn.Module):
                fn.model.to(self.accelerator.device)
        return rewards

    def optimizer_steps_per_step(self) -> int:
        mini = self.args.mini_batch_size or self.args.episodes_per_step()
        return self.args.num_epochs * math.ceil(self.args.episodes_per_step() / mini)

    # ---- data: a pure function of the step --------------------------------------------------------
    def batch_indices(self, step: int) -> list[int]:
        """This process's prompt rows for ``step``: a seeded permutation per epoch over the prompts, cut
        into global batches (a partial last batch is dropped), each split across processes."""
        n, per_process = len(self.prompts), self.args.per_device_batch_size
        global_batch = per_process * self.accelerator.num_processes
        if n < global_batch:
            raise ValueError(f"{n} prompts cannot fill one batch of {global_batch} (per_device_batch_size x "
                             "processes); add prompts or lower per_device_batch_size.")
        per_epoch = n // global_batch
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed + epoch)).tolist()
        start = k * global_batch + self.accelerator.process_index * per_process
        return order[start: start + per_process]

    def needs_sampling_logprobs(self) -> bool:
        """Whether the update reads the policy's log-probs at sampling time (a forward pass to skip if not)."""
        return True

    def sample(self, indices: list[int], repeats: int = 1, with_logprobs: bool | None = None) -> Rollout:
        """Sample one completion per prompt (``repeats`` consecutive ones for group methods)."""
        rows = [i for i in indices for _ in range(repeats)]
        with_logprobs = self.needs_sampling_logprobs() if with_logprobs is None else with_logprobs
        with self.accelerator.autocast():
            return self.sampler(self.model, [self.prompt_ids[i] for i in rows], [self.prompts[i] for i in rows],
                                {c: [v[i] for i in rows] for c, v in self.columns.items()}, with_logprobs)

    def score(self, rollout: Rollout):
        """Rewards for each episode (NaN where every reward function returned None)."""
        if self.rewards is None:
            raise ValueError(f"{type(self).__name__}.train() needs reward_funcs (CLI: --reward).")
        texts = self.tokenizer.batch_decode(rollout.completion_lists(), skip_special_tokens=True)
        result = self.rewards(rollout.prompts, texts, completion_ids=rollout.completion_lists(), **rollout.columns)
        return result

    @torch.no_grad()
    def reference_logps(self, rollout: Rollout, temperature: float) -> torch.Tensor:
        with self.accelerator.autocast():
            if self.reference == "adapter":
                trunk = _peft_trunk(self.accelerator.unwrap_model(self.model))
                with trunk.disable_adapter():
                    return forward_completion(trunk, rollout, temperature)[0]
            return forward_completion(self.reference, rollout, temperature)[0]

    # ---- the optimisation loop shared by every method ---------------------------------------------
    def minibatches(self, size: int, generator: torch.Generator) -> list[torch.Tensor]:
        mini = self.args.mini_batch_size or size
        order = torch.randperm(size, generator=generator)
        return [order[s: s + mini] for s in range(0, size, mini)]

    def optimize(self, batch: Rollout, loss_fn, extras: dict) -> dict:
        """``num_epochs`` passes of shuffled mini-batches, one optimizer step each.

        ``loss_fn(mb, extras_mb, weight)`` returns ``(loss, stats)`` for a micro-batch (``extras`` are
        per-episode tensors such as advantages, indexed like the batch); ``weight`` is the micro-batch's
        share of its mini-batch. ``early_stop(stats of the epoch)`` may end the epochs early.
        """
        generator = torch.Generator().manual_seed(self.args.seed * 100003 + self.step_count)
        all_stats, epochs = [], 0
        for epochs in range(1, self.args.num_epochs + 1):
            epoch_stats = []
            for mb_index in self.minibatches(len(batch), generator):
                micro = mb_index.chunk(self.args.gradient_accumulation_steps)
                for j, idx in enumerate(micro):
                    sync = contextlib.nullcontext() if j == len(micro) - 1 else self.accelerator.no_sync(self.model)
                    with sync, self.accelerator.autocast():
                        loss, stats = loss_fn(batch.select(idx), {k: v[idx.to(v.device)] for k, v in extras.items()},
                                              self.micro_weight(batch, idx, mb_index))
                        self.accelerator.backward(loss)
                    epoch_stats.append({k: float(v.detach() if torch.is_tensor(v) else v) for k, v in stats.items()})
                if self.args.max_grad_norm is not None:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            all_stats += epoch_stats
            if self.early_stop(epoch_stats):
                break
        out = {k: sum(s[k] for s in all_stats) / len(all_stats) for k in all_stats[0]} if all_stats else {}
        out["epochs"] = epochs
        return out

    def loss_aggregation(self) -> str:
        """How the method's loss reduces tokens (see ``losses.rl.aggregate``); PPO and ReST: token means."""
        return "token"

    def micro_weight(self, batch: Rollout, idx, mb_index) -> float:
        """The micro-batch's share of its mini-batch, so accumulation equals one big batch: its share of
        the loss tokens for token means, of the rows otherwise."""
        if self.loss_aggregation() != "token" or len(idx) == len(mb_index):
            return len(idx) / len(mb_index)
        mask = batch.completion_mask
        return float(mask[idx].sum() / mask[mb_index].sum().clamp(min=1))

    def early_stop(self, epoch_stats: list[dict]) -> bool:
        return False

    # ---- the loop ---------------------------------------------------------------------------------
    def training_step(self, indices: list[int]) -> dict:
        raise NotImplementedError

    def train(self, resume_from_checkpoint: str | None = None):
        resume = resume_from_checkpoint or self.args.resume_from_checkpoint
        if resume:
            self.load_checkpoint(resume)
        self.model.train()
        bar = tqdm(total=self.args.max_steps, initial=self.step_count, desc=type(self).__name__,
                   disable=self.args.disable_tqdm or not self.accelerator.is_main_process)
        while self.step_count < self.args.max_steps:
            start = time.perf_counter()
            metrics = self.training_step(self.batch_indices(self.step_count))
            self.step_count += 1
            metrics["step_seconds"] = time.perf_counter() - start
            metrics["learning_rate"] = self.lr_scheduler.get_last_lr()[0]
            if self.step_count % self.args.logging_steps == 0 or self.step_count == self.args.max_steps:
                self.log(metrics)
                bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("reward", "kl") if k in metrics})
            bar.update(1)
            if self.args.save_steps and self.step_count % self.args.save_steps == 0:
                self.save_checkpoint()
            for callback in self.callbacks:
                callback(self)
        bar.close()
        return self.log_history

    def log(self, metrics: dict) -> None:
        entry = {"step": self.step_count,
                 **{k: v if isinstance(v, int) else round(float(v), 6) for k, v in metrics.items()}}
        self.log_history.append(entry)
        if self.accelerator.is_main_process:
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(os.path.join(self.args.output_dir, "log.jsonl"), "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    def gather_mean(self, values: torch.Tensor) -> float:
        """Mean over every process's values (NaNs, i.e. dropped samples, excluded)."""
        values = self.accelerator.gather(values.detach().float().to(self.accelerator.device).reshape(-1))
        values = values[~values.isnan()]
        return values.mean().item() if values.numel() else float("nan")

    @torch.no_grad()
    def evaluate(self, prompts, temperature: float | None = None) -> dict:
        """Mean reward, KL to the reference (summed over tokens) and length on ``prompts``; RNG untouched."""
        saved = (self.prompts, self.prompt_ids, self.columns)
        self.prompts, self.prompt_ids, self.columns = self._load_prompts(prompts)
        sampler_temp = self.sampler.sampling.temperature
        if temperature is not None:
            self.sampler.sampling.temperature = temperature
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.args.seed + 1)
                out = {"reward": [], "kl": [], "length": []}
                for s in range(0, len(self.prompts), self.args.per_device_batch_size):
                    rows = list(range(s, min(s + self.args.per_device_batch_size, len(self.prompts))))
                    rollout = self.sample(rows, with_logprobs=True)
                    out["reward"].append(self.score(rollout).rewards)
                    out["length"].append(rollout.completion_mask.sum(1).float())
                    if self.reference is not None:
                        t = self.sampler.sampling.temperature or 1.0
                        kl = (rollout.logprobs - self.reference_logps(rollout, t)) * rollout.completion_mask
                        out["kl"].append(kl.sum(1))
        finally:
            self.prompts, self.prompt_ids, self.columns = saved
            self.sampler.sampling.temperature = sampler_temp
        return {f"eval_{k}": self.gather_mean(torch.cat(v)) for k, v in out.items() if v}

    # ---- saving and resuming ----------------------------------------------------------------------
    def trainer_state(self) -> dict:
        """Method state beyond weights/optimizer (PPO adds its KL controller and score statistics)."""
        return {}

    def load_trainer_state(self, state: dict, checkpoint: str) -> None:
        pass

    def checkpoint_files(self) -> list[str]:
        """Files of the run (besides weights and state) that a checkpoint must carry."""
        return []

    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def save_checkpoint(self) -> str:
        """Write ``checkpoint-<step>`` atomically: into a staging directory, then renamed into place."""
        from safetensors.torch import save_file

        name = f"checkpoint-{self.step_count}"
        final = os.path.join(self.args.output_dir, name)
        staging = os.path.join(self.args.output_dir, STAGING_DIR, name)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
            trainable = {n: p.detach().cpu().contiguous() for n, p in self._unwrapped().named_parameters()
                         if p.requires_grad}
            save_file(trainable, os.path.join(staging, "trainable.safetensors"))
            torch.save(self.optimizer.state_dict(), os.path.join(staging, "optimizer.pt"))
            torch.save(self.lr_scheduler.state_dict(), os.path.join(staging, "scheduler.pt"))
            for file in self.checkpoint_files():  # e.g. ReST's grown data: a checkpoint is self-contained
                shutil.copy2(file, staging)
            state = {"step": self.step_count, "log_history": self.log_history, "method": self.trainer_state()}
            with open(os.path.join(staging, STATE_FILE), "w", encoding="utf-8") as fh:
                json.dump(state, fh, indent=1)
        rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        self.accelerator.wait_for_everyone()
        torch.save(rng, os.path.join(staging, f"rng_state_{self.accelerator.process_index}.pt"))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
            shutil.rmtree(os.path.join(self.args.output_dir, STAGING_DIR), ignore_errors=True)
            self._rotate()
        self.accelerator.wait_for_everyone()
        return final

    def _rotate(self) -> None:
        limit = self.args.save_total_limit
        if not limit:
            return
        checkpoints = sorted((int(d.split("-")[1]), d) for d in os.listdir(self.args.output_dir)
                             if d.startswith("checkpoint-") and d.split("-")[1].isdigit())
        for _, d in checkpoints[:-limit]:
            shutil.rmtree(os.path.join(self.args.output_dir, d), ignore_errors=True)

    def load_checkpoint(self, path: str) -> None:
        from safetensors.torch import load_file

        if path in ("last", "auto"):
            path = transformers.trainer_utils.get_last_checkpoint(self.args.output_dir) \
                if os.path.isdir(self.args.output_dir) else None
            if path is None:
                return  # nothing to resume: start fresh
        if not os.path.exists(os.path.join(path, STATE_FILE)):
            raise FileNotFoundError(f"{path} is not a checkpoint of this trainer (no {STATE_FILE}).")
        weights = load_file(os.path.join(path, "trainable.safetensors"))
        params = dict(self._unwrapped().named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        if missing or set(weights) - set(params):
            raise ValueError(f"Checkpoint {path} does not match this model (missing {missing[:3]}, unexpected "
                             f"{sorted(set(weights) - set(params))[:3]}): resume with the same model and LoRA setup.")
        with torch.no_grad():
            for n, tensor in weights.items():
                params[n].copy_(tensor)
        self.optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=True))
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as fh:
            state = json.load(fh)
        self.step_count, self.log_history = state["step"], state["log_history"]
        self.load_trainer_state(state["method"], path)
        rng_file = os.path.join(path, f"rng_state_{self.accelerator.process_index}.pt")
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save_model(self, output_dir: str | None = None) -> None:
        """The trained policy (with its value head, or only its adapter for LoRA), tokenizer and model card."""
        output_dir = output_dir or self.args.output_dir
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            model = self._unwrapped()
            model.save_pretrained(output_dir)
            self.tokenizer.save_pretrained(output_dir)
            metrics = {k: v for e in self.log_history for k, v in e.items()}
            write_model_card(output_dir, base_model=self.base_model_name, method=self.method,
                             dataset=self.dataset_name, args=self.args, metrics=metrics,
                             adapter=_peft_trunk(model) is not None)

