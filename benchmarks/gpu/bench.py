#!/usr/bin/env python
"""posttrain vs TRL on a GPU: benchmarks/run.py (SFT, reward, DPO) and benchmarks/online.py (GRPO, RLOO)
with GPU-sized settings, without changing either script.

run.py and online.py train in fp32 at batch 8 on tiny:llama-5m / -50m: sizes chosen for 2 CPU cores. This
wrapper loads them and overrides, in this process only: the batch (``--batch``), bf16 autocast on both sides
(``--bf16``: TrainingArguments.bf16=True over fp32 weights), one larger tiny size (``--sizes 50m,150m``;
150m = hidden 768, 16 layers, 12 heads, intermediate 2048) and, for online.py, the model. Everything else
(same seeded weights, same rows, alternating rounds, fastest-round throughput) is the scripts' own.

    python benchmarks/gpu/bench.py offline [--sizes 50m,150m] [--batch 32] [--bf16] [--steps 10] [--warmup 2]
                                           [--repeats 2] [--benchmarks sft,sft-packed,reward,dpo,dpo-prefix]
    python benchmarks/gpu/bench.py online  [--size 50m] [--arch llama] [--bf16] [--steps 6] [--warmup 2]
                                           [--repeats 2] [--only grpo,rloo] [--setting short|long]

The GPU version of the long-prompt rows (issue 14): a Qwen2-0.5B-shaped trunk in bf16, 256-token prompts, G = 8:

    python benchmarks/gpu/bench.py online --setting long --arch qwen2 --size 500m --bf16 --only grpo,rloo,ppo
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
EXTRA_SIZES = {"150m": (768, 16, 12, 2048), "300m": (1024, 24, 16, 2816),
               "500m": (896, 24, 14, 4864)}  # Qwen2-0.5B's trunk (with the tiny tokenizer's vocabulary)


def _load(name: str, file: str):
    sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, file))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _add_sizes():
    from posttrain.models import tiny

    for key, dims in EXTRA_SIZES.items():
        tiny.SIZES.setdefault(key, dims)


def _device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"no cuda (cpu, {torch.get_num_threads()} threads), torch {torch.__version__}"


def offline(argv):
    p = argparse.ArgumentParser(prog="bench.py offline")
    p.add_argument("--sizes", default="50m,150m")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--benchmarks", default="sft,sft-packed,reward,dpo,dpo-lora,dpo-prefix")
    p.add_argument("--output", default=None, help="Write the markdown report (run.py's format) here.")
    a = p.parse_args(argv)
    _add_sizes()
    run = _load("posttrain_benchmarks_run", "run.py")
    sizes = [s for s in a.sizes.split(",") if s]
    for s in sizes:
        run.MODELS.setdefault(s, f"tiny:llama-{s}")
    run.BATCH_SIZE = a.batch
    original_args = run._common_args

    def common_args(output_dir, steps):
        kw = original_args(output_dir, steps)
        kw["bf16"] = a.bf16
        return kw

    run._common_args = common_args
    params = functools.lru_cache(maxsize=None)(run._params)  # one model build per (size, task), not per row
    run._params = lambda size, benchmark: params(size, "reward" if benchmark == "reward" else "lm")
    names = tuple(b for b in a.benchmarks.split(",") if b)
    print(f"offline: {_device_line()}; sizes {sizes}, batch {a.batch}, bf16 {a.bf16}, {a.warmup} warm-up + "
          f"{a.steps} timed steps, {a.repeats} round(s), {list(names)}", flush=True)
    start = time.perf_counter()
    results = []
    # One family at a time (DPO's rows share TRL runs, so they stay together), the table so far printed after
    # each: a run cut short by a timeout still leaves the finished families' table in the log.
    for family in ("sft", "dpo", "reward"):
        part = tuple(b for b in names if b in run.FAMILIES[family])
        if not part:
            continue
        results += run.benchmark(sizes, a.steps, a.warmup, a.repeats, part, log=lambda line: print(line, flush=True))
        print(f"\n{run.table(results)}\n(so far, {time.perf_counter() - start:.0f} s)\n", flush=True)
    elapsed = time.perf_counter() - start
    print("FINAL")
    print(run.table(results))
    print(f"\n(ratio = posttrain / TRL; > 1 means posttrain is faster; {elapsed:.0f} s)", flush=True)
    print("\nPer run:\n" + run.details(results), flush=True)
    if a.output:
        command = "python benchmarks/gpu/bench.py offline " + " ".join(argv)
        with open(a.output, "w", encoding="utf-8") as f:
            f.write(run.markdown(results, command, a.repeats, elapsed, None))
        print(f"wrote {a.output}")


def online(argv):
    p = argparse.ArgumentParser(prog="bench.py online")
    p.add_argument("--size", default="50m")
    p.add_argument("--arch", default="llama", help="tiny architecture: llama, qwen2, gpt2")
    p.add_argument("--setting", choices=("short", "long"), default="short",
                   help="online.py's setting: long = 256-token prompts (PPO 128), 64-token completions, G=8")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", default="grpo,rloo")
    p.add_argument("--output", default=None)
    a = p.parse_args(argv)
    _add_sizes()
    mod = _load("posttrain_benchmarks_online", "online.py")
    if a.setting == "long":
        mod.S.update({k: v for k, v in mod.LONG.items() if k in mod.S})
    mod.MODEL = f"tiny:{a.arch}-{a.size}"
    if a.bf16:  # both sides' configs are built with bf16=False inside the functions: force it at construction
        import trl

        def forcing(cls):
            def build(*args, **kw):
                kw["bf16"] = True
                return cls(*args, **kw)
            return build

        for name in ("GRPOConfig", "RLOOConfig", "PPOConfig"):
            setattr(mod, name, forcing(getattr(mod, name)))
        for name in ("GRPOConfig", "RLOOConfig"):
            setattr(trl, name, forcing(getattr(trl, name)))
    families = [f for f in a.only.split(",") if f]
    print(f"online: {_device_line()}; {mod.MODEL}, bf16 {a.bf16}, {a.warmup} warm-up + {a.steps} timed steps, "
          f"{a.repeats} round(s), {families}", flush=True)
    start = time.perf_counter()
    results = mod.benchmark(families, a.steps, a.warmup, a.repeats, log=lambda line: print(line, flush=True))
    elapsed = time.perf_counter() - start
    print("\n" + mod.table(results, families) + f"\n\n(ratio = posttrain / TRL; {elapsed:.0f} s)", flush=True)
    if a.output:
        command = "python benchmarks/gpu/bench.py online " + " ".join(argv)
        with open(a.output, "w", encoding="utf-8") as f:
            write = mod.markdown_long if a.setting == "long" else mod.markdown
            f.write(write(results, families, command, a.steps, a.warmup, a.repeats, elapsed))
        print(f"wrote {a.output}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("offline", "online"):
        sys.exit(__doc__)
    {"offline": offline, "online": online}[sys.argv[1]](sys.argv[2:])
