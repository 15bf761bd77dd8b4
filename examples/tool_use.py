"""Tool use, offline in about a minute: a tiny model learns to answer two-digit multiplications -- which it
cannot do in its head -- by calling the calculator.

1. SFT on 400 demonstrations: ``37*24=`` -> ``<call>calculator(37*24)</call><result>888</result>888``.
2. GRPO in a TextEnvironment with the calculator: the model writes the call, the environment runs the
   tool and appends ``<result>...</result>`` (no policy loss on those tokens), the model then answers.
   Reward: ``final_answer`` (the number after the last tool result equals the ``answer`` column).
3. Accuracy on held-out problems (pairs seen in neither SFT nor RL), before and after RL.

    python examples/tool_use.py [--output_dir runs/tool-use] [--grpo_steps 60]

The same RL step from the command line (after the SFT):
    posttrain grpo --model_name_or_path runs/tool-use/sft --dataset_name problems.jsonl --env calculator \\
        --reward_funcs final_answer --num_generations 8 --per_device_train_batch_size 64 \\
        --max_completion_length 24 --temperature 0.7
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from posttrain import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer, load_model
from posttrain.data import toy
from posttrain.eval.policy import evaluate_policy
from posttrain.rollout.environment import calculator_environment


def greedy_accuracy(grpo: GRPOTrainer, rows: list[dict]) -> float:
    """Mean reward of greedy episodes on ``rows``: the calculator environment at temperature 0, evaluated as
    ``grpo.evaluate`` does (same seed and chunks)."""
    env = calculator_environment().bind(grpo.tokenizer, dataclasses.replace(grpo.args.sampling(), temperature=0),
                                        max_prompt_length=grpo.args.max_prompt_length)
    return evaluate_policy(grpo.model, grpo.tokenizer, [r["prompt"] for r in rows], grpo.rewards,
                           columns={"answer": [r["answer"] for r in rows]}, sampler=env, seed=grpo.args.seed + 1,
                           batch_size=grpo.args.per_device_eval_batch_size, trainer_state=grpo.state)["reward"]


def run(output_dir: str = "runs/tool-use", sft_steps: int = 150, grpo_steps: int = 60, seed: int = 42) -> dict:
    """SFT then GRPO; returns held-out accuracy before/after (sampled at 0.7 and greedy) and the reward curve.

    ``seed`` seeds training (weights, data order, sampling); the problems are fixed. How well 150 SFT steps
    teach a model this small to copy numbers varies a lot with the seed (greedy held-out accuracy 0.09,
    1.00 and 0.33 for seeds 0, 1 and 42 after 250 steps): 42 leaves room for RL to show what it adds.
    """
    demos = toy.tool_problems(400, seed=0, demonstrate=True)
    train = toy.tool_problems(1000, seed=1)
    seen = {r["prompt"] for r in demos + train}
    held_out = [r for r in toy.tool_problems(64, seed=2) if r["prompt"] not in seen]

    sft_dir = os.path.join(output_dir, "sft")
    sft = SFTTrainer("tiny:llama", SFTConfig(
        output_dir=sft_dir, max_steps=sft_steps, per_device_train_batch_size=16, learning_rate=3e-3,
        lr_scheduler_type="constant", save_strategy="no", report_to=[], logging_steps=50, seed=seed),
        train_dataset=[{"prompt": r["prompt"], "completion": r["completion"]} for r in demos])
    sft.train()
    sft.save_model(sft_dir)

    # Each GRPO step: 8 prompts x 8 episodes (one micro-batch of 64), one optimizer step; a constant learning rate.
    grpo = GRPOTrainer(load_model(sft_dir), ["final_answer"], args=GRPOConfig(
        output_dir=os.path.join(output_dir, "grpo"), max_steps=grpo_steps, per_device_train_batch_size=8 * 8,
        num_generations=8, max_completion_length=24, temperature=0.7, learning_rate=5e-4,
        lr_scheduler_type="constant", logging_steps=5, per_device_eval_batch_size=8, save_strategy="no",
        report_to="none", seed=seed),
        train_dataset=train, rollout_source=calculator_environment())
    results = {"held_out": len(held_out)}
    results["before"] = {"sampled": grpo.evaluate(held_out)["eval_reward"], "greedy": greedy_accuracy(grpo, held_out)}
    grpo.train()
    grpo.save_model()
    results["after"] = {"sampled": grpo.evaluate(held_out)["eval_reward"], "greedy": greedy_accuracy(grpo, held_out)}
    results["curve"] = [e["reward"] for e in grpo.state.log_history if "reward" in e]  # not the eval_ entries
    sample = grpo.sample([0], with_logprobs=False)
    results["example"] = (grpo.train_prompts.values[0]
                          + grpo.tokenizer.decode(sample.completion_lists()[0], skip_special_tokens=True))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/tool-use", help="Where the SFT and GRPO models go.")
    parser.add_argument("--sft_steps", type=int, default=150, help="SFT steps on the demonstrations.")
    parser.add_argument("--grpo_steps", type=int, default=60, help="GRPO steps in the environment.")
    parser.add_argument("--seed", type=int, default=42, help="Seed for training (weights, order, sampling).")
    args = parser.parse_args()
    r = run(args.output_dir, args.sft_steps, args.grpo_steps, args.seed)
    print(f"held-out accuracy on {r['held_out']} unseen multiplications (temperature 0.7 / greedy): "
          f"{r['before']['sampled']:.3f} / {r['before']['greedy']:.3f} after SFT -> "
          f"{r['after']['sampled']:.3f} / {r['after']['greedy']:.3f} after GRPO with the calculator")
    print("train reward, mean of every 5 steps:", " ".join(f"{v:.2f}" for v in r["curve"]))
    print("example episode:", r["example"])


if __name__ == "__main__":
    main()
