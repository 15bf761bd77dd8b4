"""Helpers shared by the tests: the data layer's (test_formats, test_tokenize, test_collate), and the trainer
tests' device helpers (a batch on the model's device; weights of two training runs compared)."""

from __future__ import annotations

import pytest
import torch

from posttrain.data.formats import FORMATS, DataFormatError, DatasetFormat
from posttrain.data.tokenize import tokenize_preference_row, tokenize_sft_row

ALL = tuple(FORMATS)
SFT = ("language_modeling", "prompt_completion", "conversational")
PREF = ("preference", "implicit_preference")
LM = DatasetFormat("language_modeling", False)
PC = DatasetFormat("prompt_completion", False)
PC_CONV = DatasetFormat("prompt_completion", True)
CONV = DatasetFormat("conversational", True)
EXPLICIT = DatasetFormat("preference", False)
EXPLICIT_CONV = DatasetFormat("preference", True)
IMPLICIT = DatasetFormat("implicit_preference", False)
IMPLICIT_CONV = DatasetFormat("implicit_preference", True)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


GOOD, BAD = [assistant("Wonderful.")], [assistant("Dull.")]


def expect_error(fn, *fragments):
    """``fn()`` raises DataFormatError and its message contains every fragment."""
    with pytest.raises(DataFormatError) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message



def chat(tok, messages, generation_prompt=False):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def sft(tok, row, fmt, max_length=None, side="right", train_on_prompt=False, index=0):
    return tokenize_sft_row(row, index, tok, fmt, max_length, side, train_on_prompt)


def pref(tok, row, fmt, max_length=None, max_prompt_length=None, index=0):
    return tokenize_preference_row(row, index, tok, fmt, max_length, max_prompt_length)


# ---- devices ---------------------------------------------------------------------------------------------

def on_device(batch: dict, device) -> dict:
    """A collated batch with its tensors moved to ``device`` (pass ``trainer.model.device``): the Trainer moves
    the model to the accelerator, but a batch made by calling the collator directly stays on the CPU."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# Two identical training runs give bit-identical weights on the CPU, and the tests assert that there. CUDA
# kernels are not bit-reproducible from run to run (backward passes of embedding/gather/index ops accumulate
# with atomics, in whatever order the threads arrive; matmuls may split their reductions (split-K)), so on an
# H200 two such runs agree to ~4 significant digits only. There the tests allow rtol 1e-3 / atol 1e-4: a tenth
# of what one optimizer step at the tests' learning rates (1e-3: Adam moves a weight by ~lr) changes, so a run
# that really went differently (another sample drawn, another RNG draw, a lost optimizer state) still fails:
# one extra dropout draw before step 3 of a 4-step DPO run (lr 1e-3) moves weights by up to 2.8e-3 and puts
# ~60,000 of them outside this tolerance (measured on the CPU).
ACCELERATOR_RTOL, ACCELERATOR_ATOL = 1e-3, 1e-4


def on_cpu(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.device.type == "cpu" and y.device.type == "cpu"


def runs_agree(x: torch.Tensor, y: torch.Tensor, **cpu_tolerance) -> bool:
    """Whether a tensor from two training runs meant to be the same agrees: on the CPU exactly (``torch.equal``),
    or within ``torch.allclose(**cpu_tolerance)`` if given; on an accelerator within the tolerance above."""
    x, y = x.detach(), y.detach()
    if on_cpu(x, y):
        return torch.allclose(x, y, **cpu_tolerance) if cpu_tolerance else torch.equal(x, y)
    return torch.allclose(x.cpu(), y.cpu(), rtol=ACCELERATOR_RTOL, atol=ACCELERATOR_ATOL)


def assert_runs_agree(a: dict, b: dict, **cpu_tolerance):
    """Two runs' weights (name -> tensor, e.g. state dicts) agree, by ``runs_agree``; the message names the first
    parameter that does not, and by how much."""
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name].detach(), b[name].detach()
        assert runs_agree(x, y, **cpu_tolerance), \
            f"{name}: max |difference| {(x.cpu().double() - y.cpu().double()).abs().max().item():.3g}"


def logged_runs_agree(device, **cpu_tolerance) -> dict:
    """``pytest.approx`` keywords for values two such runs log (losses, rewards, KL), on ``device``: the CPU's
    tolerance on the CPU, else the accelerator's above."""
    if torch.device(device).type == "cpu":
        return cpu_tolerance
    return dict(rel=ACCELERATOR_RTOL, abs=max(cpu_tolerance.get("abs", 0.0), ACCELERATOR_ATOL))


def logged(trainer, key):
    """Every training-time value of ``key`` in the trainer's log history (eval entries left out)."""
    return [e[key] for e in trainer.state.log_history if key in e and "eval_loss" not in e]


def summed_logps(model, batch):
    """Sum of the answer (completion) tokens' log-probs per row, by hand: a plain log-softmax of the full logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = torch.log_softmax(logits.double(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logps * batch["completion_mask"][:, 1:]).sum(-1)


def trl_or_none():
    """TRL when installed (the `bench` extra), else None: TRL comparisons run where it is, and the rest of
    a test still runs without it (CI)."""
    try:
        import trl
    except ImportError:
        return None
    return trl
