#!/usr/bin/env python
"""Training throughput of posttrain's trainers against TRL's: same model, data, batch, lengths and dtype.

For each benchmark and model size both libraries train a fresh copy of the same seeded weights on the
same rows in the same order, with the same TrainingArguments (batch, max_length, learning rate,
optimizer, fp32, no gradient checkpointing, no logging or saving), in this one process. Warm-up steps
are not timed. Each timed step is timed from the end of the previous step to its own end (so data
loading and collation count) and credited with what it fed the model: non-pad tokens for SFT (the
attention mask's sum, or the packed row's length), preference pairs for reward modeling and DPO. Runs
alternate between the libraries (posttrain first in odd rounds, TRL first in even ones); throughput is
the timed units over the sum of each step's fastest time across rounds, which filters out time lost
to other processes on a shared machine.

DPO (sigmoid loss) runs three ways: a frozen copy as reference, LoRA with the adapter switched off as
reference, and posttrain's prefix sharing (TRL has none: that row's TRL side is its standard DPO, the
same runs as the copy-reference row). DPO peak memory is measured per process by dpo_memory.py; its
markdown output (benchmarks/dpo_memory.md) is included in the report.

    python benchmarks/run.py [--sizes 5m,50m] [--steps N] [--repeats R] [--only sft,reward,dpo]
                             [--output BENCHMARKS.md] [--quick]
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
import importlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
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

from posttrain import (  # noqa: E402
    DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer, load_model, load_tokenizer)
from posttrain.data import toy  # noqa: E402

# The markdown report lives in report.py next to this file; put this directory on the path so that the
# import also works when the file is loaded by path (tests, online.py, dpo_memory.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402
from report import (  # noqa: E402,F401  (re-exported: tests and online.py use them as run.table etc.)
    details, machine, markdown, prefix_speedups, spread, table, table_notes)

report.cfg = sys.modules[__name__]  # the settings below (MODELS, BATCH_SIZE, ...) that the report prints

MODELS = {"5m": "tiny:llama-5m", "50m": "tiny:llama-50m"}
TOKENIZER = "tiny:llama"
DEFAULT_STEPS = {"5m": 20, "50m": 6}  # timed steps per run (a 50m SFT step takes ~3.5 s on 2 idle cores)
DEFAULT_WARMUP = {"5m": 2, "50m": 1}  # untimed steps before them
QUICK_STEPS = 4
BATCH_SIZE = 8
MAX_LENGTH = 256
LEARNING_RATE = 1e-5
SEED = 0
BENCHMARKS = ("sft", "sft-packed", "reward", "dpo", "dpo-lora", "dpo-prefix", "kto")
DPO_BENCHMARKS = ("dpo", "dpo-lora", "dpo-prefix")
PAIRED = (*DPO_BENCHMARKS, "kto")  # DPO-like steps (policy + reference passes): fewer timed steps
FAMILIES = {"sft": ("sft", "sft-packed"), "reward": ("reward",), "dpo": DPO_BENCHMARKS, "kto": ("kto",)}
LABELS = {"sft": "SFT, padded (tokens/s)", "sft-packed": "SFT, padding-free (tokens/s)",
          "reward": "Reward modeling (pairs/s)", "dpo": "DPO, copy reference (pairs/s)",
          "dpo-lora": "DPO, LoRA, adapter-off reference (pairs/s)",
          "dpo-prefix": "DPO, copy reference, posttrain prefix sharing (pairs/s) [1]",
          "kto": "KTO, copy reference (rows/s)"}
LIBRARIES = ("posttrain", "trl")
# DPO: each step runs 2 x BATCH_SIZE sequences of ~230 tokens through the policy (forward + backward)
# and the reference (forward), so it is slower than an SFT step: fewer timed steps.
DPO_STEPS = {"5m": 6, "50m": 2}
DPO_WARMUP = {"5m": 1, "50m": 1}
DPO_BETA = 0.1
# The same LoRA settings for both libraries (dpo-lora); rebuilt for every run since PEFT keeps a reference.
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


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


def dpo_rows(n: int, tokenizer, max_length: int = MAX_LENGTH, seed: int = SEED) -> list[dict]:
    """Preference rows with long prompts and shorter answers, the case prefix sharing is meant for.

    The prompt strings toy reviews of mixed sentiment together until it reaches a random 140-175 tokens,
    then ends on a review opening (about 140-195 tokens in all); chosen and rejected continue that opening
    (positively / negatively) and add 1-3 further reviews of the same sentiment (about 30-65 tokens each).
    Every prompt + answer + eos fits ``max_length``, so neither library truncates.
    """
    rng = random.Random(seed + 2)
    pairs = toy.preference_pairs(n, seed=seed)
    context = toy.prompt_completion(n * 24, seed=seed + 1, positive=None)
    extra = {"chosen": toy.prompt_completion(n * 3, seed=seed + 2, positive=True),
             "rejected": toy.prompt_completion(n * 3, seed=seed + 3, positive=False)}
    rows, k, used = [], 0, {"chosen": 0, "rejected": 0}
    for pair in pairs:
        target, reviews = rng.randint(140, 175), []
        while len(tokenizer(" ".join(reviews))["input_ids"]) < target:
            reviews.append(context[k]["prompt"] + context[k]["completion"])
            k += 1
        prompt = " ".join([*reviews, pair["prompt"]])
        row = {"prompt": prompt}
        for key in ("chosen", "rejected"):
            count, start = rng.randint(1, 3), used[key]
            used[key] += count
            parts = [pair[key]] + [f" {r['prompt']}{r['completion']}" for r in extra[key][start: start + count]]
            row[key] = _fit(tokenizer, parts, prompt, max_length)
        rows.append(row)
    return rows


def kto_rows(n: int, tokenizer, max_length: int = MAX_LENGTH, seed: int = SEED) -> list[dict]:
    """Unpaired rows from the DPO rows: each pair gives its chosen answer (label True) or its rejected one
    (False), alternating, so a batch mixes both labels."""
    return [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 == 0 else r["rejected"], "label": i % 2 == 0}
            for i, r in enumerate(dpo_rows(n, tokenizer, max_length, seed))]


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
    """Work units in one batch: pairs for reward and DPO, non-pad tokens for SFT (a packed row has no padding)."""
    if benchmark in DPO_BENCHMARKS and "segment_ids" in inputs:  # prefix sharing: one row per pair
        return int(inputs["input_ids"].shape[0])
    if benchmark == "kto":  # the labelled rows (each library adds its own mismatched KL rows)
        return int(inputs["label"].shape[0])
    if benchmark == "reward" or benchmark in DPO_BENCHMARKS:  # chosen rows, then rejected rows
        return int(inputs["input_ids"].shape[0]) // 2
    if "attention_mask" in inputs:
        return int(inputs["attention_mask"].sum())
    return int(inputs["input_ids"].numel())


def _instrument(trainer, benchmark: str, counts: dict, losses: dict) -> None:
    """Record the work units and loss of every step by wrapping this trainer's ``training_step``.

    For DPO also the first step's mean summed log-prob of the chosen answers under the policy, which
    both trainers record as ``logps/chosen`` in their ``_metrics``: at step 1 policy and reference are
    the same weights, so every DPO loss is log 2 and the loss alone would not show that both sides
    scored the same tokens; the log-prob does.
    """
    original = trainer.training_step

    def training_step(model, inputs, *args, **kwargs):
        step = trainer.state.global_step + 1  # the step this micro-batch belongs to (no accumulation)
        counts[step] = counts.get(step, 0) + _count(benchmark, inputs)
        loss = original(model, inputs, *args, **kwargs)
        if step == 1:  # one device sync, outside the timed steps
            losses[step] = float(loss)
            if benchmark in DPO_BENCHMARKS:
                logged = getattr(trainer, "_metrics", {}).get("train", {}).get("logps/chosen")
                losses["logps/chosen"] = float(logged[-1]) if logged else float("nan")
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


def _lora():
    import peft

    return peft.LoraConfig(**LORA)


def _make_dpo_trainer(library: str, benchmark: str, size: str, model, tokenizer, dataset, args_kwargs: dict,
                      callbacks):
    """DPO, sigmoid loss, beta DPO_BETA. dpo: full fine-tuning, reference = a frozen copy of the starting
    weights; dpo-lora: the same LoRA adapter on both sides, reference = the adapter switched off;
    dpo-prefix: posttrain with prefix sharing (copy reference), TRL's standard DPO (it has no prefix sharing)."""
    lora = _lora() if benchmark == "dpo-lora" else None
    if library == "posttrain":
        args = DPOConfig(**args_kwargs, loss_type="sigmoid", beta=DPO_BETA, label_smoothing=0.0,
                         reference="adapter" if lora else "copy", prefix_sharing=benchmark == "dpo-prefix",
                         max_prompt_length=None)
        return DPOTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
                          callbacks=callbacks)
    import trl

    args = trl.DPOConfig(**args_kwargs, loss_type=["sigmoid"], beta=DPO_BETA, label_smoothing=0.0,
                         precompute_ref_log_probs=False, padding_free=False, truncation_mode="keep_start",
                         pad_to_multiple_of=None, use_weighting=False, ld_alpha=None, sync_ref_model=False,
                         disable_dropout=True)
    # TRL's default reference (ref_model=None, no PEFT) re-creates the model from model.config.name_or_path,
    # which an in-memory tiny model does not have; a second build of the same seeded weights is that copy.
    ref_model = None if lora else build_model(size, "causal-lm")
    return trl.DPOTrainer(model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=lora, callbacks=callbacks)


def _make_kto_trainer(library: str, size: str, model, tokenizer, dataset, args_kwargs: dict, callbacks):
    """KTO, beta DPO_BETA, weights 1, a frozen copy of the starting weights as reference, rows in dataset
    order (TRL's default sampling; posttrain's too)."""
    lib = importlib.import_module(library)
    args = lib.KTOConfig(**args_kwargs, beta=DPO_BETA, desirable_weight=1.0, undesirable_weight=1.0,
                         train_sampling_strategy="sequential", disable_dropout=True)
    return lib.KTOTrainer(model, ref_model=build_model(size, "causal-lm"), args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=callbacks)


def _make_trainer(library: str, benchmark: str, size: str, model, tokenizer, rows, args_kwargs: dict, callbacks):
    dataset = datasets.Dataset.from_list(rows)
    if benchmark == "kto":
        return _make_kto_trainer(library, size, model, tokenizer, dataset, args_kwargs, callbacks)
    if benchmark in DPO_BENCHMARKS:
        return _make_dpo_trainer(library, benchmark, size, model, tokenizer, dataset, args_kwargs, callbacks)
    if library == "posttrain":
        if benchmark == "reward":
            return RewardTrainer(model, args=RewardConfig(**args_kwargs), train_dataset=dataset,
                                 processing_class=tokenizer, callbacks=callbacks)
        args = SFTConfig(**args_kwargs, padding_free=benchmark == "sft-packed")
        return SFTTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
    import trl

    if benchmark == "reward":
        return trl.RewardTrainer(model, args=trl.RewardConfig(**args_kwargs), train_dataset=dataset,
                                 processing_class=tokenizer, callbacks=callbacks)
    if benchmark == "sft-packed":
        # TRL's padding-free mode without bin packing: each batch is flattened into one row with
        # position_ids restarting per example, exactly what posttrain's padding_free=True does. TRL refuses a
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
    first_logps: float = float("nan")  # DPO: step 1's mean chosen log-prob under the policy (same-work check)

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
        trainer = _make_trainer(library, benchmark, size, model, tokenizer, rows, _common_args(tmp, total), [clock])
        _instrument(trainer, benchmark, counts, losses)
        trainer.train()
    timed = range(warmup + 1, total + 1)
    missing = [k for k in [warmup, *timed] if k not in clock.times or (k > warmup and k not in counts)]
    if missing:
        raise RuntimeError(f"{library} {benchmark}: no clock/count for steps {missing}.")
    return Run({k: counts[k] for k in timed}, {k: clock.times[k] - clock.times[k - 1] for k in timed},
               losses.get(1, float("nan")), losses.get("logps/chosen", float("nan")))


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
    trl_from: str | None = None  # dpo-prefix: the benchmark whose TRL runs this row shares

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


def schedule(benchmark: str, size: str, steps: int | None = None, warmup: int | None = None) -> tuple[int, int]:
    """(timed steps, warm-up steps) of a benchmark at a size: the overrides, else the per-size defaults."""
    dpo = benchmark in PAIRED
    return (steps or (DPO_STEPS if dpo else DEFAULT_STEPS)[size],
            warmup or (DPO_WARMUP if dpo else DEFAULT_WARMUP)[size])


def _unit(benchmark: str) -> str:
    return "tokens" if benchmark.startswith("sft") else ("rows" if benchmark == "kto" else "pairs")


def benchmark(sizes: list[str], steps: int | None = None, warmup: int | None = None, repeats: int = 2,
              benchmarks: tuple[str, ...] = BENCHMARKS, libraries: tuple[str, ...] = LIBRARIES,
              log=print) -> list[Result]:
    """Run every benchmark at every size for ``libraries``; returns one Result per (benchmark, size).

    ``steps`` / ``warmup`` default to DEFAULT_STEPS / DEFAULT_WARMUP of each size (DPO_STEPS /
    DPO_WARMUP for the DPO benchmarks). TRL has no prefix sharing, so when ``dpo`` and ``dpo-prefix``
    both run, posttrain's prefix-sharing runs join the ``dpo`` rounds and the ``dpo-prefix`` row is
    compared with the same TRL runs (TRL's standard DPO with a copy reference) as the ``dpo`` row.
    """
    tokenizer = load_tokenizer(TOKENIZER)
    makers = {"sft": sft_rows, "reward": reward_rows, "dpo": dpo_rows, "kto": kto_rows}
    results = []
    for size in sizes:
        data: dict[tuple[str, int], list[dict]] = {}
        found = {}
        for name in benchmarks:
            n_steps, n_warmup = schedule(name, size, steps, warmup)
            found[name] = Result(name, size, _params(size, name), n_steps, n_warmup)
        share = "dpo" in found and "dpo-prefix" in found and "trl" in libraries
        groups = []  # contenders (benchmark, library) that alternate within the same rounds
        for name in benchmarks:
            if share and name == "dpo-prefix":
                continue
            group = [(name, library) for library in libraries]
            if share and name == "dpo" and "posttrain" in libraries:
                group.insert(group.index(("dpo", "posttrain")) + 1, ("dpo-prefix", "posttrain"))
            groups.append(group)
        if share:
            found["dpo-prefix"].runs["trl"] = found["dpo"].runs["trl"]  # the same list: the same TRL runs
            found["dpo-prefix"].trl_from = "dpo"
        for group in groups:
            for r in range(repeats):
                for name, library in (group if r % 2 == 0 else group[::-1]):
                    result = found[name]
                    kind = "dpo" if name in DPO_BENCHMARKS else (name if name in ("reward", "kto") else "sft")
                    key = (kind, (result.steps + result.warmup) * BATCH_SIZE)  # one epoch, every row seen once
                    if key not in data:
                        data[key] = makers[kind](key[1], tokenizer)
                    run = run_one(library, name, size, result.steps, result.warmup, data[key])
                    result.runs[library].append(run)
                    check = "" if run.first_logps != run.first_logps else f", chosen log-prob {run.first_logps:.3f}"
                    log(f"  {name:<10} {size:>3} round {r + 1} {library:<9} {run.throughput:10.1f} "
                        f"{_unit(name)}/s  ({sum(run.units.values())} in "
                        f"{sum(run.seconds.values()):.2f} s, first loss {run.first_loss:.4f}{check})")
        results.extend(found[name] for name in benchmarks)
    return results


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5m,50m", help="Comma-separated model sizes: 5m, 50m.")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"Timed steps per run (default per size: {DEFAULT_STEPS}; DPO: {DPO_STEPS}).")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"Untimed steps before them, >= 1 (default per size: {DEFAULT_WARMUP}; DPO: "
                             f"{DPO_WARMUP}).")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds per library, alternating who goes first.")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help=f"Subset of {','.join(BENCHMARKS)}.")
    parser.add_argument("--only", default=None,
                        help=f"Comma-separated families instead of --benchmarks: "
                             f"{'; '.join(f'{k} = {chr(44).join(v)}' for k, v in FAMILIES.items())}.")
    parser.add_argument("--memory", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "dpo_memory.md"),
                        help="Markdown from `benchmarks/dpo_memory.py --output` to include in the report "
                             "(default: benchmarks/dpo_memory.md, if present).")
    parser.add_argument("--output", default=None, help="Write the markdown report here (e.g. BENCHMARKS.md).")
    parser.add_argument("--quick", action="store_true",
                        help=f"Smoke run: 5m only, 1 warm-up + {QUICK_STEPS} timed steps, 1 round.")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.warmup, args.repeats = "5m", args.steps or QUICK_STEPS, args.warmup or 1, 1
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    names = tuple(b.strip() for b in args.benchmarks.split(",") if b.strip())
    if args.only:
        families = [f.strip() for f in args.only.split(",") if f.strip()]
        bad = [f for f in families if f not in FAMILIES]
        if bad:
            parser.error(f"unknown --only family {bad}; families: {list(FAMILIES)}")
        names = tuple(b for b in BENCHMARKS if any(b in FAMILIES[f] for f in families))
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
            f.write(markdown(results, command, args.repeats, elapsed, args.memory))
        print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
