"""Peak memory and time of answer log-probs with a real-size vocabulary: the output layer run at every
position (full logits, then select) against only at the positions that predict an answer token
(``logits_to_keep`` mask, what posttrain does). Each variant runs in a fresh process.

    python benchmarks/logits_memory.py --output benchmarks/logits_memory.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = {"full": "output layer at every position (full logits)",
            "kept": "output layer only where an answer token is predicted (posttrain)"}


def child(variant: str, vocab: int, batch: int, length: int, prompt: int) -> dict:
    import torch
    import transformers

    from posttrain.losses import logprobs

    if variant == "full":
        logprobs.takes_logits_to_keep = lambda model: False  # force the full-logits path
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, vocab, (batch, length))
    answer = torch.cat([torch.zeros(batch, prompt, dtype=torch.long), torch.ones(batch, length - prompt, dtype=torch.long)], 1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": answer}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    sums, _ = logprobs.answer_logps(model, inputs)
    sums.sum().backward()
    seconds = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"variant": variant, "peak_mib": peak, "seconds": seconds, "logp_sum": sums.sum().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=151936, help="vocabulary size (default: Qwen2's 151936)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per batch")
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--prompt", type=int, default=200, help="prompt tokens per sequence (the rest is answer)")
    parser.add_argument("--output", default=None, help="also write a markdown section here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = [str(args.vocab), str(args.batch), str(args.length), str(args.prompt)]
    if args.child:
        print(json.dumps(child(args.child, *map(int, shape))))
        return
    results = {}
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--child", variant, "--vocab", shape[0], "--batch", shape[1],
                               "--length", shape[2], "--prompt", shape[3]], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    full, kept = results["full"], results["kept"]
    lines = [
        "## Answer log-probs with a real-size vocabulary",
        "",
        f"Forward + backward of `answer_logps` on a 2-layer Llama with vocabulary {args.vocab}, batch "
        f"{args.batch} x {args.length} tokens of which {args.prompt} are prompt (CPU, float32, peak resident "
        f"memory above the loaded model). Command: `python benchmarks/logits_memory.py --output "
        f"benchmarks/logits_memory.md`.",
        "",
        "| variant | peak memory (MiB) | time (s) | summed log-prob |",
        "|---|---:|---:|---:|",
        *[f"| {VARIANTS[v]} | {r['peak_mib']:.0f} | {r['seconds']:.2f} | {r['logp_sum']:.3f} |" for v, r in results.items()],
        "",
        f"Keeping only the answer positions: **{full['peak_mib'] / kept['peak_mib']:.1f}x less memory**, "
        f"**{full['seconds'] / kept['seconds']:.1f}x faster**, same log-probs.",
        "",
    ]
    print("\n".join(lines))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
