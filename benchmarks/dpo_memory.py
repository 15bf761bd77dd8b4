"""Peak memory of DPO reference strategies against a plain LoRA SFT run on the same model and batch.

Each configuration runs in a fresh process. On CPU the figure is the peak resident memory above
what the process held after imports (ru_maxrss delta); on a GPU it is torch.cuda.max_memory_allocated.

    python benchmarks/dpo_memory.py --model tiny:llama-50m --pairs 4 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

CONFIGS = {
    "sft-lora": "LoRA SFT on the same 2B sequences (the baseline)",
    "dpo-lora-adapter": "LoRA DPO, reference = adapter switched off",
    "dpo-lora-copy": "LoRA DPO, reference = frozen copy",
    "dpo-full-copy": "full DPO, reference = frozen copy",
    "dpo-full-precomputed": "full DPO, reference precomputed",
}


def child(name: str, model_name: str, pairs: int, steps: int, max_length: int) -> dict:
    import torch

    from posttrain import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer, load_model
    from posttrain.data import toy

    cuda = torch.cuda.is_available()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import peft

    lora = peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    common = dict(output_dir="/tmp/posttrain-memory", max_steps=steps, save_strategy="no", disable_tqdm=True,
                  report_to="none", max_length=max_length, learning_rate=1e-4, logging_steps=steps)
    pref = toy.preference_pairs(pairs * steps, seed=0)
    model = load_model(model_name)
    if name == "sft-lora":
        rows = [{"prompt": r["prompt"], "completion": r[k]} for r in pref for k in ("chosen", "rejected")]
        trainer = SFTTrainer(model, SFTConfig(per_device_train_batch_size=2 * pairs, **common), train_dataset=rows,
                             peft_config=lora)
    else:
        _, kind, reference = name.split("-")
        trainer = DPOTrainer(model, DPOConfig(per_device_train_batch_size=pairs, reference=reference,
                                              reference_cache_dir="/tmp/posttrain-memory/cache", **common),
                             train_dataset=pref, peft_config=lora if kind == "lora" else None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = (torch.cuda.max_memory_allocated() if cuda
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024)
    return {"config": name, "peak_mib": peak / 2**20, "device": "cuda" if cuda else "cpu",
            "params_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny:llama-50m")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per batch (SFT baseline: 2x sequences)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.pairs, args.steps, args.max_length)))
        return
    results = {}
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--model", args.model, "--pairs",
                              str(args.pairs), "--steps", str(args.steps), "--max_length", str(args.max_length)],
                             capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        if out.returncode != 0:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["sft-lora"]["peak_mib"]
    print(f"| configuration | peak memory (MiB, {results['sft-lora']['device']}) | vs LoRA SFT |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {CONFIGS[name]} | {r['peak_mib']:.0f} | {r['peak_mib'] / base:.2f}x |")


if __name__ == "__main__":
    main()
