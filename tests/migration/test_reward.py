"""RewardTrainer as TRL 1.16 documents it, on a one-label sequence classifier (``models.seq_cls``)."""

from __future__ import annotations

import pytest
from datasets import Dataset

from .harness import LIBS, check, common_args

PROMPTS = ["What is two plus two?", "Name a colour.", "Say hello.", "Count to three."]
CHOSEN = ["Two plus two is four.", "Blue is a colour.", "Hello there!", "One, two, three."]
REJECTED = ["It is five.", "A dog.", "Go away.", "Three, one."]


def reward(lib, models, out_dir, dataset, **config):
    args = lib.RewardConfig(**common_args(out_dir, **{"max_length": 64, **config}))
    trainer = lib.RewardTrainer(model=models.seq_cls, args=args, train_dataset=dataset)
    trainer.train()
    return trainer.state.log_history


def explicit_prompt(lib, models, out_dir):
    return reward(lib, models, out_dir, Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN,
                                                           "rejected": REJECTED}))


def implicit_prompt(lib, models, out_dir):
    chosen = [f"{p} {a}" for p, a in zip(PROMPTS, CHOSEN)]
    rejected = [f"{p} {a}" for p, a in zip(PROMPTS, REJECTED)]
    return reward(lib, models, out_dir, Dataset.from_dict({"chosen": chosen, "rejected": rejected}))


def conversational(lib, models, out_dir):
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in zip(PROMPTS, CHOSEN, REJECTED)]
    return reward(lib, models, out_dir, Dataset.from_list(rows))


def conversational_implicit(lib, models, out_dir):
    rows = [{"chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
             "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
            for p, c, r in zip(PROMPTS, CHOSEN, REJECTED)]
    return reward(lib, models, out_dir, Dataset.from_list(rows))


def margin(lib, models, out_dir):
    return reward(lib, models, out_dir, Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED,
                                                           "margin": [1.0, 0.5, 2.0, 0.0]}))


def center_rewards(lib, models, out_dir):
    return reward(lib, models, out_dir, Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN,
                                                           "rejected": REJECTED}),
                  center_rewards_coefficient=0.01)


def two_steps(lib, models, out_dir):
    """The second step's loss at the default learning rate (TRL's RewardConfig: 1e-4)."""
    history = reward(lib, models, out_dir, Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN,
                                                              "rejected": REJECTED}), max_steps=2)
    return [e for e in history if "loss" in e][1:]


CASES = {f.__name__: f for f in (explicit_prompt, implicit_prompt, conversational, conversational_implicit, margin,
                                 center_rewards, two_steps)}


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("case", CASES)
def test_reward(case, lib, models, tmp_path_factory):
    check(f"reward/{case}", CASES[case], lib, models, tmp_path_factory)
