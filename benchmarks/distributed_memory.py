"""Memory per process under FSDP2 vs plain data parallel (DDP): 2 CPU processes (gloo), ``tiny:llama-50m``.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/distributed_memory.py

launches four runs, each its own ``accelerate launch`` of this file with ``--worker`` (2 processes):

* SFT:  per_device_train_batch_size 4, max_length 128, 3 steps;
* GRPO: num_generations 4, per_device_train_batch_size 8, max_completion_length 16, beta 0.1 (a frozen reference
  copy), 2 steps, reward = distinct characters of the completion;

each once as plain data parallel (``--multi_gpu --num_processes 2``: DDP over gloo on CPU) and once with
``--config_file examples/accelerate/fsdp2.yaml`` (FSDP2 on the CPU processes, ``posttrain.distributed``).

Every process reports

* the bytes it holds of the policy's parameters, of the gradients (in ``on_pre_optimizer_step``: after the
  backward, before the step and ``zero_grad``; the largest over the steps), of the optimizer state (after
  training) and of the frozen reference (GRPO) -- sums of local tensor bytes (a DTensor counts its
  ``to_local()`` shard). DDP's own gradient buckets (a second full-size gradient buffer inside the reducer) are
  not parameters' ``.grad`` and are not counted;
* its peak RSS during training (Linux ``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs`` at
  ``on_train_begin``, when the model is wrapped and sharded, after ``malloc_trim``), and for GRPO the peak RSS
  during the generation phase (each ``trainer.sample`` call: under FSDP2 the full weights are gathered there).

RSS is the whole process: the Python interpreter, torch, transformers, the data, the tokenizer and allocator
slack, not only the tensors, so it falls by much less than the tensor bytes. The four runs are made twice: with
glibc malloc as it comes, and with ``MALLOC_MMAP_THRESHOLD_=131072`` (every tensor of 128 KiB or more its own
mapping, given back when freed), under which RSS follows the live tensors; with the default, freed heap pages
stay resident and (here) hide most of what sharding saves.

The table (markdown, with the command at the top) goes to ``benchmarks/distributed_memory.md`` (``--output``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDP2_CONFIG = os.path.join(ROOT, "examples", "accelerate", "fsdp2.yaml")
MODEL = "tiny:llama-50m"
MIB = 2**20
TRAINERS = ("sft", "grpo")
STRATEGIES = ("ddp", "fsdp2")
COMMAND = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/distributed_memory.py"
# glibc malloc settings of the runs: its default (a dynamic mmap threshold: once a large block has been
# freed, blocks up to 32 MiB come from the heap, whose freed pages stay resident until a trim), and a fixed
# 128 KiB mmap threshold (every tensor of 128 KiB or more is its own mapping, returned to the OS when freed),
# under which RSS follows the live tensors closely.
ALLOCATORS = {"default": {}, "mmap128k": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


# ---- the per-process run (under accelerate launch) ------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class Rss:
    """Peak RSS per phase of the run. ``enter(name)`` ends the current phase (its peak: the kernel's high-water
    mark since the phase began) and starts a new high-water mark for the next."""

    def __init__(self):
        self.phase, self.peaks = "setup", {}

    @staticmethod
    def now_mib() -> float:
        return _status_kib("VmRSS") / 1024

    @staticmethod
    def hwm_mib() -> float:
        return _status_kib("VmHWM") / 1024

    def enter(self, name: str, trim: bool = False) -> float:
        """Start phase ``name``; returns the peak of the phase that ended. ``trim``: first return freed memory
        to the OS, so the new phase starts from what is really held."""
        ended = self.hwm_mib()
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), ended)
        if trim:
            gc.collect()
            _trim()
        with open("/proc/self/clear_refs", "w") as fh:  # VmHWM := VmRSS
            fh.write("5")
        self.phase = name
        return ended

    def finish(self) -> dict:
        self.enter("done")
        return self.peaks


def _trim() -> None:
    """Give freed heap memory back to the OS (glibc), so the RSS baseline is what is really held."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _bytes(tensors) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors if t is not None)


def worker(trainer_kind: str, strategy: str, allocator: str, out_dir: str) -> None:
    import torch
    from transformers import TrainerCallback

    import posttrain
    from posttrain import distributed
    from posttrain.data import toy

    rank = int(os.environ.get("RANK", 0))
    grads = {"bytes": 0, "steps": 0}
    rss = Rss()
    train_begin = {}

    class Measure(TrainerCallback):
        """Phases of the run for the RSS peaks (the transformers Trainer wraps and shards the model inside
        ``train()``, before ``on_train_begin``; GRPO in its constructor), and the gradient bytes after the
        backward, before the optimizer step (and zero_grad)."""

        def on_train_begin(self, args, state, control, **kwargs):
            rss.enter("between", trim=True)
            train_begin["rss"] = rss.now_mib()

        def on_step_begin(self, args, state, control, **kwargs):
            rss.enter("forward_backward")

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads["bytes"] = max(grads["bytes"], _bytes(p.grad for p in model.parameters()))
            grads["steps"] += 1
            rss.enter("optimizer")

        def on_optimizer_step(self, args, state, control, **kwargs):
            rss.enter("between")

    callback = Measure()
    common = dict(output_dir=os.path.join(out_dir, f"{trainer_kind}-{strategy}"), learning_rate=1e-4,
                  logging_steps=1, disable_tqdm=True, seed=0, lr_scheduler_type="constant", report_to="none",
                  save_strategy="no")
    if trainer_kind == "sft":
        args = posttrain.SFTConfig(max_steps=3, per_device_train_batch_size=4, max_length=128, **common)
        trainer = posttrain.SFTTrainer(MODEL, args, train_dataset=toy.prompt_completion(64, seed=4),
                                       callbacks=[callback])
    else:
        def distinct_characters(completions, **kwargs):
            return [float(len(set(c))) for c in completions]

        args = posttrain.GRPOConfig(max_steps=2, per_device_train_batch_size=8, num_generations=4,
                                    max_completion_length=16, beta=0.1, reference="copy", **common)
        trainer = posttrain.GRPOTrainer(MODEL, distinct_characters, args=args,
                                        train_dataset=toy.arithmetic_problems(64, seed=0), callbacks=[callback])

    generation = []  # (RSS at its start, its peak) per rollout batch
    if trainer_kind == "grpo":
        sample = trainer.sample

        def measured_sample(*a, **kw):
            rss.enter("generation", trim=True)
            start = rss.now_mib()
            try:
                return sample(*a, **kw)
            finally:
                generation.append((start, rss.enter("between")))

        trainer.sample = measured_sample

    trainer.train()
    peaks = rss.finish()
    highest = max(generation, key=lambda g: g[1]) if generation else (None, None)
    model = trainer.model
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    optim_bytes = _bytes(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    reference = getattr(getattr(trainer, "reference", None), "model", None)
    result = {
        "trainer": trainer_kind, "strategy": strategy, "allocator": allocator, "rank": rank,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "fsdp": distributed.is_fsdp(trainer.accelerator),
        "distributed_type": str(trainer.accelerator.distributed_type),
        "model_class": type(model).__name__,
        "param_numel": distributed.local_numel(model),
        "param_bytes": _bytes(model.parameters()),
        "grad_bytes": grads["bytes"], "grad_steps": grads["steps"],
        "optim_bytes": optim_bytes,
        "ref_bytes": _bytes(reference.parameters()) if reference is not None else 0,
        "rss_train_begin_mib": train_begin["rss"],
        "peak_rss_train_mib": max(v for k, v in peaks.items() if k != "setup"),
        "peak_rss_process_mib": max(peaks.values()),
        "phase_peaks_mib": peaks,
        "generation_peak_rss_mib": highest[1], "generation_start_rss_mib": highest[0],
        "generation_calls": len(generation),
        "steps": trainer.state.global_step,
    }
    with open(os.path.join(out_dir, f"{trainer_kind}-{strategy}-{allocator}-rank{rank}.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# ---- the driver ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(trainer_kind: str, strategy: str, allocator: str, out_dir: str, timeout: int = 600) -> float:
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    where = (["--config_file", FSDP2_CONFIG] if strategy == "fsdp2"
             else ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error", HF_DATASETS_DISABLE_PROGRESS_BARS="1", **ALLOCATORS[allocator])
    name = f"{trainer_kind}/{strategy}/{allocator}"
    # torch 2.13's gloo now and then aborts both ranks at start-up ("terminate called without an active
    # exception"); such a launch is retried, at most twice (as tests/launch_helpers.py does).
    for attempt in range(3):
        cmd = [accelerate, "launch", *where, "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", str(free_port()), os.path.abspath(__file__),
               "--worker", trainer_kind, strategy, allocator, out_dir]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        seconds = time.perf_counter() - start
        if done.returncode == 0 or "terminate called without an active exception" not in done.stderr:
            break
        print(f"  {name}: gloo start-up abort, retrying ({attempt + 1})", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (rc {done.returncode}):\n{done.stderr[-4000:]}")
    return seconds


def load(out_dir: str, allocators) -> dict:
    runs = {}
    for allocator in allocators:
        for trainer_kind in TRAINERS:
            for strategy in STRATEGIES:
                ranks = []
                for rank in (0, 1):
                    path = os.path.join(out_dir, f"{trainer_kind}-{strategy}-{allocator}-rank{rank}.json")
                    with open(path) as fh:
                        ranks.append(json.load(fh))
                if any(r["fsdp"] != (strategy == "fsdp2") or r["world_size"] != 2 for r in ranks):
                    raise SystemExit(f"{trainer_kind}/{strategy}: not the expected setup: {ranks}")
                runs[trainer_kind, strategy, allocator] = ranks
    return runs


def _mean(ranks, key):
    values = [r[key] for r in ranks if r[key] is not None]
    return sum(values) / len(values) if values else None


def _fmt(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def table(runs: dict, allocator: str) -> str:
    lines = [
        "| trainer | strategy | params MiB/process | grads MiB/process | optimizer MiB/process | "
        "reference MiB/process | peak RSS MiB/process | generation-phase peak RSS MiB (GRPO) | "
        "params+grads+optimizer FSDP2/DDP | peak RSS FSDP2/DDP |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for trainer_kind in TRAINERS:
        ddp_state = ddp_rss = None
        for strategy in STRATEGIES:
            ranks = runs[trainer_kind, strategy, allocator]
            state = _mean(ranks, "param_bytes") + _mean(ranks, "grad_bytes") + _mean(ranks, "optim_bytes")
            peak = _mean(ranks, "peak_rss_train_mib")
            if strategy == "ddp":
                ddp_state, ddp_rss, ratios = state, peak, "| 1.00 | 1.00 |"
            else:
                ratios = f"| **{state / ddp_state:.2f}** | {peak / ddp_rss:.2f} |"
            ref = _mean(ranks, "ref_bytes") if trainer_kind == "grpo" else None
            lines.append(
                f"| {trainer_kind.upper()} | {'FSDP2' if strategy == 'fsdp2' else 'DDP'} "
                f"| {_fmt(_mean(ranks, 'param_bytes') / MIB)} | {_fmt(_mean(ranks, 'grad_bytes') / MIB)} "
                f"| {_fmt(_mean(ranks, 'optim_bytes') / MIB)} | {_fmt(None if ref is None else ref / MIB)} "
                f"| {_fmt(peak, 0)} | {_fmt(_mean(ranks, 'generation_peak_rss_mib'), 0)} {ratios}")
    return "\n".join(lines)


def details(runs: dict, seconds: dict) -> str:
    """Per-process figures (the tables show the mean of the two processes) and each launch's wall time."""
    lines = ["| run | malloc | rank | distributed type | parameters held | peak RSS loading + wrapping MiB "
             "| RSS at train begin MiB | peak RSS train MiB | RSS at generation start MiB "
             "| generation peak RSS MiB | launch wall s |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (trainer_kind, strategy, allocator), ranks in runs.items():
        for r in ranks:
            lines.append(f"| {trainer_kind}/{strategy} | {allocator} | {r['rank']} "
                         f"| {r['distributed_type'].split('.')[-1]} | {r['param_numel']:,} "
                         f"| {_fmt(r['phase_peaks_mib']['setup'], 0)} | {_fmt(r['rss_train_begin_mib'], 0)} "
                         f"| {_fmt(r['peak_rss_train_mib'], 0)} | {_fmt(r['generation_start_rss_mib'], 0)} "
                         f"| {_fmt(r['generation_peak_rss_mib'], 0)} "
                         f"| {seconds.get((trainer_kind, strategy, allocator), 0):.0f} |")
    return "\n".join(lines)


def report(runs: dict, seconds: dict, total: float, allocators) -> str:
    full = runs["sft", "ddp", allocators[0]][0]["param_numel"]
    sharded = sum(r["param_numel"] for r in runs["sft", "fsdp2", allocators[0]])
    text = [
        "# Memory per process: FSDP2 vs DDP (2 CPU processes, `tiny:llama-50m`)",
        "",
        "```",
        COMMAND,
        "```",
        "",
        f"`{MODEL}`: {full:,} parameters ({full * 4 / MIB:.0f} MiB in float32); under FSDP2 each process holds "
        f"half ({sharded:,} together). 2 CPU processes (gloo), float32, AdamW, one `accelerate launch` per row: "
        "plain data parallel (`--multi_gpu --num_processes 2`) or `--config_file examples/accelerate/fsdp2.yaml`. "
        "SFT: batch 4 per process, max_length 128, 3 steps. GRPO: 8 completions per process (2 prompts x "
        "num_generations 4), max_completion_length 16, beta 0.1 (frozen reference copy), 2 steps, reward = "
        "distinct characters. Mean of the two processes.",
        "",
        "* params / grads / optimizer / reference: bytes of the tensors this process holds (a DTensor counts its "
        "local shard); gradients in `on_pre_optimizer_step` (after the backward, before the step and "
        "`zero_grad`), optimizer state after training. DDP's reducer buckets (a second full-size, flat gradient "
        "buffer) are not parameters' `.grad` and are not counted.",
        "* peak RSS: `VmHWM` (reset through `/proc/self/clear_refs`) from `on_train_begin` (model already wrapped "
        "and sharded) to the end of training. It is the whole process -- Python, torch, transformers, tokenizer, "
        "data, allocator slack -- so it shrinks by much less than the tensors. Generation phase: the same, "
        "during each `trainer.sample` (rollout batch; under FSDP2 the full weights are gathered there), the "
        "highest of the rollout batches.",
    ]
    for allocator in allocators:
        setting = ALLOCATORS[allocator]
        title = ("glibc malloc as it comes" if not setting else
                 "with " + " ".join(f"`{k}={v}`" for k, v in setting.items()) + " (a fixed 128 KiB mmap threshold: "
                 "freed tensors go back to the OS at once, so RSS tracks the live tensors)")
        text += ["", f"### {title}", "", table(runs, allocator)]
    text += ["", "### Per process", "", details(runs, seconds), "",
             f"Wall time of the {len(runs)} launches: {total:.0f} s.", ""]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=4, metavar=("TRAINER", "STRATEGY", "ALLOCATOR", "OUT_DIR"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "distributed_memory.md"))
    parser.add_argument("--allocators", default=",".join(ALLOCATORS), help="glibc malloc settings to run: "
                        + ", ".join(ALLOCATORS))
    parser.add_argument("--runs-dir", default=None, help="where the per-process JSON go (default: a temporary folder)")
    opts = parser.parse_args()
    if opts.worker:
        worker(*opts.worker)
        return

    import tempfile

    allocators = opts.allocators.split(",")
    out_dir = opts.runs_dir or tempfile.mkdtemp(prefix="distributed_memory-")
    os.makedirs(out_dir, exist_ok=True)
    seconds = {}
    total = time.perf_counter()
    for allocator in allocators:
        for trainer_kind in TRAINERS:
            for strategy in STRATEGIES:
                print(f"{trainer_kind}/{strategy}/{allocator} ...", flush=True)
                seconds[trainer_kind, strategy, allocator] = launch(trainer_kind, strategy, allocator, out_dir)
                print(f"  {seconds[trainer_kind, strategy, allocator]:.0f} s", flush=True)
    total = time.perf_counter() - total
    text = report(load(out_dir, allocators), seconds, total, allocators)
    with open(opts.output, "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
