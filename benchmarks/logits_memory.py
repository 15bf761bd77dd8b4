"""Peak memory and time of the log-probs SFT and DPO train on, with a real-size vocabulary: the output layer
run at every position (full logits, then select), only at the positions that predict a labelled token
(``logits_to_keep`` mask; posttrain before chunking), and chunked from the hidden states with the backward
recomputing each chunk (``_OutputLayerLogps``, what posttrain does now). Each variant runs in a fresh process.

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
            "kept": "output layer only where a labelled token is predicted (posttrain before chunking)",
            "chunked": "... and chunked from the hidden states, recomputed in the backward (posttrain)"}
TASKS = {"sft": "SFT (every token labelled)", "dpo": "DPO answers (the last {answer} tokens of each row)"}


def child(variant: str, task: str, vocab: int, batch: int, length: int, prompt: int) -> dict:
    import torch
    import transformers

    from posttrain.losses import logprobs

    if variant == "full":
        logprobs.takes_logits_to_keep = lambda model: False  # force the full-logits path
    if variant in ("full", "kept"):
        logprobs.fusable_output_layer = lambda model: None  # no chunking
    if task == "sft":
        prompt = 0
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, vocab, (batch, length))
    answer = torch.cat([torch.zeros(batch, prompt, dtype=torch.long), torch.ones(batch, length - prompt, dtype=torch.long)], 1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": answer}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if task == "sft":  # what SFTTrainer.compute_loss runs
        sums = logprobs.labelled_logps(model, ids, input_ids=ids, attention_mask=inputs["attention_mask"]).logps
    else:  # what DPO and KTO run (one row per answer)
        sums, _ = logprobs.answer_logps(model, inputs)
    sums.sum().backward()
    seconds = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    grad_norm = sum(p.grad.double().norm() ** 2 for p in model.parameters() if p.grad is not None) ** 0.5
    return {"variant": variant, "task": task, "peak_mib": peak, "seconds": seconds, "logp_sum": sums.sum().item(),
            "grad_norm": float(grad_norm)}


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
        variant, task = args.child.split(",")
        print(json.dumps(child(variant, task, *map(int, shape))))
        return
    results = {}
    for task in TASKS:
        for variant in VARIANTS:
            done = subprocess.run([sys.executable, __file__, "--child", f"{variant},{task}", "--vocab", shape[0],
                                   "--batch", shape[1], "--length", shape[2], "--prompt", shape[3]],
                                  capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{variant} {task} failed:\n{done.stderr[-3000:]}")
            results[task, variant] = json.loads(done.stdout.strip().splitlines()[-1])
    lines = [
        "## Log-probs with a real-size vocabulary: SFT and DPO",
        "",
        f"Forward + backward of the log-probs each trainer trains on, on a 2-layer Llama (hidden 64, tied "
        f"embeddings) with vocabulary {args.vocab}, batch {args.batch} x {args.length} tokens (CPU, float32, peak "
        f"resident memory above the loaded model, each in a fresh process). SFT labels every token "
        f"(`labelled_logps`); DPO labels the last {args.length - args.prompt} tokens of each row (`answer_logps`). "
        f"Command: `python benchmarks/logits_memory.py --output benchmarks/logits_memory.md`.",
        "",
        "| task | variant | peak memory (MiB) | time (s) | summed log-prob | gradient norm |",
        "|---|---|---:|---:|---:|---:|",
        *[f"| {TASKS[t].format(answer=args.length - args.prompt)} | {VARIANTS[v]} | {r['peak_mib']:.0f} | "
          f"{r['seconds']:.2f} | {r['logp_sum']:.3f} | {r['grad_norm']:.6f} |" for (t, v), r in results.items()],
        "",
        *[f"- {t.upper()}: chunked uses **{results[t, 'kept']['peak_mib'] / results[t, 'chunked']['peak_mib']:.1f}x less "
          f"memory** than the kept-positions logits ({results[t, 'full']['peak_mib'] / results[t, 'chunked']['peak_mib']:.1f}x "
          f"less than full logits) and takes {results[t, 'chunked']['seconds'] / results[t, 'kept']['seconds']:.2f}x "
          f"the time; the summed log-probs differ by "
          f"{abs(results[t, 'chunked']['logp_sum'] - results[t, 'kept']['logp_sum']):.1e}." for t in TASKS],
        "",
    ]
    print("\n".join(lines))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
