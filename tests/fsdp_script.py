"""Run by tests/test_fsdp.py: under ``accelerate launch --config_file examples/accelerate/fsdp2.yaml`` (2 CPU
processes, FSDP2) or plain python (1 process, twice the per-process batch: the same global batch).

``python fsdp_script.py KINDS OUT_DIR SCALE [MAX_STEPS] [SAVE_STEPS] [RESUME]`` trains each kind (sft, dpo,
dpo_adapter, dpo_precomputed, reward, kto, grpo, grpo_adapter, rloo, ppo, rest,
env: GRPO in a TextEnvironment) for MAX_STEPS steps (default 3) with a
per-process batch of SCALE x the base size (checkpoints every SAVE_STEPS; RESUME: a checkpoint path to resume
from, ``{kind}`` standing for the kind), and rank 0 writes ``OUT_DIR/<kind>.json``: the logged losses,
what each process holds (parameter, optimizer-state and reference elements, against the model's total),
the final weights' checksum, and for the online kinds whether sampling under FSDP2 matched the unsharded
model and how many all-gathers one rollout batch cost.

The online kinds sample through ``ScriptedSampler``: each completion is fixed by its prompt's tokens and
its place in the prompt's group, so 1 and 2 processes train on the same episodes (real sampling draws
different random numbers for a batch split in two); sampling itself is checked separately (``sampling``).
"""

import collections
import hashlib
import json
import os
import sys

import torch
from transformers import TrainerCallback

import posttrain
from posttrain import distributed
from posttrain.data import toy
from posttrain.losses.logprobs import forward_completion
from posttrain.models.loading import load_model
from posttrain.rollout import PolicySampler, Rollout, pad_with_attention
from posttrain.rollout.sampling import SamplingConfig

kinds, out_dir, scale = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
max_steps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
save_steps = int(sys.argv[5]) if len(sys.argv) > 5 else 0
resume = sys.argv[6] if len(sys.argv) > 6 else None  # a checkpoint path, "{kind}" standing for the kind
rank = int(os.environ.get("RANK", 0))
MODEL = os.environ.get("FSDP_TEST_MODEL", "tiny:llama")


class ScriptedSampler:
    """Completions fixed by (prompt tokens, index in the prompt's group): the same episodes on any number of
    processes. Log-probs, when asked, come from the policy's forward, as in PolicySampler."""

    def __init__(self, tokenizer, width: int = 6):
        self.tokenizer, self.width = tokenizer, width
        self.sampling = SamplingConfig(max_new_tokens=width, temperature=1.0)

    def __call__(self, model, prompt_ids, prompts=None, columns=None, with_logprobs=True):
        seen, rows = collections.Counter(), []
        for ids in prompt_ids:
            k = seen[tuple(ids)]
            seen[tuple(ids)] += 1
            seed = int(hashlib.sha256(repr((list(ids), k)).encode()).hexdigest()[:8], 16)
            g = torch.Generator().manual_seed(seed)
            n = int(torch.randint(1, self.width + 1, (1,), generator=g))
            rows.append(torch.randint(3, len(self.tokenizer) - 1, (n,), generator=g).tolist())
        device, pad = next(model.parameters()).device, self.tokenizer.pad_token_id
        ids, attention = pad_with_attention(prompt_ids, pad, side="left", device=device)
        completions, completion_attention = pad_with_attention(rows, pad, device=device)
        rollout = Rollout(ids, attention, completions, completion_attention, completion_attention.clone(),
                          prompts=list(prompts or []), columns=dict(columns or {}))
        if with_logprobs:
            with torch.no_grad():
                rollout.logprobs = forward_completion(model, rollout)[0]
        return rollout


class UsesTheCalculator:
    """A TextEnvironment backend for toy.tool_problems: first a calculator call on the prompt's product, then the
    result, followed by k exclamation marks for the k-th sample of a prompt (so a group's rewards differ)."""

    def generate(self, model, prompt_ids, prompt_attention, sampling, tokenizer):
        rows, seen = [], collections.Counter()
        for ids, att in zip(prompt_ids, prompt_attention):
            text = tokenizer.decode(ids[att.bool()].tolist())
            if "<result>" in text:
                key = text[: text.index("=")]
                reply = text[text.rfind("<result>") + 8: text.rfind("</result>")] + "!" * seen[key]
                seen[key] += 1
            else:
                reply = "<call>calculator(" + text[: text.index("=")] + ")</call>"
            out = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append(out[: sampling.max_new_tokens])
        width = max(map(len, rows))
        return torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])


def variety(completions, **kwargs):
    """A deterministic reward that differs within a group: distinct characters of the completion."""
    return [len(set(c)) / 10 for c in completions]


def numel_stats(trainer, model, reference=None):
    """Elements this process holds of the model's parameters, optimizer state and reference, and the totals."""
    local = distributed.local_numel(model)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    optim = sum((t.to_local() if hasattr(t, "to_local") else t).numel() for s in optimizer.state.values()
                for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    ref = distributed.local_numel(reference) if reference is not None else 0
    device = trainer.accelerator.device  # NCCL reduces device tensors only
    totals = torch.tensor([local, optim, ref], dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    return {"local_params": local, "total_params": int(totals[0]), "local_optim": optim, "total_optim": int(totals[1]),
            "local_ref": ref, "total_ref": int(totals[2])}


def checksum(trainer, model):
    """A sum over the full (gathered) weights, on every process (via torch.distributed.checkpoint)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    return float(sum(t.double().abs().sum() for t in state.values()))


class Losses(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        key = "nll" if args.__class__.__name__ == "ReSTConfig" else "loss"  # ReST logs its Improve steps' NLL
        if logs and key in logs:
            self.losses.append(logs[key])


def common(config_class, **extra):
    defaults = dict(output_dir=os.path.join(out_dir, kind), max_steps=max_steps, learning_rate=1e-3,
                    logging_steps=1, disable_tqdm=True, seed=0, lr_scheduler_type="constant", report_to="none",
                    save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
                    bf16=os.environ.get("FSDP_TEST_BF16") == "1")  # fp32 unless asked: exact comparisons on a GPU too
    if config_class is posttrain.ReSTConfig:  # its length is grow_steps x (1 + improve_steps)
        del defaults["max_steps"], defaults["lr_scheduler_type"]
    return config_class(**{**defaults, **extra})


def lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)


def sampling_check(trainer, saved_dir):
    """One rollout batch through the real sampler: under FSDP2 it must equal the unsharded model's (same seed),
    and gather the weights once (one all-gather per FSDP module), not once per decoded token."""
    prompts = trainer.train_prompts
    rows = list(range(rank * 2, rank * 2 + 2))
    sampler = PolicySampler(trainer.tokenizer, SamplingConfig(max_new_tokens=6, temperature=1.0))
    trainer.sampler, real = sampler, trainer.sampler
    calls, names = [0], [n for n in ("all_gather_single", "all_gather_into_tensor") if hasattr(torch.distributed, n)]
    originals = {n: getattr(torch.distributed, n) for n in names}

    def counting(name):
        def call(*args, **kwargs):
            calls[0] += 1
            return originals[name](*args, **kwargs)
        return call

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    torch.manual_seed(1234)
    for name in names:  # FSDP2 all-gathers through these
        setattr(torch.distributed, name, counting(name))
    try:
        sharded = trainer.sample(rows, repeats=2)
    finally:
        for name, fn in originals.items():
            setattr(torch.distributed, name, fn)
        trainer.sampler = real
    memory = {"cuda_before_mib": before / 2**20, "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20,
              "cuda_after_mib": torch.cuda.memory_allocated() / 2**20} if cuda else {}
    if os.path.exists(os.path.join(saved_dir, "adapter_config.json")):  # a LoRA policy: base + the saved adapter
        from peft import PeftModel

        plain = PeftModel.from_pretrained(load_model(MODEL, "causal-lm", seed=0), saved_dir)
    else:
        plain = load_model(saved_dir, "causal-lm", seed=0)  # the trained weights, as saved
    from posttrain.models.loading import disable_dropout

    disable_dropout(plain)
    torch.manual_seed(1234)
    unsharded = sampler(plain.to(sharded.completion_ids.device), [prompts.ids[i] for i in rows for _ in range(2)])
    return {"same_completions": torch.equal(sharded.completion_ids, unsharded.completion_ids),
            "same_logprobs": bool(torch.allclose(sharded.logprobs, unsharded.logprobs, atol=1e-5)),
            "tokens": int(sharded.completion_attention.sum()), "all_gathers": calls[0],
            "fsdp_modules": len(distributed.fsdp_modules(trainer.model)), **memory}


def run_kind(kind):
    losses = Losses()
    sampling = None
    if kind == "sft":
        rows = toy.prompt_completion(64, seed=4)
        for i, row in enumerate(rows):  # uneven lengths: the token mean must be global
            row["completion"] += " Really." * (i % 5)
        trainer = posttrain.SFTTrainer(MODEL, common(posttrain.SFTConfig, per_device_train_batch_size=4 * scale,
                                                     max_length=64), train_dataset=rows, callbacks=[losses])
    elif kind in ("dpo", "dpo_adapter", "dpo_precomputed"):
        reference = {"dpo": "copy", "dpo_adapter": "adapter", "dpo_precomputed": "precomputed"}[kind]
        args = common(posttrain.DPOConfig, per_device_train_batch_size=4 * scale, max_length=64, reference=reference,
                      reference_cache_dir=os.path.join(out_dir, f"cache-{kind}-{scale}"))
        trainer = posttrain.DPOTrainer(MODEL, args=args, train_dataset=toy.preference_pairs(64, seed=1),
                                       peft_config=lora() if kind == "dpo_adapter" else None, callbacks=[losses])
    elif kind == "reward":
        trainer = posttrain.RewardTrainer(MODEL, common(posttrain.RewardConfig, per_device_train_batch_size=4 * scale,
                                                        max_length=64),
                                          train_dataset=toy.preference_pairs(64, seed=1), callbacks=[losses])
    elif kind == "kto":
        rows = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                for r in toy.preference_pairs(32, seed=1) for side in ("chosen", "rejected")]
        trainer = posttrain.KTOTrainer(MODEL, args=common(posttrain.KTOConfig, per_device_train_batch_size=4 * scale,
                                                          max_length=64), train_dataset=rows, callbacks=[losses])
    elif kind in ("grpo", "rloo", "grpo_adapter"):
        config = posttrain.RLOOConfig if kind == "rloo" else posttrain.GRPOConfig
        adapter = kind == "grpo_adapter"  # LoRA policy, the reference is its adapter switched off
        args = common(config, per_device_train_batch_size=8 * scale, num_generations=4, max_completion_length=6,
                      beta=0.1, reference="adapter" if adapter else "copy")
        trainer_class = posttrain.RLOOTrainer if kind == "rloo" else posttrain.GRPOTrainer
        trainer = trainer_class(MODEL, variety, args=args, train_dataset=toy.arithmetic_problems(64, seed=0),
                                peft_config=lora() if adapter else None, callbacks=[losses])
        trainer.sampler = ScriptedSampler(trainer.tokenizer)
    elif kind == "ppo":
        args = common(posttrain.PPOConfig, per_device_train_batch_size=4 * scale, max_completion_length=6,
                      num_iterations=2, whiten_advantages=False, reference="copy")
        trainer = posttrain.PPOTrainer(MODEL, variety, args=args, train_dataset=toy.arithmetic_problems(64, seed=0),
                                       callbacks=[losses])
        trainer.sampler = ScriptedSampler(trainer.tokenizer)
    elif kind == "env":  # GRPO on TextEnvironment rollouts (a calculator call, its result, the answer)
        from posttrain import TextEnvironment
        from posttrain.tools.calculator import calculator

        env = TextEnvironment([calculator], header="", max_turns=2, max_tokens=48)
        env.backend = UsesTheCalculator()
        args = common(posttrain.GRPOConfig, per_device_train_batch_size=4 * scale, num_generations=2,
                      max_completion_length=24, beta=0.1, reference="copy")
        trainer = posttrain.GRPOTrainer(MODEL, variety, args=args, train_dataset=toy.tool_problems(32, seed=0),
                                        rollout_source=env, callbacks=[losses])
    elif kind == "rest":  # one Grow step, then two Improve steps
        args = common(posttrain.ReSTConfig, per_device_train_batch_size=4 * scale, max_completion_length=6,
                      num_generations=2, grow_steps=1, improve_steps=2, threshold_quantiles=[0.2, 0.5])
        trainer = posttrain.ReSTTrainer(MODEL, variety, args=args, train_dataset=toy.arithmetic_problems(16, seed=0),
                                        callbacks=[losses])
        trainer.sampler = ScriptedSampler(trainer.tokenizer)
    else:
        raise SystemExit(f"unknown kind {kind}")
    trainer.train(resume_from_checkpoint=resume.format(kind=kind) if resume else None)
    model = trainer.model
    reference = getattr(trainer, "ref_model", None) or getattr(getattr(trainer, "reference", None), "model", None)
    result = {"losses": losses.losses, "world_size": int(os.environ.get("WORLD_SIZE", 1)),
              "fsdp": distributed.is_fsdp(trainer.accelerator), "checksum": checksum(trainer, model),
              **numel_stats(trainer, model, reference)}
    if kind == "dpo_precomputed":
        result["precomputed_rows"] = trainer.precomputed_rows
        result["precomputed_total"] = len(trainer.train_dataset)
    trainer.save_model(os.path.join(out_dir, f"{kind}-final"))
    if kind == "env":  # tool output inside the completions, excluded from the loss
        rollout = trainer.sample(trainer.next_prompts(), repeats=2)
        result["tool_tokens"] = int((rollout.completion_attention - rollout.completion_mask).sum())
    if kind in ("grpo", "grpo_adapter", "ppo") and distributed.is_fsdp(trainer.accelerator):
        sampling = sampling_check(trainer, os.path.join(out_dir, f"{kind}-final"))
        result["sampling"] = sampling
        flags = torch.tensor([sampling["same_completions"], sampling["same_logprobs"]], dtype=torch.int64,
                             device=trainer.accelerator.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        result["sampling_all_ranks"] = flags.tolist()
    if rank == 0:
        with open(os.path.join(out_dir, f"{kind}.json"), "w") as fh:
            json.dump(result, fh)
    return trainer


for kind in kinds:  # `kind` and `trainer` stay module globals: tests/deepspeed_script.py reads the last ones
    if os.environ.get("FSDP_TEST_KEEP_GOING") == "1":  # one process (the GPU check): report a failure, go on
        try:
            trainer = run_kind(kind)
        except Exception:
            import traceback

            print(f"KIND {kind} FAILED\n{traceback.format_exc()}", flush=True)
    else:
        trainer = run_kind(kind)

if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
