#!/usr/bin/env python
"""bf16 smoke on the GPU: a few SFT, DPO and GRPO steps with ``bf16=True`` (autocast over fp32 weights),
then the same with the weights themselves in bf16. Prints per case: the device the model trained on, the
first and last logged loss, whether every loss was finite, seconds and peak CUDA memory.

    python benchmarks/gpu/smoke_bf16.py [--model tiny:llama-50m] [--steps 3] [--tiny]

``--tiny`` (or GPU_SMOKE_TINY=1): tiny:llama, CPU allowed -- to try the script on a machine without a GPU.
Exits 1 if any case failed or gave a non-finite loss; 0 otherwise. One JSON line per case goes to --json.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402

from posttrain import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer,  # noqa: E402
                       load_model, load_tokenizer)
from posttrain.data import toy  # noqa: E402

CUDA = torch.cuda.is_available()


def distinct_reward(prompts, completions, completion_ids=None, **kwargs):
    return [len(set(ids)) / max(1, len(ids)) for ids in completion_ids]


def device_of(model) -> str:
    return str(next(model.parameters()).device)


def losses_of(trainer) -> list[float]:
    return [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]


def common(tmp: str, steps: int, bf16_autocast: bool) -> dict:
    return dict(output_dir=tmp, max_steps=steps, logging_steps=1, save_strategy="no", report_to="none",
                disable_tqdm=True, seed=0, learning_rate=1e-4, lr_scheduler_type="constant",
                bf16=bf16_autocast, use_cpu=not CUDA)


def run_case(kind: str, weights: str, model_name: str, steps: int, batch: int, max_length: int) -> dict:
    """kind: sft | dpo | grpo; weights: 'fp32+autocast' (bf16=True) or 'bf16' (bf16 weights, bf16=False)."""
    autocast = weights == "fp32+autocast"
    dtype = torch.float32 if autocast else torch.bfloat16
    tokenizer = load_tokenizer("tiny:llama")
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(model_name, dtype=dtype, seed=0)
        if kind == "sft":
            args = SFTConfig(**common(tmp, steps, autocast), per_device_train_batch_size=batch, max_length=max_length)
            trainer = SFTTrainer(model, args, train_dataset=toy.prompt_completion(batch * steps, seed=1),
                                 processing_class=tokenizer)
        elif kind == "dpo":
            args = DPOConfig(**common(tmp, steps, autocast), per_device_train_batch_size=batch, max_length=max_length,
                             reference="copy", reference_cache_dir=os.path.join(tmp, "cache"))
            trainer = DPOTrainer(model, args, train_dataset=toy.preference_pairs(batch * steps, seed=2),
                                 processing_class=tokenizer)
        else:
            g = 4
            args = GRPOConfig(**common(tmp, steps, autocast), per_device_train_batch_size=batch * g // 2,
                              num_generations=g, max_completion_length=32, beta=0.04, reference="copy",
                              generation_kwargs={"min_new_tokens": 8})
            trainer = GRPOTrainer(model, reward_funcs=distinct_reward, args=args,
                                  train_dataset=toy.arithmetic_problems(batch * steps * 2, seed=0),
                                  processing_class=tokenizer)
        trainer.train()
        where = device_of(trainer.model)
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in trainer.model.parameters()})
    if CUDA:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    losses = losses_of(trainer)
    return dict(kind=kind, weights=weights, model=model_name, device=where, param_dtypes=dtypes, steps=steps,
                batch=batch, losses=losses, finite=bool(losses) and all(math.isfinite(x) for x in losses),
                seconds=round(seconds, 2),
                peak_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if CUDA else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny:llama-50m")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("GPU_SMOKE_TINY") == "1")
    parser.add_argument("--json", default=None, help="Append one JSON line per case here.")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.steps, args.batch, args.max_length = "tiny:llama", 2, 4, 64
    elif not CUDA:
        print("no CUDA device: use --tiny to try this on the CPU")
        return 1
    print(f"bf16 smoke: {args.model}, {args.steps} steps, batch {args.batch}, cuda={CUDA}"
          + (f" ({torch.cuda.get_device_name()})" if CUDA else ""), flush=True)
    failed = 0
    rows = []
    for weights in ("fp32+autocast", "bf16"):
        for kind in ("sft", "dpo", "grpo"):
            try:
                r = run_case(kind, weights, args.model, args.steps, args.batch, args.max_length)
            except Exception as err:  # keep going: report every case
                traceback.print_exc()
                r = dict(kind=kind, weights=weights, model=args.model, error=f"{type(err).__name__}: {err}"[:500])
            ok = "error" not in r and r["finite"] and (r["device"].startswith("cuda") or not CUDA)
            failed += not ok
            rows.append(r)
            if args.json:
                with open(args.json, "a", encoding="utf-8") as f:
                    f.write(json.dumps(r) + "\n")
            if "error" in r:
                print(f"  {kind:<4} {weights:<13} FAILED: {r['error']}", flush=True)
            else:
                first, last = (r["losses"][0], r["losses"][-1]) if r["losses"] else (float("nan"),) * 2
                print(f"  {kind:<4} {weights:<13} {'ok ' if ok else 'BAD'} device {r['device']:<7} "
                      f"params {','.join(r['param_dtypes']):<9} loss {first:.4f} -> {last:.4f} "
                      f"({len(r['losses'])} logged) {r['seconds']:6.2f} s  peak {r['peak_mib']} MiB", flush=True)
    print(f"bf16 smoke: {len(rows) - failed}/{len(rows)} cases ok")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
