"""Peak memory of DPO reference strategies against a plain LoRA SFT run on the same model and batch,
and against TRL's DPOTrainer with the same model, data, batch, lengths and dtype.

Each configuration runs in a fresh process. On CPU the figure is the peak resident memory above
what the process held after imports (ru_maxrss delta; every child imports the same libraries, TRL
included when installed, before taking its baseline); on a GPU it is torch.cuda.max_memory_allocated.
All runs: float32, no gradient checkpointing, AdamW (adamw_torch), sigmoid DPO loss with beta 0.1.

    python benchmarks/dpo_memory.py --model tiny:llama-50m --pairs 4 --steps 3
    python benchmarks/dpo_memory.py --data long --pairs 8 --max_length 256 --output benchmarks/dpo_memory.md

``--data toy`` (default) uses ``posttrain.data.toy.preference_pairs`` (~7-token prompts, ~11-token
answers); ``--data long`` uses the rows of the DPO throughput benchmark (``benchmarks/run.py``:
prompts of about 150-200 tokens, answers of about 25-70), which is what BENCHMARKS.md reports.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import tempfile
import time

from memory import method, peak_memory, ratio_table, run_children, target_verdict

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    "sft-lora": "LoRA SFT on the same 2B sequences (the baseline)",
    "dpo-lora-adapter": "LoRA DPO, reference = adapter switched off",
    "dpo-lora-copy": "LoRA DPO, reference = frozen copy",
    "dpo-full-copy": "full DPO, reference = frozen copy",
    "dpo-full-precomputed": "full DPO, reference precomputed",
}
TRL_CONFIGS = {
    "trl-dpo-full-copy": "TRL: full DPO, reference = separate copy (`ref_model`)",
    "trl-dpo-lora-adapter": "TRL: LoRA DPO, reference = adapter disabled (`ref_model=None`)",
}
# posttrain configuration -> the TRL configuration doing the same work
PAIRS = {"dpo-full-copy": "trl-dpo-full-copy", "dpo-lora-adapter": "trl-dpo-lora-adapter"}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
BETA = 0.1
TARGET = 0.10  # LoRA DPO (adapter-off reference) within 10% of LoRA SFT, either way


def _rows(data: str, n: int, max_length: int) -> list[dict]:
    from posttrain import load_tokenizer
    from posttrain.data import toy

    if data == "toy":
        return toy.preference_pairs(n, seed=0)
    spec = importlib.util.spec_from_file_location("posttrain_benchmarks_run", os.path.join(HERE, "run.py"))
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    return bench.dpo_rows(n, load_tokenizer("tiny:llama"), max_length=max_length)


def child(name: str, model_name: str, pairs: int, steps: int, max_length: int, data: str) -> dict:
    # Everything any configuration needs is imported before the baseline, so baselines are comparable.
    import datasets
    import peft
    import torch
    import transformers

    import posttrain
    from posttrain import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer, load_model, load_tokenizer

    try:
        import trl
    except ImportError:  # TRL comes with the `bench` extra
        trl = None
    del datasets, transformers, posttrain

    rows = _rows(data, pairs * steps, max_length)
    tokenizer = load_tokenizer("tiny:llama")
    with peak_memory() as peak:  # the RSS baseline: after imports, rows and tokenizer
        lora = peft.LoraConfig(**LORA)
        tmp = tempfile.mkdtemp(prefix="posttrain-memory-")
        common = dict(output_dir=tmp, max_steps=steps, save_strategy="no", disable_tqdm=True, report_to="none",
                      max_length=max_length, learning_rate=1e-4, logging_steps=steps, lr_scheduler_type="constant",
                      optim="adamw_torch", bf16=False, fp16=False, gradient_checkpointing=False, seed=0,
                      dataloader_num_workers=0, use_cpu=peak.device != "cuda")
        model = load_model(model_name, dtype=torch.float32, seed=0)
        if name == "sft-lora":
            sft = [{"prompt": r["prompt"], "completion": r[k]} for r in rows for k in ("chosen", "rejected")]
            trainer = SFTTrainer(model, SFTConfig(per_device_train_batch_size=2 * pairs, **common),
                                 train_dataset=sft, processing_class=tokenizer, peft_config=lora)
        elif name.startswith("trl-"):
            if trl is None:
                raise SystemExit("TRL is not installed (pip install -e '.[bench]').")
            kind = name.split("-")[2]
            args = trl.DPOConfig(per_device_train_batch_size=pairs, loss_type=["sigmoid"], beta=BETA,
                                 precompute_ref_log_probs=False, pad_to_multiple_of=None, **common)
            # TRL's own default copy re-creates the model from model.config.name_or_path, which a tiny in-memory
            # model does not have: a second load of the same seeded weights is that copy.
            ref_model = load_model(model_name, dtype=torch.float32, seed=0) if kind == "full" else None
            trainer = trl.DPOTrainer(model, ref_model=ref_model, args=args, train_dataset=datasets_from(rows),
                                     processing_class=tokenizer, peft_config=lora if kind == "lora" else None)
        else:
            _, kind, reference = name.split("-")
            trainer = DPOTrainer(model, DPOConfig(per_device_train_batch_size=pairs, reference=reference,
                                                  beta=BETA, loss_type="sigmoid",
                                                  reference_cache_dir=os.path.join(tmp, "cache"), **common),
                                 train_dataset=rows, processing_class=tokenizer,
                                 peft_config=lora if kind == "lora" else None)
        peak.reset_cuda_peak()  # the GPU figure is the training peak, from what construction left allocated
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"config": name, "peak_mib": peak.mib, "device": peak.device,
            "params_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6, "train_s": seconds}


def datasets_from(rows: list[dict]):
    import datasets

    return datasets.Dataset.from_list(rows)  # TRL takes a Dataset, not a list


def table(results: dict) -> str:
    return ratio_table(results, {**CONFIGS, **TRL_CONFIGS}, "sft-lora", "LoRA SFT")


def report(results: dict, args, command: str) -> str:
    """Markdown: every configuration against posttrain's LoRA SFT baseline, then posttrain vs TRL."""
    what = method(next(iter(results.values()))["device"])
    lines = [table(results)]
    pairs = [(p, t) for p, t in PAIRS.items() if p in results and t in results]
    if pairs:
        lines += ["", "| DPO configuration | posttrain (MiB) | TRL (MiB) | ratio (posttrain / TRL) |",
                  "|---|---:|---:|---:|"]
        for p, t in pairs:
            a, b = results[p]["peak_mib"], results[t]["peak_mib"]
            lines.append(f"| {CONFIGS[p].replace('LoRA DPO', 'LoRA').replace('full DPO', 'full')} | "
                         f"{a:.0f} | {b:.0f} | {a / b:.2f}x |")
    verdict = target_verdict(results, "dpo-lora-adapter", "sft-lora", "LoRA DPO with the adapter-off reference vs "
                             "plain LoRA SFT on the same model and batch", TARGET, both_ways=True)
    return f"""## DPO peak memory

Measured by [`benchmarks/dpo_memory.py`](benchmarks/dpo_memory.py), one fresh process per configuration
({what}; lower is better): `{args.model}`, {args.pairs} pairs per batch (the LoRA SFT baseline trains on
the same {2 * args.pairs} sequences per batch: each pair's prompt + chosen and prompt + rejected), `max_length`
{args.max_length}, {args.steps} steps, `{args.data}` data, float32, no gradient checkpointing, AdamW, LoRA r=16 on
all linear layers for the LoRA rows:

```
{command}
```

{chr(10).join(lines)}
{verdict}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny:llama-50m")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per batch (SFT baseline: 2x sequences)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--data", choices=("toy", "long"), default="toy",
                        help="toy: short toy pairs; long: the DPO throughput benchmark's long-prompt rows")
    parser.add_argument("--configs", default=None,
                        help=f"Comma-separated subset of {','.join([*CONFIGS, *TRL_CONFIGS])} (default: all; "
                             "the TRL ones only when TRL is installed).")
    parser.add_argument("--output", default=None, help="Also write the markdown table here (BENCHMARKS.md "
                                                        "includes benchmarks/dpo_memory.md).")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.pairs, args.steps, args.max_length, args.data)))
        return
    if args.configs:
        names = [c.strip() for c in args.configs.split(",") if c.strip()]
        unknown = [c for c in names if c not in CONFIGS and c not in TRL_CONFIGS]
        if unknown:
            parser.error(f"unknown configurations {unknown}")
    else:
        names = list(CONFIGS) + (list(TRL_CONFIGS) if importlib.util.find_spec("trl") else [])
    flags = ["--model", args.model, "--pairs", str(args.pairs), "--steps", str(args.steps), "--max_length",
             str(args.max_length), "--data", args.data]
    results = run_children(__file__, names, lambda name: flags, width=22)
    print(table(results))
    if args.output:
        command = " ".join(["python benchmarks/dpo_memory.py", *(shlex.quote(a) for a in sys.argv[1:])])
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(report(results, args, command))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
