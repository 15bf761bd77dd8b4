#!/usr/bin/env python
"""Training throughput of posttrain's trainers against TRL's: same model, data, batch, lengths and dtype.

For each benchmark and model size both libraries train a fresh copy of the same seeded weights on the
same rows in the same order, with the same TrainingArguments (batch, max_length, learning rate,
optimizer, fp32, no gradient checkpointing, no logging or saving), in this one process. Warm-up steps
are not timed. Each timed step is timed from the end of the previous step to its own end (so data
loading and collation count) and credited with what it fed the model: non-pad tokens for SFT (the
attention mask's sum, or the packed row's length), preference pairs for reward modeling. Runs
alternate between the libraries (posttrain first in odd rounds, TRL first in even ones); throughput is
the timed units over the sum of each step's fastest time across rounds, which filters out time lost
to other processes on a shared machine.

    python benchmarks/run.py [--sizes 5m,50m] [--steps N] [--repeats R] [--output BENCHMARKS.md] [--quick]
"""

from __future__ import annotations

import os

# Offline, quiet, no telemetry: set before transformers / trl are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from posttrain import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer, load_model, load_tokenizer  # noqa: E402
from posttrain.data import toy  # noqa: E402

MODELS = {"5m": "tiny:llama-5m", "50m": "tiny:llama-50m"}
TOKENIZER = "tiny:llama"
DEFAULT_STEPS = {"5m": 20, "50m": 6}  # timed steps per run (a 50m SFT step takes ~3.5 s on 2 idle cores)
DEFAULT_WARMUP = {"5m": 2, "50m": 1}  # untimed steps before them
QUICK_STEPS = 4
BATCH_SIZE = 8
MAX_LENGTH = 256
LEARNING_RATE = 1e-5
SEED = 0
BENCHMARKS = ("sft", "sft-packed", "reward")
LABELS = {"sft": "SFT, padded (tokens/s)", "sft-packed": "SFT, padding-free (tokens/s)",
          "reward": "Reward modeling (pairs/s)"}
LIBRARIES = ("posttrain", "trl")


# ---- data -----------------------------------------------------------------------------------------
def _fit(tokenizer, parts: list[str], prefix: str, max_length: int) -> str:
    """Join ``parts`` after ``prefix``, dropping trailing parts until prefix + text + eos fits max_length."""
    while True:
        text = "".join(parts)
        if len(parts) == 1 or len(tokenizer(prefix + text + tokenizer.eos_token)["input_ids"]) <= max_length:
            return text
        parts = parts[:-1]


def sft_rows(n: int, tokenizer, max_length: int = MAX_LENGTH, seed: int = SEED) -> list[dict]:
    """Prompt/completion rows whose completion strings 3-12 toy reviews together: ~50-240 tokens (mean
    ~140), varied so that padding matters, and all within ``max_length`` so no library truncates."""
    rng = random.Random(seed)
    pool = toy.prompt_completion(n * 12, seed=seed, positive=None)
    rows, k = [], 0
    for _ in range(n):
        count = rng.randint(3, 12)
        group, k = pool[k: k + count], k + count
        parts = [group[0]["completion"]] + [f" {r['prompt']}{r['completion']}" for r in group[1:]]
        rows.append({"prompt": group[0]["prompt"], "completion": _fit(tokenizer, parts, group[0]["prompt"], max_length)})
    return rows


def reward_rows(n: int, tokenizer, max_length: int = MAX_LENGTH, seed: int = SEED) -> list[dict]:
    """Preference rows whose answers string 1-5 toy continuations together (~15-105 tokens per sequence)."""
    rng = random.Random(seed + 1)
    pool = toy.preference_pairs(n * 5, seed=seed)
    rows, k = [], 0
    for _ in range(n):
        count = rng.randint(1, 5)
        group, k = pool[k: k + count], k + count
        prompt = group[0]["prompt"]
        answers = {}
        for key in ("chosen", "rejected"):
            parts = [group[0][key]] + [f" {r['prompt']}{r[key]}" for r in group[1:]]
            answers[key] = _fit(tokenizer, parts, prompt, max_length)
        rows.append({"prompt": prompt, **answers})
    return rows


# ---- models ---------------------------------------------------------------------------------------
def build_model(size: str, task: str):
    """``load_model(MODELS[size], task, seed=SEED)`` in float32: both libraries get the same weights."""
    return load_model(MODELS[size], task, dtype=torch.float32, seed=SEED)


# ---- measurement ----------------------------------------------------------------------------------
class StepClock(TrainerCallback):
    """The time at the end of every optimizer step: ``times[k] - times[k - 1]`` is step k's duration,
    including fetching and collating its batch."""

    def __init__(self):
        self.times: dict[int, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.times[state.global_step] = time.perf_counter()


def _count(benchmark: str, inputs: dict) -> int:
    """Work units in one batch: pairs for reward, non-pad tokens for SFT (a packed row has no padding)."""
    if benchmark == "reward":
        return int(inputs["input_ids"].shape[0]) // 2
    if "attention_mask" in inputs:
        return int(inputs["attention_mask"].sum())
    return int(inputs["input_ids"].numel())


def _instrument(trainer, benchmark: str, counts: dict, losses: dict) -> None:
    """Record the work units and loss of every step by wrapping this trainer's ``training_step``."""
    original = trainer.training_step

    def training_step(model, inputs, *args, **kwargs):
        step = trainer.state.global_step + 1  # the step this micro-batch belongs to (no accumulation)
        counts[step] = counts.get(step, 0) + _count(benchmark, inputs)
        loss = original(model, inputs, *args, **kwargs)
        if step == 1:  # one device sync, outside the timed steps
            losses[step] = float(loss)
        return loss

    trainer.training_step = training_step


def _common_args(output_dir: str, steps: int) -> dict:
    return dict(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=1, learning_rate=LEARNING_RATE, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, optim="adamw_torch", max_grad_norm=1.0, seed=SEED, data_seed=SEED,
        bf16=False, fp16=False, gradient_checkpointing=False, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, use_cpu=not torch.cuda.is_available(), max_length=MAX_LENGTH)


def _make_trainer(library: str, benchmark: str, model, tokenizer, rows, args_kwargs: dict, callbacks):
    dataset = datasets.Dataset.from_list(rows)
    if library == "posttrain":
        if benchmark == "reward":
            return RewardTrainer(model, args=RewardConfig(**args_kwargs), train_dataset=dataset,
                                 processing_class=tokenizer, callbacks=callbacks)
        args = SFTConfig(**args_kwargs, packing=benchmark == "sft-packed")
        return SFTTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
    import trl

    if benchmark == "reward":
        return trl.RewardTrainer(model, args=trl.RewardConfig(**args_kwargs), train_dataset=dataset,
                                 processing_class=tokenizer, callbacks=callbacks)
    if benchmark == "sft-packed":
        # TRL's padding-free mode without bin packing: each batch is flattened into one row with
        # position_ids restarting per example, exactly what posttrain's packing=True does. TRL refuses a
        # max_length here (it would not be enforced); every row already fits MAX_LENGTH (see sft_rows).
        args_kwargs = {**args_kwargs, "max_length": None}
        args = trl.SFTConfig(**args_kwargs, padding_free=True, packing=False)
    else:
        args = trl.SFTConfig(**args_kwargs, padding_free=False, packing=False)
    return trl.SFTTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)


@dataclass
class Run:
    """One training run: work units and wall seconds of each timed step, and the first step's loss."""

    units: dict[int, int]
    seconds: dict[int, float]
    first_loss: float

    @property
    def throughput(self) -> float:
        return sum(self.units.values()) / sum(self.seconds.values())


def run_one(library: str, benchmark: str, size: str, steps: int, warmup: int, rows: list[dict]) -> Run:
    """Train ``library``'s trainer for ``warmup + steps`` steps; time and count the last ``steps``."""
    if warmup < 1:
        raise ValueError("warmup must be >= 1: the first step pays one-off costs (allocations, optimizer state).")
    task = "seq-cls" if benchmark == "reward" else "causal-lm"
    model = build_model(size, task)  # a fresh copy of identically seeded weights for every run
    tokenizer = load_tokenizer(TOKENIZER)
    clock, counts, losses = StepClock(), {}, {}
    total = warmup + steps
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        trainer = _make_trainer(library, benchmark, model, tokenizer, rows, _common_args(tmp, total), [clock])
        _instrument(trainer, benchmark, counts, losses)
        trainer.train()
    timed = range(warmup + 1, total + 1)
    missing = [k for k in [warmup, *timed] if k not in clock.times or (k > warmup and k not in counts)]
    if missing:
        raise RuntimeError(f"{library} {benchmark}: no clock/count for steps {missing}.")
    return Run({k: counts[k] for k in timed}, {k: clock.times[k] - clock.times[k - 1] for k in timed},
               losses.get(1, float("nan")))


@contextlib.contextmanager
def _quiet():
    """Silence the libraries' own warnings and logs during a run (they would interleave with the table)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        logging.disable(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logging.disable(logging.NOTSET)
            transformers.logging.set_verbosity(previous)


@dataclass
class Result:
    benchmark: str
    size: str
    params: int
    steps: int
    warmup: int
    runs: dict = field(default_factory=lambda: {lib: [] for lib in LIBRARIES})

    def throughput(self, library: str) -> float:
        """Units of the timed steps over the sum, across steps, of each step's fastest time in any round.

        Both libraries see the same batches in the same order (same rows, same sampler seed), so step k
        is the same work on both sides; taking each step's best round filters out time lost to other
        processes on a shared machine, which only ever slows a step down.
        """
        runs = self.runs[library]
        steps = runs[0].units
        return sum(steps.values()) / sum(min(r.seconds[k] for r in runs) for k in steps)

    @property
    def ratio(self) -> float:
        """posttrain / TRL throughput (nan when one side was not run)."""
        if not (self.runs["posttrain"] and self.runs["trl"]):
            return float("nan")
        return self.throughput("posttrain") / self.throughput("trl")


def _params(size: str, benchmark: str) -> int:
    task = "seq-cls" if benchmark == "reward" else "causal-lm"
    return sum(p.numel() for p in build_model(size, task).parameters())


def benchmark(sizes: list[str], steps: int | None = None, warmup: int | None = None, repeats: int = 2,
              benchmarks: tuple[str, ...] = BENCHMARKS, libraries: tuple[str, ...] = LIBRARIES,
              log=print) -> list[Result]:
    """Run every benchmark at every size for ``libraries``; returns one Result per (benchmark, size).

    ``steps`` / ``warmup`` default to DEFAULT_STEPS / DEFAULT_WARMUP of each size.
    """
    tokenizer = load_tokenizer(TOKENIZER)
    results = []
    for size in sizes:
        n_steps, n_warmup = steps or DEFAULT_STEPS[size], warmup or DEFAULT_WARMUP[size]
        n_rows = (n_steps + n_warmup) * BATCH_SIZE  # one epoch, every row seen once
        data = {"sft": sft_rows(n_rows, tokenizer), "reward": reward_rows(n_rows, tokenizer)}
        for name in benchmarks:
            result = Result(name, size, _params(size, name), n_steps, n_warmup)
            rows = data["reward" if name == "reward" else "sft"]
            for r in range(repeats):
                order = libraries if r % 2 == 0 else libraries[::-1]
                for library in order:
                    run = run_one(library, name, size, n_steps, n_warmup, rows)
                    result.runs[library].append(run)
                    log(f"  {name:<10} {size:>3} round {r + 1} {library:<9} {run.throughput:10.1f} "
                        f"{'pairs' if name == 'reward' else 'tokens'}/s  ({sum(run.units.values())} in "
                        f"{sum(run.seconds.values()):.2f} s, first loss {run.first_loss:.4f})")
            results.append(result)
    return results


# ---- report ---------------------------------------------------------------------------------------
HEADER = ["benchmark", "model", "params", "batch", "max_length", "posttrain", "TRL", "ratio"]


def _fmt(value: float) -> str:
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}"


def table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 6) + "|"]
    for res in results:
        lines.append("| " + " | ".join([
            LABELS[res.benchmark], f"`{MODELS[res.size]}`", f"{res.params / 1e6:.1f}M", str(BATCH_SIZE),
            str(MAX_LENGTH), *(_fmt(res.throughput(lib)) if res.runs[lib] else "-" for lib in LIBRARIES),
            f"{res.ratio:.2f}x" if res.ratio == res.ratio else "-"]) + " |")
    return "\n".join(lines)


def details(results: list[Result]) -> str:
    """Per-run numbers: units counted, seconds, and the first-step loss of each side (a same-work check)."""
    lines = ["| benchmark | model | library | round | units counted | seconds | throughput | first-step loss |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for res in results:
        for library in LIBRARIES:
            for i, run in enumerate(res.runs[library], 1):
                lines.append(f"| {res.benchmark} | {res.size} | {library} | {i} | {sum(run.units.values()):,} | "
                             f"{sum(run.seconds.values()):.2f} | "
                             f"{_fmt(run.throughput)} | {run.first_loss:.4f} |")
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


def markdown(results: list[Result], command: str, repeats: int, elapsed: float) -> str:
    info = machine()
    schedule = "; ".join(sorted({f"`{MODELS[r.size]}`: {r.warmup} warm-up + {r.steps} timed steps"
                                 for r in results}))
    slower = [r for r in results if r.ratio < 1]
    noise = spread(results)
    noise = ("" if noise != noise else f" For scale, the largest round-to-round spread of one library on one "
             f"benchmark in this run was {noise:.1%}.")
    return f"""# Benchmarks: posttrain vs TRL

Training throughput of posttrain's trainers and TRL's on the same model, data and settings, measured in
one process by [`benchmarks/run.py`](benchmarks/run.py) (`make bench`). The ratio is posttrain / TRL:
above 1 means posttrain is faster.

Command (took {elapsed / 60:.1f} min):

```
{command}
```

## Machine

{chr(10).join(f"- {k}: {v}" for k, v in info.items())}

## Results

{table(results)}

{len(slower)} of {len(results)} rows have posttrain slower than TRL (ratio < 1).{noise} All runs are listed
at the end.

## Method

- **Same work on both sides.** Each run builds a fresh copy of the same seeded weights
  (`load_model(name, task, seed={SEED})`, float32) and its own copy of the offline byte-level BPE
  tokenizer (`load_tokenizer("{TOKENIZER}")`), and trains on the same rows in the same order (same
  sampler seed) with the same `TrainingArguments`: batch {BATCH_SIZE}, `max_length` {MAX_LENGTH}, AdamW
  (`optim="adamw_torch"`), learning rate {LEARNING_RATE:g} constant, gradient clipping 1.0, seed {SEED}, no
  gradient accumulation, fp32 (TRL's configs default to `bf16=True` and `gradient_checkpointing=True`;
  both are turned off), no logging, evaluation or saving, `dataloader_num_workers=0`, default torch
  threads. The first-step losses below are equal on both sides: same weights, same batch, same loss.
- **Data.** SFT: prompt/completion rows, each completion stringing 3-12 of `posttrain.data.toy`'s
  reviews together (about 50-240 tokens, mean ~140, so padded batches carry real padding; every row fits
  `max_length`, so neither library truncates). Loss on completion tokens only (both libraries' default
  for prompt/completion data). Reward: preference rows whose chosen and rejected answers string 1-5 toy
  continuations together (about 15-105 tokens per sequence, mean ~55).
- **Timing.** {schedule}; {repeats} round(s) per library, alternating which library goes
  first. A `TrainerCallback` stamps the end of every step; a step's time runs from the end of the previous step,
  so it includes fetching and collating its batch, forward, backward, clipping and the optimizer step.
  Since step k is the same batch on both sides, throughput = timed units / sum over timed steps of the
  step's fastest round. This filters out time lost to other processes (the machine is shared and
  oversubscribed OpenMP threads can make a step several times slower); all rounds are listed below.
- **Counting.** Each trainer's `training_step` is wrapped to count what the model is actually fed: SFT
  counts non-pad tokens (the attention mask's sum; for padding-free batches the packed row's length,
  which has no padding), reward counts preference pairs (half the batch rows: both libraries put the
  chosen then the rejected sequences in one batch and score them in one forward pass).
- **Padding-free SFT.** posttrain: `SFTConfig(packing=True)` (its collator concatenates each batch
  into one row with `position_ids` restarting per example). TRL {info['trl']}: `SFTConfig(padding_free=True,
  packing=False)`, the same thing (`packing=True` would instead bin-pack rows into `max_length` blocks,
  changing the batches). TRL refuses a `max_length` in this mode (it would not enforce it), so TRL's side
  runs with `max_length=None`, harmless since every row already fits. TRL documents padding-free for
  FlashAttention; with SDPA (these models' attention, on CPU) transformers derives a block-diagonal causal
  mask from the restarting `position_ids` for both libraries, so no example attends to another. TRL 1.16
  neither warns nor refuses here.
- **TRL offline.** No workaround needed: TRL accepts the locally built model and tokenizer objects
  and a `datasets.Dataset` (it rejects plain lists, so both sides get a `Dataset`). `HF_HUB_OFFLINE=1`
  and `HF_HUB_DISABLE_TELEMETRY=1` are set, so its telemetry ping is skipped.
- **Not measured:** peak memory (both libraries run in one process, so its peak RSS cannot be split
  between them).

## All runs

Throughput of each round on its own (timed units / that round's timed seconds); the table above
combines the rounds step by step.

{details(results)}
"""


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5m,50m", help="Comma-separated model sizes: 5m, 50m.")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"Timed steps per run (default per size: {DEFAULT_STEPS}).")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"Untimed steps before them, >= 1 (default per size: {DEFAULT_WARMUP}).")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds per library, alternating who goes first.")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help=f"Subset of {','.join(BENCHMARKS)}.")
    parser.add_argument("--output", default=None, help="Write the markdown report here (e.g. BENCHMARKS.md).")
    parser.add_argument("--quick", action="store_true",
                        help=f"Smoke run: 5m only, 1 warm-up + {QUICK_STEPS} timed steps, 1 round.")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.warmup, args.repeats = "5m", args.steps or QUICK_STEPS, args.warmup or 1, 1
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    names = tuple(b.strip() for b in args.benchmarks.split(",") if b.strip())
    unknown = [s for s in sizes if s not in MODELS] + [b for b in names if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown size/benchmark {unknown}; sizes: {list(MODELS)}, benchmarks: {list(BENCHMARKS)}")
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 1) \
            or args.repeats < 1:
        parser.error("--steps, --warmup and --repeats must be >= 1")

    start = time.perf_counter()
    print(f"posttrain vs TRL: sizes {sizes}, benchmarks {list(names)}, rounds {args.repeats}", flush=True)
    results = benchmark(sizes, args.steps, args.warmup, args.repeats, names,
                        log=lambda line: print(line, flush=True))
    elapsed = time.perf_counter() - start
    print()
    print(table(results))
    print(f"\n(ratio = posttrain / TRL; > 1 means posttrain is faster; {elapsed:.0f} s)")
    if args.output:
        shown = argv if argv is not None else sys.argv[1:]
        command = " ".join(["python benchmarks/run.py", *(shlex.quote(a) for a in shown)])
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(markdown(results, command, args.repeats, elapsed))
        print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
