"""Reference models for KL-regularised objectives: the one place that chooses and runs them, for DPO/KTO
(``resolve_strategy``) and for the online trainers (``online_reference`` -> :class:`Reference`).

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
ONLINE_STRATEGIES = ("auto", "copy", "adapter", "none")


def is_peft_model(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def peft_trunk(model):
    """The LoRA model whose adapter can be switched off (a value-head wrapper's trunk, or the model), or None."""
    trunk = getattr(model, "pretrained_model", model)
    return trunk if is_peft_model(trunk) else None


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


class Reference:
    """The reference policy of an online trainer's KL term, run on rollouts: a frozen model
    (``strategy="copy"``: a copy of the starting policy, or the ``ref_model`` the user gave) or the
    LoRA policy with its adapter switched off (``strategy="adapter"``: no second copy of the weights)."""

    def __init__(self, strategy: str, model=None):
        self.strategy, self.model = strategy, model

    def place(self, accelerator) -> "Reference":
        """On the policy's device; sharded like the policy under FSDP (``distributed.shard_frozen``)."""
        if self.model is not None:
            from ..distributed import shard_frozen

            self.model = shard_frozen(accelerator, self.model)
        return self

    @torch.no_grad()
    def completion_logps(self, policy, rollout, temperature: float, shared_group: int = 1) -> torch.Tensor:
        """``[B, C]`` log-probs of each completion token under the reference (0 on padding); with
        ``shared_group`` > 1 each prompt is computed once per group (``losses.logprobs.completion_logps``)."""
        from ..losses.logprobs import completion_logps

        if self.strategy == "adapter":  # through the policy itself (under FSDP its root gathers the shards)
            with adapter_disabled(peft_trunk(policy)):
                return completion_logps(policy, rollout, temperature, shared_group)
        return completion_logps(self.model, rollout, temperature, shared_group)


def online_reference(requested: str, policy, ref_model=None, needed: bool = True) -> Reference | None:
    """The reference of an online trainer: None when the method uses no KL term (``needed`` False) or
    ``requested == "none"``; the given ``ref_model``; ``adapter`` for a LoRA policy under ``auto``;
    else a frozen copy of the policy (its trunk, for a value-head wrapper)."""
    if requested not in ONLINE_STRATEGIES:
        raise ValueError(f"Unknown reference {requested!r}; use one of {', '.join(ONLINE_STRATEGIES)}.")
    if not needed or requested == "none":
        return None
    if ref_model is not None:
        return Reference("copy", ref_model.eval().requires_grad_(False))
    lora = peft_trunk(policy) is not None
    if requested == "adapter" and not lora:
        raise ValueError("reference='adapter' needs a LoRA policy: pass peft_config (CLI: --use_peft true) or "
                         "choose reference='copy'.")
    if requested == "adapter" or (requested == "auto" and lora):
        return Reference("adapter")
    return Reference("copy", frozen_copy(getattr(policy, "pretrained_model", policy)))


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
