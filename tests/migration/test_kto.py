"""KTOTrainer as TRL 1.16 documents it: unpaired prompt/completion/label rows (and TRL's conversion of paired
preference rows). The reference-free first step of KTO is a constant (0.5 x the weights) with the policy
as its own reference, so cases give ``ref_model`` from another checkpoint or compare the second step."""

from __future__ import annotations

import pytest
from datasets import Dataset

from .harness import LIBS, check, common_args

PROMPTS = ["What is two plus two?", "Name a colour.", "Say hello.", "Count to three."]
COMPLETIONS = ["Two plus two is four.", "A dog.", "Hello there!", "Three, one."]
LABELS = [True, False, True, False]


def unpaired_rows():
    return Dataset.from_dict({"prompt": PROMPTS, "completion": COMPLETIONS, "label": LABELS})


def reference(models):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(models.causal_ref)


def kto(lib, models, out_dir, ref_model=None, dataset=None, **config):
    args = lib.KTOConfig(**common_args(out_dir, **{"max_length": 64, **config}))
    trainer = lib.KTOTrainer(model=models.causal, ref_model=ref_model, args=args,
                             train_dataset=dataset if dataset is not None else unpaired_rows())
    trainer.train()
    return trainer.state.log_history


def given_ref_model(lib, models, out_dir):
    return kto(lib, models, out_dir, ref_model=reference(models))


def weights(lib, models, out_dir):
    return kto(lib, models, out_dir, ref_model=reference(models), desirable_weight=1.33, undesirable_weight=0.5)


def default(lib, models, out_dir):
    history = kto(lib, models, out_dir, max_steps=2, learning_rate=1e-3)
    return [e for e in history if "loss" in e][1:]


def conversational(lib, models, out_dir):
    rows = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}],
             "label": l} for p, c, l in zip(PROMPTS, COMPLETIONS, LABELS)]
    return kto(lib, models, out_dir, ref_model=reference(models), dataset=Dataset.from_list(rows))


CASES = {f.__name__: f for f in (given_ref_model, weights, default, conversational)}


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("case", CASES)
def test_kto(case, lib, models, tmp_path_factory):
    check(f"kto/{case}", CASES[case], lib, models, tmp_path_factory)
