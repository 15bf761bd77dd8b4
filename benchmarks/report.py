"""The markdown report of benchmarks/run.py: tables, machine description, notes and the whole BENCHMARKS.md.

The settings it prints (MODELS, LABELS, BATCH_SIZE, MAX_LENGTH, ...) live in run.py, which binds itself
as ``cfg`` on import; run.py re-exports the functions here (``table``, ``markdown``, ``machine``, ...).
"""

from __future__ import annotations

import os
import platform
import string
from types import ModuleType
from typing import TYPE_CHECKING

import datasets
import torch
import transformers

if TYPE_CHECKING:
    from run import Result

cfg: ModuleType  # benchmarks/run.py, set by it on import (report.cfg = its own module)

HEADER = ["benchmark", "model", "params", "batch", "max_length", "posttrain", "TRL", "ratio"]


def _fmt(value: float) -> str:
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}"


def table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 6) + "|"]
    for res in results:
        lines.append("| " + " | ".join([
            cfg.LABELS[res.benchmark], f"`{cfg.MODELS[res.size]}`", f"{res.params / 1e6:.1f}M",
            str(cfg.BATCH_SIZE), str(cfg.MAX_LENGTH),
            *(_fmt(res.throughput(lib)) if res.runs[lib] else "-" for lib in cfg.LIBRARIES),
            f"{res.ratio:.2f}x" if res.ratio == res.ratio else "-"]) + " |")
    return "\n".join(lines)


def details(results: list[Result]) -> str:
    """Per-run numbers: units counted, seconds, and the first-step loss of each side (a same-work check);
    for DPO also the first step's mean chosen log-prob under the policy."""
    lines = ["| benchmark | model | library | round | units counted | seconds | throughput | first-step loss | "
             "step-1 chosen log-prob (DPO) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        for library in cfg.LIBRARIES:
            if library == "trl" and res.trl_from:
                lines.append(f"| {res.benchmark} | {res.size} | trl | - | (the `{res.trl_from}` runs) | | | | |")
                continue
            for i, run in enumerate(res.runs[library], 1):
                logps = "" if run.first_logps != run.first_logps else f"{run.first_logps:.3f}"
                lines.append(f"| {res.benchmark} | {res.size} | {library} | {i} | {sum(run.units.values()):,} | "
                             f"{sum(run.seconds.values()):.2f} | "
                             f"{_fmt(run.throughput)} | {run.first_loss:.4f} | {logps} |")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def spread(results: list[Result]) -> float:
    """Largest round-to-round throughput spread of one library on one benchmark, as a fraction."""
    spreads = [max(r.throughput for r in runs) / min(r.throughput for r in runs) - 1
               for res in results for runs in res.runs.values() if len(runs) > 1]
    return max(spreads, default=float("nan"))


def machine() -> dict:
    import trl

    return {
        "CPU": f"{_cpu_name()}, {os.cpu_count()} logical cores (torch threads: {torch.get_num_threads()})",
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)",
        "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
        "datasets": datasets.__version__, "dtype": "float32 (no autocast, no gradient checkpointing)",
    }


def _family(benchmark: str) -> str:
    return next(f for f, names in cfg.FAMILIES.items() if benchmark in names)


def prefix_speedups(results: list[Result]) -> dict[str, float]:
    """posttrain with prefix sharing / posttrain without it (same rows, same rounds), per model size."""
    by = {(r.benchmark, r.size): r for r in results}
    return {size: by["dpo-prefix", size].throughput("posttrain") / by["dpo", size].throughput("posttrain")
            for (name, size) in by if name == "dpo-prefix" and ("dpo", size) in by
            and by["dpo-prefix", size].runs["posttrain"] and by["dpo", size].runs["posttrain"]}


def table_notes(results: list[Result]) -> str:
    """The footnote of the prefix-sharing row, with posttrain's own prefix-sharing speedup."""
    if not any(r.benchmark == "dpo-prefix" for r in results):
        return ""
    shared = any(r.trl_from for r in results if r.benchmark == "dpo-prefix")
    speedups = prefix_speedups(results)
    text = ("[1] TRL has no prefix sharing, so this row's TRL column is TRL's standard DPO with a copy reference"
            + (" (the very same TRL runs as the \"DPO, copy reference\" row, which ran in the same rounds)"
               if shared else "") + ": the ratio is what prefix sharing buys over TRL's DPO on these rows.")
    if speedups:
        text += (" posttrain with prefix sharing vs posttrain without it (same rows; the first row's "
                 "posttrain column): "
                 + ", ".join(f"`{cfg.MODELS[size]}` **{v:.2f}x**" for size, v in speedups.items()) + ".")
    return "\n" + text + "\n"


def _included_section(path: str | None, title: str, command: str) -> str:
    """A markdown section another benchmark script wrote, or a line saying how to produce it."""
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return "\n" + f.read().strip() + "\n"
    return f"\n## {title}\n\nNot included: run `{command}` before this script.\n"


def markdown(results: list[Result], command: str, repeats: int, elapsed: float,
             memory: str | None = None) -> str:
    info = machine()
    family = {"sft": "SFT", "reward": "reward", "dpo": "DPO", "kto": "KTO"}
    schedule = "; ".join(sorted({f"`{cfg.MODELS[r.size]}` {family[_family(r.benchmark)]}: {r.warmup} warm-up + "
                                 f"{r.steps} timed steps" for r in results}))
    slower = [r for r in results if r.ratio < 1]
    with open(os.path.join(os.path.dirname(__file__), "method.md"), encoding="utf-8") as fh:
        method_section = string.Template(fh.read()).substitute(
            seed=cfg.SEED, tokenizer=cfg.TOKENIZER, batch=cfg.BATCH_SIZE, max_length=cfg.MAX_LENGTH,
            learning_rate=f"{cfg.LEARNING_RATE:g}",
            schedule=schedule, repeats=repeats, dpo_beta=cfg.DPO_BETA, trl=info["trl"],
            lora=", ".join(f"{k}={v!r}" for k, v in cfg.LORA.items()))
    noise = spread(results)
    noise = ("" if noise != noise else f" For scale, the largest round-to-round spread of one library on one "
             f"benchmark in this run was {noise:.1%}.")
    return f"""# Benchmarks: posttrain vs TRL

Training throughput of posttrain's trainers and TRL's on the same model, data and settings, measured in
one process by [`benchmarks/run.py`](benchmarks/run.py) (`make bench`). The ratio is posttrain / TRL:
above 1 means posttrain is faster. DPO peak memory, measured in separate processes by
[`benchmarks/dpo_memory.py`](benchmarks/dpo_memory.py), follows the throughput results, then the memory of
SFT and DPO log-probs with a 152k vocabulary (`benchmarks/logits_memory.py`), the online RL trainers (GRPO,
RLOO, PPO; `benchmarks/online.py`) with short prompts and at the shape of real work (256-token prompts,
G = 8, with a profile of one step by phase), the generation backends (`benchmarks/generation.py`) and PPO
peak memory (`benchmarks/ppo_memory.py`), each section with its own command.

Command (took {elapsed / 60:.1f} min):

```
{command}
```

## Machine

{chr(10).join(f"- {k}: {v}" for k, v in info.items())}

## Results

{table(results)}
{table_notes(results)}
{len(slower)} of {len(results)} rows have posttrain slower than TRL (ratio < 1).{noise} All runs are listed
at the end.

{_included_section(memory, "DPO peak memory", "python benchmarks/dpo_memory.py --data long --pairs "
                   f"{cfg.BATCH_SIZE} --max_length {cfg.MAX_LENGTH} --output benchmarks/dpo_memory.md"
                   )}{_included_section(
    os.path.join(os.path.dirname(__file__), "logits_memory.md"), "Log-probs with a real-size vocabulary: SFT and DPO",
    "python benchmarks/logits_memory.py --output benchmarks/logits_memory.md")}{_included_section(
    os.path.join(os.path.dirname(__file__), "online.md"), "Online RL: GRPO, RLOO, PPO",
    "python benchmarks/online.py --output benchmarks/online.md")}{_included_section(
    os.path.join(os.path.dirname(__file__), "online_long.md"), "Online RL at the shape of real work",
    "python benchmarks/online.py --setting long --output benchmarks/online_long.md")}{_included_section(
    os.path.join(os.path.dirname(__file__), "generation.md"), "Generation backends",
    "python benchmarks/generation.py --output benchmarks/generation.md")}{_included_section(
    os.path.join(os.path.dirname(__file__), "ppo_memory.md"), "PPO peak memory",
    "python benchmarks/ppo_memory.py --output benchmarks/ppo_memory.md")}
{method_section}
## All runs

Throughput of each round on its own (timed units / that round's timed seconds); the table above
combines the rounds step by step.

{details(results)}
{_included_section(os.path.join(os.path.dirname(__file__), "distributed_memory_summary.md"),
                   "Memory per process: FSDP2 vs DDP", "python benchmarks/distributed_memory.py")}"""
