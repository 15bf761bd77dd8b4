"""Peak memory of LoRA PPO against the LoRA policy alone on the same batch, and full-weight PPO for contrast.

Configurations (each in a fresh process; same model, prompts, batch, mini-batch, epochs and completion
length; completions forced to exactly ``--max_new_tokens`` tokens so every configuration sees the
same shapes):

- ``policy-lora``: the baseline. The LoRA policy alone, written out as the minimal loop: sample the
  batch with ``posttrain.rollout.PolicySampler`` (with its sampling-time log-probs), then the same
  epochs x mini-batches of ``forward_completion`` + a clipped policy-gradient loss + backward + AdamW
  step as PPO. No reference model, no value head.
- ``ppo-lora``: ``PPOTrainer`` with ``peft_config``: the reference is the policy with its adapter
  switched off, the value head trains alongside the adapter.
- ``ppo-full``: full-weight ``PPOTrainer`` with a frozen copy as the reference.

On CPU the figure is the peak resident memory above what the process held after its imports, prompts
and tokenizer (``ru_maxrss`` delta); on a GPU it is ``torch.cuda.max_memory_allocated``: the measurement,
the child processes and the table are ``benchmarks/memory.py``'s, shared with dpo_memory.py. float32, no
gradient checkpointing.

    python benchmarks/ppo_memory.py --output benchmarks/ppo_memory.md
    python benchmarks/ppo_memory.py --quick
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import sys
import tempfile
import time

from memory import method, peak_memory, ratio_table, run_children, target_verdict

CONFIGS = {
    "policy-lora": "LoRA policy alone: sample + forward/backward (the baseline)",
    "ppo-lora": "LoRA PPO: reference = adapter switched off, value head trained",
    "ppo-full": "full-weight PPO: reference = frozen copy, value head trained",
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
LEARNING_RATE = 1e-5
TARGET = 0.15  # LoRA PPO within 15% of the LoRA policy alone


def distinct_reward(prompts, completions, completion_ids=None, **kwargs):
    """Cheap deterministic reward: the fraction of distinct token ids in each completion."""
    return [len(set(ids)) / max(1, len(ids)) for ids in completion_ids]


def prompt_rows(tokenizer, n: int) -> list[dict]:
    """``n`` review-opening prompts, all of the most common token length (identical shapes everywhere)."""
    from posttrain.data import toy
    from posttrain.data.tokenize import tokenize_prompt

    pool = toy.review_prompts(n * 20, seed=0)
    lengths = [len(tokenize_prompt(tokenizer, r["prompt"])) for r in pool]
    length = collections.Counter(lengths).most_common(1)[0][0]
    rows = [r for r, k in zip(pool, lengths) if k == length][:n]
    if len(rows) < n:
        raise RuntimeError(f"only {len(rows)} prompts of {length} tokens; need {n}")
    return rows


def policy_alone(model, tokenizer, rows, a) -> None:
    """The minimal LoRA policy loop with PPO's batch shape: sample, then epochs x mini-batches of
    forward/backward/step. The policy loss is PPO's clipped surrogate on group-free advantages."""
    import peft
    import torch

    from posttrain.losses.rl import clipped_policy_loss
    from posttrain.rollout import PolicySampler, SamplingConfig, forward_completion
    from posttrain.data.tokenize import tokenize_prompt

    torch.manual_seed(0)
    model = peft.get_peft_model(model, peft.LoraConfig(**LORA))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    sampler = PolicySampler(tokenizer, SamplingConfig(max_new_tokens=a.max_new_tokens,
                                                      min_new_tokens=a.max_new_tokens, temperature=1.0))
    ids = [tokenize_prompt(tokenizer, r["prompt"]) for r in rows]
    for step in range(a.steps):
        batch = ids[step * a.batch: (step + 1) * a.batch]
        rollout = sampler(model, batch)
        if int(rollout.completion_mask.sum()) != len(batch) * a.max_new_tokens:
            raise RuntimeError("completions are not all max_new_tokens long")
        scores = torch.tensor(distinct_reward(None, None, rollout.completion_lists()), device=device)
        advantages = (scores - scores.mean()) / (scores.std() + 1e-8)  # one per episode
        for _ in range(a.epochs):
            for mb in torch.randperm(len(rollout)).split(a.mini_batch):
                sub = rollout.select(mb)
                logps, _ = forward_completion(model, sub, 1.0)
                loss, _ = clipped_policy_loss(logps, sub.logprobs, advantages[mb.to(device)],
                                              sub.completion_mask, 0.2, "bnpo")
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)


def ppo(model, tokenizer, rows, a, lora: bool, tmp: str) -> None:
    import peft

    from posttrain import PPOConfig, PPOTrainer

    per_generation = a.batch // a.mini_batch  # mini-batches per generation, one optimizer step each
    args = PPOConfig(output_dir=tmp, max_steps=a.steps * a.epochs * per_generation,
                     per_device_train_batch_size=a.mini_batch, steps_per_generation=per_generation,
                     num_iterations=a.epochs, learning_rate=LEARNING_RATE, max_completion_length=a.max_new_tokens,
                     generation_kwargs={"min_new_tokens": a.max_new_tokens},  # same shapes as the baseline
                     temperature=1.0, top_k=0, top_p=1.0, reference="adapter" if lora else "copy", target_kl=None,
                     lr_scheduler_type="constant", logging_steps=10**9, save_strategy="no", report_to="none",
                     disable_tqdm=True, seed=0)
    trainer = PPOTrainer(model, distinct_reward, args=args, train_dataset=rows, processing_class=tokenizer,
                         peft_config=peft.LoraConfig(**LORA) if lora else None)
    expected = "adapter" if lora else "copy"
    if trainer.reference.strategy != expected:
        raise RuntimeError(f"PPO reference is {trainer.reference.strategy!r}, expected {expected}")
    trainer.train()  # rows come in a seeded order; all have the same length, so every batch has the same shape


def child(name: str, a) -> dict:
    # Everything any configuration needs is imported before the baseline, so baselines are comparable.
    import peft  # noqa: F401
    import torch
    import transformers

    import posttrain  # noqa: F401
    from posttrain import PPOConfig, PPOTrainer, load_model, load_tokenizer  # noqa: F401
    from posttrain.losses.rl import clipped_policy_loss  # noqa: F401
    from posttrain.rollout import PolicySampler, SamplingConfig, forward_completion  # noqa: F401

    transformers.logging.set_verbosity_error()
    tokenizer = load_tokenizer("tiny:llama")
    rows = prompt_rows(tokenizer, a.batch * a.steps)
    tmp = tempfile.mkdtemp(prefix="posttrain-ppo-memory-")
    with peak_memory() as peak:
        model = load_model(a.model, dtype=torch.float32, seed=0)
        start = time.perf_counter()
        if name == "policy-lora":
            policy_alone(model, tokenizer, rows, a)
        else:
            ppo(model, tokenizer, rows, a, lora=name == "ppo-lora", tmp=tmp)
        seconds = time.perf_counter() - start
    return {"config": name, "peak_mib": peak.mib, "device": peak.device, "train_s": seconds}


def report(results: dict, a, command: str) -> str:
    what = method(next(iter(results.values()))["device"])
    verdict = target_verdict(results, "ppo-lora", "policy-lora", "LoRA PPO (adapter-off reference + value head) "
                             "vs the LoRA policy alone on the same batch", TARGET)
    return f"""## PPO peak memory

Measured by [`benchmarks/ppo_memory.py`](benchmarks/ppo_memory.py), one fresh process per configuration
({what}; lower is better): `{a.model}`, {a.batch} prompts per step, mini-batch {a.mini_batch},
{a.epochs} PPO epoch(s), completions of exactly {a.max_new_tokens} tokens (eos masked), {a.steps} step(s),
float32, no gradient checkpointing, AdamW, LoRA r=16 on all linear layers for the LoRA rows. The
baseline is the LoRA policy alone doing the same sampling and the same mini-batch forward/backward passes
with no reference and no value head.

```
{command}
```

{ratio_table(results, CONFIGS, "policy-lora", "LoRA policy alone")}
{verdict}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny:llama-50m")
    parser.add_argument("--batch", type=int, default=16, help="prompts (episodes) per PPO step")
    parser.add_argument("--mini_batch", type=int, default=8, help="episodes per optimizer step")
    parser.add_argument("--epochs", type=int, default=2, help="PPO epochs over each batch")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="every completion's exact length")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"Subset of {','.join(CONFIGS)}.")
    parser.add_argument("--output", default=None, help="Also write the markdown section here.")
    parser.add_argument("--quick", action="store_true",
                        help="Smoke run: 1 step, batch 4, mini-batch 2, 1 epoch, 8 new tokens.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch, args.mini_batch, args.epochs, args.max_new_tokens = 1, 4, 2, 1, 8
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not names or any(c not in CONFIGS for c in names):
        parser.error(f"--configs takes a subset of {','.join(CONFIGS)}")
    flags = ["--model", args.model, "--batch", str(args.batch), "--mini_batch", str(args.mini_batch), "--epochs",
             str(args.epochs), "--max_new_tokens", str(args.max_new_tokens), "--steps", str(args.steps)]
    results = run_children(__file__, names, lambda name: flags, width=12)
    command = " ".join(["python benchmarks/ppo_memory.py", *(shlex.quote(x) for x in sys.argv[1:])])
    text = report(results, args, command)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
