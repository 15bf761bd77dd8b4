"""SFTTrainer as TRL 1.16's documentation uses it: each case's script runs unchanged under ``trl`` and
``posttrain``; the first logged loss must agree to 1e-5 (see harness.py)."""

from __future__ import annotations

import pytest
from datasets import Dataset

from .harness import LIBS, check, common_args

TEXT = ["The cat sat on the mat and looked at the door.", "A quick brown fox jumps over the lazy dog.",
        "Rain fell on the town all night long.", "She read the letter twice before she answered it."]
PROMPTS = ["What is two plus two?", "Name a colour.", "Say hello.", "Count to three."]
ANSWERS = ["Two plus two is four.", "Blue is a colour.", "Hello there!", "One, two, three."]


def text_rows():
    return Dataset.from_dict({"text": TEXT})


def sft(lib, model_dir, out_dir, dataset, **config):
    trainer_kwargs = {k: config.pop(k) for k in ("formatting_func", "peft_config") if k in config}
    args = lib.SFTConfig(**common_args(out_dir, **{"max_length": 64, **config}))
    trainer = lib.SFTTrainer(model=model_dir, args=args, train_dataset=dataset, **trainer_kwargs)
    trainer.train()
    return trainer.state.log_history


def language_modeling(lib, models, out_dir):
    return sft(lib, models.causal, out_dir, text_rows())


def messages(lib, models, out_dir):
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
            for p, a in zip(PROMPTS, ANSWERS)]
    return sft(lib, models.causal, out_dir, Dataset.from_list(rows))


def prompt_completion(lib, models, out_dir):
    return sft(lib, models.causal, out_dir, Dataset.from_dict({"prompt": PROMPTS, "completion": ANSWERS}))


def conversational_prompt_completion(lib, models, out_dir):
    rows = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": a}]}
            for p, a in zip(PROMPTS, ANSWERS)]
    return sft(lib, models.causal, out_dir, Dataset.from_list(rows))


def dataset_text_field(lib, models, out_dir):
    return sft(lib, models.causal, out_dir, Dataset.from_dict({"content": TEXT}), dataset_text_field="content")


def formatting_func(lib, models, out_dir):
    rows = Dataset.from_dict({"question": PROMPTS, "answer": ANSWERS})
    return sft(lib, models.causal, out_dir, rows,
               formatting_func=lambda row: f"Question: {row['question']}\nAnswer: {row['answer']}")


def extra_columns(lib, models, out_dir):
    rows = Dataset.from_dict({"id": [0, 1, 2, 3], "prompt": PROMPTS, "completion": ANSWERS,
                              "source": ["web", "book", "web", "chat"]})
    return sft(lib, models.causal, out_dir, rows)


def packing(lib, models, out_dir):
    return sft(lib, models.causal, out_dir, text_rows(), packing=True, max_length=32)


def padding_free(lib, models, out_dir):
    # TRL: padding-free without packing does not enforce max_length (it raises unless max_length=None)
    return sft(lib, models.causal, out_dir, text_rows(), padding_free=True, max_length=None)


def lora(lib, models, out_dir):
    from peft import LoraConfig

    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        task_type="CAUSAL_LM")
    return sft(lib, models.causal, out_dir, Dataset.from_dict({"prompt": PROMPTS, "completion": ANSWERS}),
               peft_config=config)


def lora_two_steps(lib, models, out_dir):
    """The second step: the first is the base model's loss (LoRA's B starts at 0), the second shows the update."""
    from peft import LoraConfig

    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        task_type="CAUSAL_LM")
    history = sft(lib, models.causal, out_dir, Dataset.from_dict({"prompt": PROMPTS, "completion": ANSWERS}),
                  peft_config=config, max_steps=2, learning_rate=1e-3)
    return [e for e in history if "loss" in e][1:]


def two_steps(lib, models, out_dir):
    """The second step's loss, at the default learning rate: the update itself (defaults, AdamW, schedule) matches."""
    history = sft(lib, models.causal, out_dir, text_rows(), max_steps=2)
    return [e for e in history if "loss" in e][1:]


CASES = {f.__name__: f for f in (language_modeling, messages, prompt_completion, conversational_prompt_completion,
                                 dataset_text_field, formatting_func, extra_columns, packing, padding_free, lora,
                                 lora_two_steps, two_steps)}


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("case", CASES)
def test_sft(case, lib, models, tmp_path_factory):
    check(f"sft/{case}", CASES[case], lib, models, tmp_path_factory)
