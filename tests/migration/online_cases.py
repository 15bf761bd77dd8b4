"""GRPO and RLOO cases (one set of scripts, the trainer's name a parameter), as TRL 1.16 documents them: reward
functions ``def reward(completions, **kwargs)``, conversational prompts, extra dataset columns passed to the
reward functions as keyword arguments, several reward functions with ``reward_weights``.

What can agree. Both libraries sample with transformers' ``generate`` from the same prompts (same order:
TRL's RepeatSampler and posttrain both take ``randperm(generator=manual_seed(seed))``), with the same left
padding and generation settings, on the global torch RNG. TRL's first ``generate`` runs one 64-bit draw after
``set_seed(seed)``: the draw a DataLoader makes for its base seed when the epoch's iterator is created. With the
RNG at the same state the first generation's completions are identical token for token, and so are its
rewards and every loss computed on it. So the cases compare:

- ``reward`` of the first step (the mean reward of the first generation): sampling plus the reward-function
  calling convention;
- the loss of the *second* optimizer step with ``num_iterations=2`` (the second pass over the first
  generation, after one update: importance ratios != 1, and with ``beta > 0`` a non-zero KL). The first
  step's loss proves little: on-policy the ratio is 1 and group advantages sum to 0, so it is 0 whenever
  the completions have equal lengths (a tiny random model rarely samples eos: they all run to the limit).

Later generations are not compared (the two libraries consume the RNG differently between generations).
The reward functions assert the keyword arguments TRL documents (``prompts``, ``completions``,
``completion_ids``, ``trainer_state`` and the dataset's extra columns).
"""

from __future__ import annotations

from datasets import Dataset

from .harness import common_args

PROMPTS = ["The cat sat", "Once upon a time", "Rain fell", "A quick fox"]
TARGETS = ["mat", "princess", "town", "dog"]
DOCUMENTED_KWARGS = {"prompts", "completion_ids", "trainer_state"}


def text(completion):
    return completion if isinstance(completion, str) else completion[0]["content"]


def reward_len(completions, **kwargs):
    """TRL's documentation example: prefer completions of 20 characters."""
    missing = DOCUMENTED_KWARGS - set(kwargs)
    assert not missing, f"reward function not given {sorted(missing)}; got {sorted(kwargs)}"
    return [-abs(20 - len(text(c))) for c in completions]


def reward_vowels(completions, **kwargs):
    return [float(sum(ch in "aeiou" for ch in text(c))) for c in completions]


def reward_target(completions, ground_truth, source, **kwargs):
    """Extra dataset columns arrive as keyword arguments, one value per completion."""
    assert len(ground_truth) == len(completions) and len(source) == len(completions)
    return [float(sum(ch in t for ch in text(c))) + (0.5 if s == "web" else 0.0)
            for c, t, s in zip(completions, ground_truth, source)]


def train(lib, trainer_name, models, out_dir, reward_funcs, dataset, **config):
    settings = dict(per_device_train_batch_size=4, num_generations=2, max_completion_length=8)
    settings.update(config)
    args = getattr(lib, f"{trainer_name}Config")(**common_args(out_dir, **settings))
    trainer = getattr(lib, f"{trainer_name}Trainer")(model=models.causal, reward_funcs=reward_funcs, args=args,
                                                    train_dataset=dataset)
    trainer.train()
    return trainer.state.log_history


def second_loss(history):
    return [e for e in history if "loss" in e][1:]


def make_cases(trainer_name):
    def standard(lib, models, out_dir):
        return train(lib, trainer_name, models, out_dir, reward_len, Dataset.from_dict({"prompt": PROMPTS}))

    def conversational(lib, models, out_dir):
        rows = [{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS]
        return train(lib, trainer_name, models, out_dir, reward_len, Dataset.from_list(rows))

    def extra_columns(lib, models, out_dir):
        rows = Dataset.from_dict({"prompt": PROMPTS, "ground_truth": TARGETS, "source": ["web", "book"] * 2})
        return train(lib, trainer_name, models, out_dir, reward_target, rows)

    def reward_weights(lib, models, out_dir):
        return train(lib, trainer_name, models, out_dir, [reward_len, reward_vowels],
                     Dataset.from_dict({"prompt": PROMPTS}), reward_weights=[1.0, 0.5])

    def second_iteration_loss(lib, models, out_dir):
        """Loss of the second pass over the first generation (num_iterations=2), with a KL term."""
        history = train(lib, trainer_name, models, out_dir, reward_len, Dataset.from_dict({"prompt": PROMPTS}),
                        max_steps=2, num_iterations=2, beta=0.04, learning_rate=1e-3)
        return second_loss(history)

    # case name -> (script, the logged key compared)
    return {"standard": (standard, "reward"), "conversational": (conversational, "reward"),
            "extra_columns": (extra_columns, "reward"), "reward_weights": (reward_weights, "reward"),
            "second_iteration_loss": (second_iteration_loss, "loss")}
