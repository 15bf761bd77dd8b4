"""DPOTrainer as TRL 1.16 documents it: every loss type, the reference given / implicit (LoRA) / precomputed,
and a weighted combination of losses.

With the policy as its own reference, every DPO-family loss starts at a constant (sigmoid: log 2), so the
loss-type cases pass an explicit ``ref_model`` from another checkpoint (``models.causal_ref``), and the
cases without one compare the *second* step's loss, after one update at ``learning_rate=1e-3``.
"""

from __future__ import annotations

import pytest
from datasets import Dataset

from .harness import LIBS, check, common_args

PROMPTS = ["What is two plus two?", "Name a colour.", "Say hello.", "Count to three."]
CHOSEN = ["Two plus two is four.", "Blue is a colour.", "Hello there!", "One, two, three."]
REJECTED = ["It is five.", "A dog.", "Go away.", "Three, one."]
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down",
              "exo_pair", "discopop", "sft")


def preference_rows():
    return Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED})


def reference(models):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(models.causal_ref)


def dpo(lib, models, out_dir, ref_model=None, dataset=None, peft_config=None, **config):
    args = lib.DPOConfig(**common_args(out_dir, **{"max_length": 64, **config}))
    trainer = lib.DPOTrainer(model=models.causal, ref_model=ref_model, args=args,
                             train_dataset=dataset if dataset is not None else preference_rows(),
                             peft_config=peft_config)
    trainer.train()
    return trainer.state.log_history


def second_loss(history):
    return [e for e in history if "loss" in e][1:]


def make_loss_case(loss_type):
    def case(lib, models, out_dir):
        # TRL: robust needs label smoothing to differ from sigmoid; exo_pair refuses 0 (the EXO paper: 1e-3)
        # sppo_hard: beta 0.5 keeps the loss O(1); at 0.1 it is ~55, and log-probs that agree to ~1e-6 (float32
        # sums over tokens) move it by 2|h - 1/(2 beta)| * 1e-6 ~ 1.5e-5, past the absolute 1e-5.
        extra = {"robust": {"label_smoothing": 0.1}, "exo_pair": {"label_smoothing": 1e-3},
                 "sppo_hard": {"beta": 0.5}}.get(loss_type, {})
        return dpo(lib, models, out_dir, ref_model=reference(models), loss_type=loss_type, **extra)
    case.__name__ = f"loss_{loss_type}"
    return case


def loss_ipo_normalized(lib, models, out_dir):
    """TRL's length-normalised IPO: posttrain's IPO is the paper's unless ``ipo_normalize_length=True`` (the
    one documented option this case adds on the posttrain side; the plain ``loss_ipo`` case runs unchanged)."""
    extra = {"ipo_normalize_length": True} if lib.__name__ == "posttrain" else {}
    return dpo(lib, models, out_dir, ref_model=reference(models), loss_type="ipo", **extra)


def default(lib, models, out_dir):
    """``DPOTrainer(model=..., train_dataset=...)``: the reference is a copy of the policy."""
    return second_loss(dpo(lib, models, out_dir, max_steps=2, learning_rate=1e-3))


def positional_ref_model(lib, models, out_dir):
    """TRL's signature: ``DPOTrainer(model, ref_model, args, ...)``."""
    args = lib.DPOConfig(**common_args(out_dir, max_length=64))
    trainer = lib.DPOTrainer(models.causal, reference(models), args, train_dataset=preference_rows())
    trainer.train()
    return trainer.state.log_history


def lora_no_ref_model(lib, models, out_dir):
    """``ref_model=None`` with a LoRA adapter: the reference is the policy with its adapter off."""
    from peft import LoraConfig

    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        task_type="CAUSAL_LM")
    return second_loss(dpo(lib, models, out_dir, peft_config=config, max_steps=2, learning_rate=1e-3))


def precompute_ref_log_probs(lib, models, out_dir):
    return second_loss(dpo(lib, models, out_dir, precompute_ref_log_probs=True, max_steps=2, learning_rate=1e-3))


def precompute_given_ref_model(lib, models, out_dir):
    return dpo(lib, models, out_dir, ref_model=reference(models), precompute_ref_log_probs=True)


def loss_weights(lib, models, out_dir):
    """MPO-style combination (TRL's docs): ``loss_type=["sigmoid", "bco_pair", "sft"]`` weighted."""
    return dpo(lib, models, out_dir, ref_model=reference(models), loss_type=["sigmoid", "bco_pair", "sft"],
               loss_weights=[0.8, 0.2, 1.0])


def conversational(lib, models, out_dir):
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in zip(PROMPTS, CHOSEN, REJECTED)]
    return dpo(lib, models, out_dir, ref_model=reference(models), dataset=Dataset.from_list(rows))


def implicit_prompt(lib, models, out_dir):
    rows = {"chosen": [f"{p} {a}" for p, a in zip(PROMPTS, CHOSEN)],
            "rejected": [f"{p} {a}" for p, a in zip(PROMPTS, REJECTED)]}
    return dpo(lib, models, out_dir, ref_model=reference(models), dataset=Dataset.from_dict(rows))


CASES = {f.__name__: f for f in (*map(make_loss_case, LOSS_TYPES), loss_ipo_normalized, default, positional_ref_model, lora_no_ref_model,
                                 precompute_ref_log_probs, precompute_given_ref_model, loss_weights, conversational,
                                 implicit_prompt)}


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("case", CASES)
def test_dpo(case, lib, models, tmp_path_factory):
    check(f"dpo/{case}", CASES[case], lib, models, tmp_path_factory)
