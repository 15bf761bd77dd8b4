"""Detoxification, offline in about a minute: a tiny model SFT'd on review continuations of which half are
rude (``toy.rude_prompt_completion``, a mild synthetic test corpus) is trained with GRPO against the
``non_toxic`` reward (1 - the probability that alt-profanity-check's classifier, trained on real comments,
flags the text), KL-leashed to the SFT model (beta). Reported on held-out openings the model never saw:
the toxicity rate (completions the classifier flags, p > 0.5) and the KL to the SFT model, before and after.

    pip install 'posttrain[toxicity]'
    python examples/detox.py [--output_dir runs/detox-example]
"""

from __future__ import annotations

import argparse
import os

from posttrain import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer, load_model, load_tokenizer
from posttrain.data import toy
from posttrain.eval.policy import evaluate_policy
from posttrain.rewards import non_toxic, toxicity


def measure(model, tokenizer, prompts, reference=None, seed: int = 1) -> dict:
    """Toxicity rate, mean toxicity and (with a reference) KL in nats per completion on held-out prompts."""
    out = evaluate_policy(model, tokenizer, prompts, {"toxicity": toxicity}, reference=reference,
                          max_new_tokens=16, seed=seed)
    flagged = [s["toxicity"] > 0.5 for s in out["samples"]]
    return {"rate": sum(flagged) / len(flagged), "toxicity": out["toxicity"], "kl_sum": out.get("kl_sum", 0.0),
            "samples": [s["prompt"] + s["completion"] for s in out["samples"][:6]]}


def run(output_dir: str = "runs/detox-example", seed: int = 42, steps: int = 100, beta: float = 0.05) -> dict:
    held_out = toy.held_out_openings(40)
    sft_dir = os.path.join(output_dir, "sft")
    sft = SFTTrainer("tiny:llama", SFTConfig(
        output_dir=sft_dir, max_steps=150, per_device_train_batch_size=32, learning_rate=3e-3, save_strategy="no",
        report_to=[], logging_steps=50, seed=seed, disable_tqdm=True),
        train_dataset=toy.rude_prompt_completion(4000, seed=1, exclude=frozenset(held_out)))
    sft.train()
    sft.save_model(sft_dir)
    tokenizer = load_tokenizer(sft_dir)
    prompts = held_out * 2
    before = measure(load_model(sft_dir), tokenizer, prompts)

    train = [{"prompt": p} for p in sorted(set(toy.all_openings()) - set(held_out))]
    grpo = GRPOTrainer(load_model(sft_dir), [non_toxic], args=GRPOConfig(
        output_dir=os.path.join(output_dir, "grpo"), max_steps=steps, per_device_train_batch_size=32,
        num_generations=8, max_completion_length=16, learning_rate=2e-4, beta=beta, logging_steps=10,
        save_strategy="no", report_to="none", seed=seed, disable_tqdm=True), train_dataset=train,
        processing_class=tokenizer)
    grpo.train()
    grpo.save_model()
    after = measure(grpo.model, tokenizer, prompts, reference=load_model(sft_dir))
    return {"before": before, "after": after, "held_out": len(prompts), "beta": beta, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/detox-example", help="Where the SFT and GRPO models go.")
    parser.add_argument("--seed", type=int, default=42, help="Seed for training (weights, order, sampling).")
    parser.add_argument("--steps", type=int, default=100, help="GRPO optimizer steps.")
    parser.add_argument("--beta", type=float, default=0.05, help="Weight of the KL to the SFT model.")
    args = parser.parse_args()
    result = run(args.output_dir, args.seed, args.steps, args.beta)
    b, a = result["before"], result["after"]
    print(f"held-out completions flagged toxic (p > 0.5), {result['held_out']} samples: {b['rate']:.3f} after SFT "
          f"-> {a['rate']:.3f} after GRPO (mean toxicity {b['toxicity']:.3f} -> {a['toxicity']:.3f}); KL to the SFT "
          f"model {a['kl_sum']:.2f} nats per completion")
    for label, part in (("SFT", b), ("GRPO", a)):
        print(f"{label} samples:\n  " + "\n  ".join(part["samples"]))


if __name__ == "__main__":
    main()
