"""Value-head PPO throughput of TRL 0.11.4 (classic ``PPOTrainer.step`` API): the baseline for posttrain's PPO.

Run with the python of the venv built by ``benchmarks/trl011_env.py`` (``ensure_env()``), on a model dir
made loadable by transformers 4.46 with ``prepare_model_dir()``:

    .venv-trl011/bin/python benchmarks/ppo_trl011.py --model_dir DIR --prompts prompts.jsonl \
        --batch_size 8 --mini_batch_size 4 --ppo_epochs 4 --max_new_tokens 16 --steps 3 --warmup 1 \
        --seed 0 --output result.json

Method. The policy is ``AutoModelForCausalLMWithValueHead.from_pretrained(model_dir)`` (fp32, TRL's
default value head: a freshly initialised linear layer after dropout ``summary_dropout_prob`` = 0.1,
seeded); the reference is ``trl.create_reference_model(policy)``, a frozen full copy. ``PPOConfig``: fp32,
no tracker (``log_with=None``), learning rate 1e-5, ``init_kl_coef`` 0.2, adaptive KL off unless
``--adaptive_kl``, every other field TRL's default (all recorded under ``"config"``). Each step takes the
next ``batch_size`` prompts of the file (in order, wrapping around), tokenizes each without padding and
samples ALL of them in one ``ppo_trainer.generate`` call (``batch_size=batch_size``, left padding by TRL)
with ``do_sample=True, top_k=0, top_p=1.0, temperature=1.0``. Every response is forced to exactly
``max_new_tokens`` tokens with ``min_new_tokens=max_new_tokens`` (generate then masks the EOS logit, so
no response stops early and TRL's EOS truncation never fires; this is asserted). The reward is cheap
and deterministic: the fraction of distinct token ids in the response (a 0-dim float32 tensor per
episode). Then ``ppo_trainer.step(queries, responses, rewards)``. The first ``warmup`` steps are not
timed; each timed step runs, by ``time.perf_counter``, from just before tokenizing its prompts to the
return of ``step`` (generation + reward + PPO update). episodes_per_second = batch_size * timed steps /
the sum of the timed steps' seconds. Generation and update seconds are also recorded separately.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_DISABLED", "true")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import accelerate  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from transformers import AutoTokenizer, set_seed  # noqa: E402
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, create_reference_model  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)  # "PPOTrainer is deprecated" etc.
warnings.filterwarnings("ignore", category=UserWarning)


UNUSED_CONFIG = {"exp_name", "task_name", "model_name", "query_dataset", "reward_model", "tracker_project_name", "steps"}


def distinct_fraction(response: torch.Tensor) -> torch.Tensor:
    """Reward: the fraction of distinct token ids in a response (deterministic, ~free to compute)."""
    return torch.tensor(len(set(response.tolist())) / max(1, response.numel()), dtype=torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--prompts", required=True, help='JSONL file of {"prompt": str} rows')
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--mini_batch_size", type=int, default=4)
    ap.add_argument("--ppo_epochs", type=int, default=4)
    ap.add_argument("--max_new_tokens", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adaptive_kl", action="store_true", help="adaptive KL controller (default: fixed KL)")
    ap.add_argument("--output", default="result.json")
    args = ap.parse_args()

    with open(args.prompts) as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
    if not prompts:
        raise SystemExit(f"no prompts in {args.prompts}")

    set_seed(args.seed)  # seeds the value head's initialisation too
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLMWithValueHead.from_pretrained(args.model_dir, torch_dtype=torch.float32)
    ref_model = create_reference_model(model)
    config = PPOConfig(
        seed=args.seed, log_with=None, learning_rate=1e-5, init_kl_coef=0.2, adap_kl_ctrl=args.adaptive_kl,
        batch_size=args.batch_size, mini_batch_size=args.mini_batch_size, ppo_epochs=args.ppo_epochs,
        gradient_accumulation_steps=1,
    )
    ppo_trainer = PPOTrainer(config=config, model=model, ref_model=ref_model, tokenizer=tokenizer)
    gen_kwargs = dict(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, do_sample=True,
        top_k=0, top_p=1.0, temperature=1.0, pad_token_id=tokenizer.pad_token_id,
    )

    step_s, gen_s, train_s, rewards_mean, kl = [], [], [], [], []
    n = args.batch_size
    for step in range(args.warmup + args.steps):
        rows = [prompts[(step * n + i) % len(prompts)] for i in range(n)]
        t0 = time.perf_counter()
        queries = [tokenizer(p, return_tensors="pt").input_ids[0] for p in rows]
        responses = ppo_trainer.generate(queries, return_prompt=False, batch_size=n, **gen_kwargs)
        t1 = time.perf_counter()
        bad = [len(r) for r in responses if len(r) != args.max_new_tokens]
        if bad:
            raise RuntimeError(f"responses not of length {args.max_new_tokens}: {bad}")
        rewards = [distinct_fraction(r) for r in responses]
        stats = ppo_trainer.step(queries, responses, rewards)
        t2 = time.perf_counter()
        if step >= args.warmup:
            step_s.append(t2 - t0)
            gen_s.append(t1 - t0)
            train_s.append(t2 - t1)
        rewards_mean.append(float(torch.stack(rewards).mean()))
        kl.append(float(stats["objective/kl"]))
        print(f"step {step}{' (warmup)' if step < args.warmup else ''}: {t2 - t0:.3f}s "
              f"(generate {t1 - t0:.3f}s) reward {rewards_mean[-1]:.3f} kl {kl[-1]:.4f}", flush=True)

    total = sum(step_s)
    result = {
        "library": "trl-0.11.4",
        "episodes_per_second": (n * len(step_s)) / total if total else None,
        "step_seconds": step_s,
        "generate_seconds": gen_s,
        "train_seconds": train_s,
        "episodes_per_step": n,
        "timed_steps": len(step_s),
        "warmup_steps": args.warmup,
        "reward_mean_per_step": rewards_mean,
        "kl_per_step": kl,
        "args": vars(args),
        "method": {
            "adaptive_kl": args.adaptive_kl,
            "force_length": "min_new_tokens=max_new_tokens (EOS logit masked until max_new_tokens)",
            "generation": {k: v for k, v in gen_kwargs.items()},
            "reward": "fraction of distinct token ids in the response",
            "reference": "trl.create_reference_model(policy): frozen full copy",
            "value_head_dropout": float(getattr(model.v_head.dropout, "p", 0.0)),
            "dtype": str(next(model.parameters()).dtype),
        },
        "config": {k: v for k, v in config.to_dict().items()  # minus fields PPOTrainer never reads
                   if isinstance(v, (int, float, str, bool, type(None))) and k not in UNUSED_CONFIG},
        "versions": {
            "trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
            "accelerate": accelerate.__version__, "tokenizers": tokenizers.__version__,
            "python": platform.python_version(),
        },
        "torch_threads": torch.get_num_threads(),
        "device": str(ppo_trainer.current_device),
    }
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("library", "episodes_per_second", "step_seconds")}))


if __name__ == "__main__":
    main()
