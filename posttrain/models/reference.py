"""Reference models for KL-regularised objectives (DPO now; PPO/GRPO next).

Strategies:
- ``copy``: a frozen deep copy of the starting policy (two copies of the weights in memory);
- ``adapter``: the policy is base + LoRA adapter and the reference is the same network with the
  adapter switched off (one copy of the base weights);
- ``precomputed``: reference log-probs computed once before training and cached on disk under a
  fingerprint of model, tokenizer and data, so no reference forward runs during training;
- ``none``: reference-free objectives.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os

import torch

STRATEGIES = ("copy", "adapter", "precomputed", "none")


def is_peft_model(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def resolve_strategy(requested: str | None, model, reference_free: bool) -> str:
    """The strategy to use: the requested one (checked), else ``none`` for reference-free losses,
    ``adapter`` for a LoRA policy and ``copy`` otherwise."""
    if requested in (None, "auto"):
        return "none" if reference_free else ("adapter" if is_peft_model(model) else "copy")
    if requested not in STRATEGIES:
        raise ValueError(f"Unknown reference strategy {requested!r}; use one of {STRATEGIES} or 'auto'.")
    if requested == "adapter" and not is_peft_model(model):
        raise ValueError("reference='adapter' needs a LoRA policy: pass peft_config (CLI: --use_lora true) or "
                         "choose reference='copy'.")
    if requested == "none" and not reference_free:
        raise ValueError("This loss compares the policy with a reference model; reference='none' only suits "
                         "the reference-free losses (simpo, orpo).")
    return requested


def frozen_copy(model):
    """A deep copy in eval mode with gradients off."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


@contextlib.contextmanager
def adapter_disabled(model):
    """Run the LoRA policy as its own reference: the base weights with the adapter switched off."""
    with model.disable_adapter():
        yield model


def fingerprint(model, tokenizer, rows: dict[str, list], settings: dict) -> str:
    """A hash of the weights, the tokenizer's vocabulary, the tokenized data and the settings; any
    change to one gives a new cache entry (so a stale cache can never be read)."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(model.config.to_json_string().encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    for column in sorted(rows):
        h.update(column.encode())
        h.update(json.dumps(rows[column]).encode())
    return h.hexdigest()[:24]


def cache_dir(path: str | None) -> str:
    return path or os.path.join(os.environ.get("POSTTRAIN_CACHE", os.path.expanduser("~/.cache/posttrain")),
                                "reference")


def load_cached(path: str) -> dict[str, torch.Tensor] | None:
    if not os.path.exists(path):
        return None
    from safetensors.torch import load_file

    return load_file(path)


def save_cached(path: str, tensors: dict[str, torch.Tensor]) -> None:
    """Write atomically: a temporary file renamed into place."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)
