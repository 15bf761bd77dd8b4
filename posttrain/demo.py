"""``posttrain demo``: the offline pipeline on a tiny model, in stages that reuse each other's outputs.

Stages so far: ``sft`` (review openings -> positive continuations), ``reward`` (a reward model
that prefers positive continuations) and ``dpo`` (DPO from the SFT model on the same pairs).
PPO and the report build on these (see the project's issues).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from .cli import run_training, summary
from .config import DataArguments, ModelArguments
from .data import toy
from .trainers import DPOConfig, RewardConfig, SFTConfig

STAGES = {"sft": (SFTConfig, 1e-3), "reward": (RewardConfig, 5e-4), "dpo": (DPOConfig, 5e-4)}  # config, lr


def _write_jsonl(rows: list[dict], path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _common(out: str, steps: int, quick: bool) -> dict:
    return dict(output_dir=out, max_steps=steps, per_device_train_batch_size=16, logging_steps=max(steps // 8, 1),
                save_steps=steps, lr_scheduler_type="cosine", warmup_steps=0, seed=0, report_to="none",
                disable_tqdm=quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posttrain demo", description=__doc__)
    parser.add_argument("--output_dir", default="runs/demo", help="Where every stage writes (default runs/demo).")
    parser.add_argument("--stage", choices=["all", *STAGES], default="all",
                        help="Run one stage alone; it reuses the outputs of earlier stages.")
    parser.add_argument("--model", default="tiny:llama-5m", help="Starting model (default tiny:llama-5m).")
    parser.add_argument("--steps", type=int, default=200, help="Optimizer steps per stage (default 200).")
    parser.add_argument("--quick", action="store_true", help="No progress bars (for tests and CI logs).")
    args = parser.parse_args(argv)
    data_dir = os.path.join(args.output_dir, "data")
    sft_data = _write_jsonl(toy.prompt_completion(800, seed=1), os.path.join(data_dir, "sft.jsonl"))
    pref_data = _write_jsonl(toy.preference_pairs(800, seed=2), os.path.join(data_dir, "preferences.jsonl"))
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    for stage in stages:
        start = time.perf_counter()
        out = os.path.join(args.output_dir, stage)
        print(f"== stage {stage} ==", flush=True)
        if stage == "sft":
            model, data = args.model, DataArguments(dataset=sft_data)
        else:
            model, data = os.path.join(args.output_dir, "sft"), DataArguments(dataset=pref_data, eval_fraction=0.1)
            if not os.path.exists(os.path.join(model, "config.json")):
                print(f"Stage {stage!r} starts from the SFT model in {model}, which is missing. "
                      f"Run first: posttrain demo --stage sft --output_dir {args.output_dir}")
                return 1
        config_cls, learning_rate = STAGES[stage]
        config = config_cls(learning_rate=learning_rate, max_length=128, **_common(out, args.steps, args.quick))
        trainer = run_training(stage, ModelArguments(model=model), data, config)
        losses = [f"{e['loss']:.3f}" for e in trainer.state.log_history if "loss" in e]
        print(f"   loss over training: {' '.join(losses)}")
        print("   " + summary(stage, trainer, time.perf_counter() - start), flush=True)
    return 0
