"""Sampling completions for a batch of prompts: the rollout source every online trainer shares.

``PolicySampler`` turns prompt ids into a ``Rollout``: batched generation with a KV cache
(transformers ``generate``), completions cut at eos or a stop string, and the policy's log-probs of
what it sampled. Token-in/token-out: prompts are tokenized once and completions are never decoded
and re-encoded. The generation itself is a ``GenerationBackend``; a faster one (vLLM on a GPU, say)
implements the same one method and is passed as ``backend=`` without touching any trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import transformers

from ..models.loading import is_encoder_decoder
from ..losses.logprobs import forward_completion
from .batch import Rollout, pad_with_attention
from .decode import CachedDecode, Generated

BACKENDS = ("posttrain", "transformers", "compiled")


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float | None = None  # None = off
    stop_strings: tuple[str, ...] = ()
    min_new_tokens: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if (self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0
                or (self.min_p is not None and not 0 <= self.min_p <= 1)):
            raise ValueError(f"Invalid sampling settings: temperature={self.temperature} (>= 0), "
                             f"top_p={self.top_p} (in (0, 1]), top_k={self.top_k} (>= 0), "
                             f"min_p={self.min_p} (in [0, 1] or None).")
        self.stop_strings = tuple(s for s in self.stop_strings if s)


class GenerationBackend(Protocol):
    def generate(self, model, prompt_ids: torch.Tensor, prompt_attention: torch.Tensor,
                 sampling: SamplingConfig, tokenizer) -> torch.Tensor | Generated:
        """Completion ids ``[B, C]`` (anything after a row's end is ignored), or a ``Generated`` that carries
        the sampling-time log-probs (and values) too, where they equal a fresh forward's."""


class HFGenerate:
    """transformers' ``generate`` with a fresh GenerationConfig (the model's saved defaults, such as
    top_k=50, would silently change the sampling distribution that the log-probs describe).

    ``compiled=True`` (``generation_backend="compiled"``): a static KV cache and transformers' ``torch.compile``
    of the decoding step (CUDA graphs on a GPU, ``mode="reduce-overhead"``), on every device. Each new batch or
    length shape compiles again; it pays off only for long runs of one shape (see BENCHMARKS.md)."""

    def __init__(self, compiled: bool = False):
        self.compiled = compiled

    def generate(self, model, prompt_ids, prompt_attention, sampling, tokenizer):
        model = getattr(model, "module", model)
        greedy = sampling.temperature == 0
        config = transformers.GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, min_new_tokens=sampling.min_new_tokens or None,
            do_sample=not greedy, temperature=None if greedy else sampling.temperature,
            top_k=None if greedy else sampling.top_k, top_p=None if greedy else sampling.top_p,
            min_p=None if greedy else sampling.min_p,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=getattr(model.config, "decoder_start_token_id", None),
            stop_strings=list(sampling.stop_strings) or None, use_cache=True)
        if self.compiled:
            config.cache_implementation = "static"
            config.compile_config = transformers.CompileConfig()
            config.compile_config._compile_all_devices = True  # transformers compiles on CUDA only by default
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_attention, generation_config=config,
                             tokenizer=tokenizer if sampling.stop_strings else None)
        return out[:, 1:] if is_encoder_decoder(model) else out[:, prompt_ids.shape[1]:]


def completion_length(ids: list[int], eos_id: int, stop_strings: tuple[str, ...], tokenizer) -> int:
    """Tokens up to and including the first eos, or the token that completes the first stop string."""
    n = ids.index(eos_id) + 1 if eos_id in ids else len(ids)
    if stop_strings:
        text = tokenizer.decode(ids[:n])
        if any(s in text for s in stop_strings):
            for k in range(1, n + 1):  # rare path: find the token that completes the stop string
                if any(s in tokenizer.decode(ids[:k]) for s in stop_strings):
                    return k
    return n


class PolicySampler:
    """Sample completions from ``model`` for prompt ids and return them as a ``Rollout``."""

    def __init__(self, tokenizer, sampling: SamplingConfig, backend: GenerationBackend | str | None = None):
        self.tokenizer, self.sampling, self.backend = tokenizer, sampling, make_backend(backend)

    @torch.no_grad()
    def __call__(self, model, prompt_ids: list[list[int]], prompts: list | None = None,
                 columns: dict | None = None, with_logprobs: bool | str = True) -> Rollout:
        """``with_logprobs``: True = the policy's log-probs of the sample (from generation where exact, else a
        forward); ``"if_free"`` = only those from generation (with a value head's values); False = none."""
        device = next(model.parameters()).device
        ids, attention = pad_with_attention(prompt_ids, self.tokenizer.pad_token_id, side="left", device=device)
        was_training = model.training
        model.eval()
        try:
            generated = self.backend.generate(model, ids, attention, self.sampling, self.tokenizer)
            generated = generated if isinstance(generated, Generated) else Generated(generated)
            raw = generated.ids
            lengths = [completion_length(row, self.tokenizer.eos_token_id, self.sampling.stop_strings,
                                         self.tokenizer) for row in raw.tolist()]
            completions, completion_attention = pad_with_attention(
                [row[:n] for row, n in zip(raw.tolist(), lengths)], self.tokenizer.pad_token_id, device=device)
            rollout = Rollout(ids, attention, completions, completion_attention, completion_attention.clone(),
                              prompts=list(prompts or []), columns=dict(columns or {}))
            width = completions.shape[1]
            if with_logprobs and generated.logprobs is not None:  # exact: no second forward
                rollout.logprobs = generated.logprobs[:, :width] * completion_attention
                if generated.values is not None:
                    rollout.values = generated.values[:, :width] * completion_attention
            elif with_logprobs is True:
                temperature = self.sampling.temperature or 1.0
                rollout.logprobs, _ = forward_completion(model, rollout, temperature)
        finally:
            model.train(was_training)
        return rollout


def make_backend(backend: GenerationBackend | str | None) -> GenerationBackend:
    """A backend object from a name (``generation_backend``): posttrain (``CachedDecode``, the default),
    transformers (``HFGenerate``) or compiled (``HFGenerate(compiled=True)``); an object with a ``generate``
    method is used as it is."""
    if backend is None or backend == "posttrain":
        return CachedDecode()
    if backend in ("transformers", "compiled"):
        return HFGenerate(compiled=backend == "compiled")
    if isinstance(backend, str):
        raise ValueError(f"generation_backend must be one of {BACKENDS} (or a GenerationBackend object), got {backend!r}.")
    return backend
