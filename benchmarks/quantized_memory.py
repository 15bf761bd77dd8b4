"""Peak memory of LoRA training on a 4-bit (NF4, double-quantized) base against the same run on a float32 base,
for SFT, DPO (reference: the adapter switched off), PPO (value head) and GRPO.

Each configuration runs in a fresh process (``benchmarks/memory.py``): the same model (``tiny:llama-50m`` by default:
hidden 576, 14 layers), data, batch, LoRA (r=16 on every linear layer), a few optimizer steps, float32 compute. On
CPU the figure is the peak resident memory above the post-import baseline, on a GPU
``torch.cuda.max_memory_allocated``.

    python benchmarks/quantized_memory.py --output benchmarks/quantized_memory.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time

from memory import method, peak_memory, run_children

METHODS = ("sft", "dpo", "ppo", "grpo")
BASES = {"fp32": "float32 base + LoRA", "nf4": "4-bit NF4 base + LoRA (QLoRA)"}


def child(name: str, model: str, steps: int) -> None:
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    from posttrain import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer, SFTConfig,
                           SFTTrainer)
    from posttrain.data import toy

    kind, base = name.split("-")
    quantized = {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32)} if base == "nf4" else {}
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    common = dict(output_dir=tempfile.mkdtemp(), max_steps=steps, report_to="none", disable_tqdm=True,
                  save_strategy="no", logging_steps=steps, model_init_kwargs=quantized, learning_rate=1e-4)
    prompts = [{"prompt": r["prompt"]} for r in toy.review_prompts(64, seed=0)]

    def reward(completions, **kw):
        return [len(c) / 50 for c in completions]

    rss0 = current_rss_mib()
    with peak_memory() as peak:
        start = time.perf_counter()
        if kind == "sft":
            trainer = SFTTrainer(model, SFTConfig(per_device_train_batch_size=8, **common),
                                 train_dataset=toy.prompt_completion(64, seed=1), peft_config=lora)
        elif kind == "dpo":
            trainer = DPOTrainer(model, args=DPOConfig(per_device_train_batch_size=8, **common),
                                 train_dataset=toy.preference_pairs(64, seed=2), peft_config=lora)
        elif kind == "ppo":
            trainer = PPOTrainer(model, [reward], args=PPOConfig(
                per_device_train_batch_size=8, max_completion_length=16, **common),
                train_dataset=prompts, peft_config=lora)
        else:
            trainer = GRPOTrainer(model, [reward], args=GRPOConfig(
                per_device_train_batch_size=8, num_generations=4, max_completion_length=16, **common),
                train_dataset=prompts, peft_config=lora)
        held = sum(t.numel() * t.element_size() for t in [*trainer.model.parameters(), *trainer.model.buffers()])
        with RSSSampler() as during:  # loading excluded: what the model holds while it trains
            trainer.train()
        train_s = time.perf_counter() - start
    print(json.dumps({"peak_mib": peak.mib, "train_s": train_s, "device": peak.device,
                      "training_mib": during.peak - rss0 if peak.device == "cpu" else peak.mib,
                      "weights_mib": held / 2**20}))


def current_rss_mib() -> float:
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RSSSampler:
    """The highest resident memory seen every 5 ms while the block runs (CPU: ``ru_maxrss`` cannot be reset
    after loading, whose transient copies would otherwise hide the training peak)."""

    def __enter__(self):
        import threading

        self.peak, self._stop = current_rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, current_rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny:llama-50m", help="Model for every configuration.")
    parser.add_argument("--steps", type=int, default=3, help="Optimizer steps per configuration.")
    parser.add_argument("--output", default=None, help="Write the markdown report here.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.model, args.steps)
    names = [f"{m}-{b}" for m in METHODS for b in BASES]
    results = run_children(__file__, names, lambda _: ["--model", args.model, "--steps", str(args.steps)], width=10)
    device = next(iter(results.values()))["device"]
    parts = [f"# Quantized base vs float32 base, LoRA on both ({args.model}, {args.steps} steps, {device})", "",
             f"Peak memory is {method(device)}; each row is a fresh process.", "",
             "Command: `python " + " ".join(shlex.quote(a) for a in sys.argv) + "`", ""]
    parts += ["Three figures per run: the bytes of the model's parameters and buffers as training starts (the "
              "base, quantized or not, the adapter and the value head); the peak of the whole process above its "
              "post-import baseline, loading included; and the highest resident memory while `train()` runs, above "
              "the same baseline (sampled every 5 ms).", "",
              "On CPU the resident figures do not show the 4-bit saving: quantizing while loading makes float32 "
              "copies that the process keeps as freed-but-resident memory (glibc) and mapped file pages, more than "
              "the weights saved. (Measured on `tiny:llama-50m` alone: 28 MiB of live tensors after a 4-bit load, "
              "232 MiB more resident memory.) The weights column is the saving a GPU sees; there the figure is "
              "`torch.cuda.max_memory_allocated`, which counts live tensors only.", "",
              "| method | base | model weights (MiB) | peak incl. loading (MiB) | peak while training (MiB) |",
              "|---|---|---:|---:|---:|"]
    for m in METHODS:
        for b, label in BASES.items():
            r = results[f"{m}-{b}"]
            parts.append(f"| {m.upper()} | {label} | {r['weights_mib']:.0f} | {r['peak_mib']:.0f} | "
                         f"{r['training_mib']:.0f} |")
    parts.append("")
    text = "\n".join(parts)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
