"""ReST (Reinforced Self-Training), offline in about half a minute: a tiny model SFT'd on reviews of mixed
sentiment grows its own data and fine-tunes on the most positive samples, with rising thresholds.

1. SFT on review openings -> continuations of both sentiments.
2. ReST with the VADER sentiment reward: 2 Grow steps (4 samples per prompt, written to
   ``<output_dir>/rest/grow-<g>.jsonl``) x 3 Improve steps (keep samples above the 50th, 70th, 90th
   percentile of the Grow step's rewards; NLL on them), the policy's mean reward measured on held-out
   openings after each Improve step.

    python examples/rest.py [--output_dir runs/rest-example]

The same from the command line (after the SFT):
    posttrain rest --model_name_or_path runs/rest-example/sft --dataset_name examples/data/review_prompts.jsonl \\
        --reward_funcs sentiment --eval_fraction 0.2 --grow_steps 2 --improve_steps 3 --num_generations 4 \\
        --max_completion_length 16 --per_device_train_batch_size 16 --steps_per_generation 8
"""

from __future__ import annotations

import argparse
import os
import random

from posttrain import ReSTConfig, ReSTTrainer, SFTConfig, SFTTrainer, load_model
from posttrain.data import toy


def run(output_dir: str = "runs/rest-example", seed: int = 42, **rest_settings) -> ReSTTrainer:
    """SFT, then ReST; returns the trained ReSTTrainer (``.state.log_history``, ``.table()``)."""
    prompts = sorted({r["prompt"] for r in toy.review_prompts(3000, seed=0)})  # 180 distinct openings
    random.Random(0).shuffle(prompts)
    train, held_out = [{"prompt": p} for p in prompts[:140]], [{"prompt": p} for p in prompts[140:]] * 2

    sft_dir = os.path.join(output_dir, "sft")
    sft = SFTTrainer("tiny:llama", SFTConfig(
        output_dir=sft_dir, max_steps=150, per_device_train_batch_size=32, learning_rate=3e-3, save_strategy="no",
        report_to=[], logging_steps=50, seed=seed), train_dataset=toy.prompt_completion(4000, seed=1, positive=None))
    sft.train()
    sft.save_model(sft_dir)

    # Improve: optimizer steps of 16 kept samples, 2 passes; Grow: 32 prompts x 4 samples per batch (16 x 8);
    # held-out evaluation in chunks of 32 prompts. A checkpoint after every phase (a ReST step is a phase).
    settings = dict(output_dir=os.path.join(output_dir, "rest"), grow_steps=2, improve_steps=3, num_generations=4,
                    max_completion_length=16, learning_rate=1e-4, per_device_train_batch_size=16,
                    steps_per_generation=8, per_device_eval_batch_size=32, num_iterations=2, save_strategy="steps",
                    save_steps=1, report_to="none", seed=seed)
    rest = ReSTTrainer(load_model(sft_dir), ["sentiment"], args=ReSTConfig(**{**settings, **rest_settings}),
                       train_dataset=train, eval_dataset=held_out)
    rest.start_reward = rest.evaluate(held_out)["eval_reward"]
    rest.train()
    rest.save_model()
    return rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/rest-example", help="Where the SFT and ReST models go.")
    parser.add_argument("--seed", type=int, default=42, help="Seed for training (weights, order, sampling).")
    args = parser.parse_args()
    rest = run(args.output_dir, args.seed, disable_tqdm=True)
    print(f"held-out mean VADER sentiment of the SFT model: {rest.start_reward:+.4f}")
    print(rest.table())


if __name__ == "__main__":
    main()
