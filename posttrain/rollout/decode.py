"""posttrain's own decoding loop (``generation_backend="posttrain"``): what transformers' ``generate`` does for
sampling, minus the work an RL batch does not need.

- **Each distinct prompt is prefilled once.** GRPO, RLOO and ReST sample G completions of each prompt as G
  consecutive identical rows; the prompt runs through the model once and its KV cache is copied to the G rows
  (``Cache.batch_select_indices``), instead of prefilling G identical copies.
- **Log-probs (and a value head's values) come from the sampling step.** The raw logits that each token was
  sampled from give its log-prob under ``logits / temperature`` -- what a fresh forward over the finished
  sequence would compute, up to rounding (the tests hold it to 1e-5 in float32). They are kept only where
  they can equal that forward: a float32 model outside autocast; otherwise the sampler runs the forward.
- **Finished rows stop costing compute.** Once a quarter of the rows still decoding have ended (eos or a stop
  string), the finished rows are dropped from the batch and its cache.

Sampling is transformers' own: the same logits processors in the same order (``min_new_tokens``,
temperature, top-k, top-p, min-p) and the same ``softmax`` + ``multinomial`` draw, one per row of the whole
batch at every step (a dropped row draws from a one-hot), so it draws exactly the tokens ``generate`` draws
from the same seed (tested). Encoder-decoder models go to ``HFGenerate``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import (DynamicCache, LogitsProcessorList, MinNewTokensLengthLogitsProcessor, MinPLogitsWarper,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
from transformers.cache_utils import DynamicLayer

from ..losses.logprobs import _values
from ..models.loading import is_encoder_decoder


@dataclass
class Generated:
    """What a generation backend may return instead of bare ids: the ids and, where they are exact, the
    sampling-time log-probs of ``logits / temperature`` and a value head's values at each sampled token."""

    ids: torch.Tensor  # [B, C]
    logprobs: torch.Tensor | None = None  # [B, C]
    values: torch.Tensor | None = None  # [B, C]


def prompt_groups(ids: torch.Tensor, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(firsts, group)``: the first row of each run of identical consecutive prompt rows, and each row's run."""
    same = (ids[1:] == ids[:-1]).all(1) & (attention[1:] == attention[:-1]).all(1)
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=ids.device), ~same])
    return starts.nonzero().squeeze(1), starts.cumsum(0) - 1


def logits_processors(sampling, prompt_length: int, eos_id: int) -> LogitsProcessorList:
    """The processors ``generate`` builds for these settings, in its order (tests check the samples agree)."""
    out = LogitsProcessorList()
    if sampling.min_new_tokens:
        out.append(MinNewTokensLengthLogitsProcessor(prompt_length, sampling.min_new_tokens, eos_id))
    if sampling.temperature == 0:
        return out
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        out.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(sampling.top_p))
    if sampling.min_p is not None:
        out.append(MinPLogitsWarper(sampling.min_p))
    return out


def exact_logprobs_possible(model) -> bool:
    """Whether sampling-time log-probs equal a fresh forward's to float32 rounding: float32 weights, computed in
    float32 (no autocast, no FSDP2 mixed-precision policy casting them down)."""
    from ..distributed import fsdp_modules

    device = next(model.parameters()).device
    cast = [getattr(getattr(m._get_fsdp_state(), "_mp_policy", None), "param_dtype", None) for m in fsdp_modules(model)]
    return (all(p.dtype == torch.float32 for p in model.parameters() if p.is_floating_point())
            and not torch.is_autocast_enabled(device.type) and all(d in (None, torch.float32) for d in cast))


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` that writes new keys and values into a buffer reserved for the whole generation instead of
    concatenating (which copies the entire cache at every token): ``keys``/``values`` are views of its first
    tokens. Compaction (``batch_select_indices``) copies once, into a fresh buffer at the next token."""

    capacity = 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, k = self.get_seq_length(), key_states.shape[-2]
        buffer = getattr(self, "_buffers", None)
        if buffer is None or n + k > buffer[0].shape[-2]:
            shape = (*key_states.shape[:-2], max(n + k, self.capacity), key_states.shape[-1])
            buffer = (key_states.new_empty(shape), value_states.new_empty(shape[:-1] + value_states.shape[-1:]))
            if n:
                buffer[0][..., :n, :], buffer[1][..., :n, :] = self.keys, self.values
            self._buffers = buffer
        buffer[0][..., n:n + k, :], buffer[1][..., n:n + k, :] = key_states, value_states
        self.keys, self.values = buffer[0][..., :n + k, :], buffer[1][..., :n + k, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._buffers = None


def reserve(cache, capacity: int) -> None:
    """Turn the plain dynamic layers of ``cache`` into ``ReservedLayer`` of ``capacity`` tokens (sliding-window and
    other layer kinds are left as they are)."""
    for layer in cache.layers:
        if type(layer) is DynamicLayer:
            layer.__class__, layer.capacity = ReservedLayer, capacity


def cache_keyword(model) -> str:
    """``cache`` (transformers >= 5.24) or ``past_key_values`` (before): the forward's name for the KV cache."""
    inner = getattr(model, "pretrained_model", model)  # a value head passes the keywords on
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


class CachedDecode:
    """A ``GenerationBackend``: prefill each distinct prompt once, decode with a KV cache, return ``Generated``."""

    def __init__(self, compact_fraction: float | None = 0.25):
        self.compact_fraction = compact_fraction

    @torch.no_grad()
    def generate(self, model, prompt_ids, prompt_attention, sampling, tokenizer):
        model = getattr(model, "module", model)
        if is_encoder_decoder(model):
            from .sampling import HFGenerate

            return HFGenerate().generate(model, prompt_ids, prompt_attention, sampling, tokenizer)
        batch, prompt_length = prompt_ids.shape
        device, pad, eos = prompt_ids.device, tokenizer.pad_token_id, tokenizer.eos_token_id
        exact, temperature = exact_logprobs_possible(model), sampling.temperature or 1.0
        processors = logits_processors(sampling, prompt_length, eos)
        attention = prompt_attention.long()
        positions = (attention.cumsum(1) - 1).clamp(min=0)
        firsts, group = prompt_groups(prompt_ids, attention)
        cache = DynamicCache(config=model.config)
        cache_kw = cache_keyword(model)
        out = model(input_ids=prompt_ids[firsts], attention_mask=attention[firsts], position_ids=positions[firsts],
                    use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        if len(firsts) < batch:
            cache.batch_select_indices(group)
        reserve(cache, prompt_length + sampling.max_new_tokens)
        logits, values = out.logits[:, -1].float()[group], _values(out)
        values = None if values is None else values[:, -1].float()[group]

        width = sampling.max_new_tokens
        tokens = torch.full((batch, width), pad, dtype=torch.long, device=device)
        logps = torch.zeros((batch, width), device=device) if exact else None
        value_out = torch.zeros((batch, width), device=device) if exact and values is not None else None
        rows = torch.arange(batch, device=device)  # the full-batch row of each row still in the batch
        sequences, next_position = prompt_ids, positions[:, -1]
        done = torch.zeros(batch, dtype=torch.bool, device=device)  # per row still in the batch
        for t in range(width):
            scores = processors(sequences, logits.clone())
            if sampling.temperature == 0:
                chosen = scores.argmax(-1)
            else:
                probs = torch.softmax(scores, dim=-1)
                if len(rows) < batch:  # one draw per row of the whole batch, as generate makes: the same tokens
                    full = torch.zeros((batch, probs.shape[1]), dtype=probs.dtype, device=device)
                    full[:, pad] = 1
                    probs = full.index_copy(0, rows, probs)
                chosen = torch.multinomial(probs, num_samples=1).squeeze(1)
                chosen = chosen[rows] if len(rows) < batch else chosen
            chosen = torch.where(done, pad, chosen)  # as generate: finished rows get padding
            tokens[rows, t] = chosen
            if logps is not None:
                picked = torch.log_softmax(logits / temperature, dim=-1).gather(1, chosen[:, None]).squeeze(1)
                logps[rows, t] = picked
                if value_out is not None:
                    value_out[rows, t] = values
            done = done | (chosen == eos)
            if sampling.stop_strings:
                done = done | self._stopped(tokens[rows, :t + 1], done, sampling.stop_strings, tokenizer)
            if bool(done.all()) or t == width - 1:
                break
            sequences = torch.cat([sequences, chosen[:, None]], dim=1)
            attention = torch.cat([attention, torch.ones_like(chosen[:, None])], dim=1)
            if self.compact_fraction is not None and int(done.sum()) >= self.compact_fraction * len(rows):
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, sequences, attention, chosen = rows[keep], sequences[keep], attention[keep], chosen[keep]
                next_position, done = next_position[keep], done[keep]
            next_position = next_position + 1
            out = model(input_ids=chosen[:, None], attention_mask=attention, position_ids=next_position[:, None],
                        use_cache=True, **{cache_kw: cache})
            logits, values = out.logits[:, -1].float(), _values(out)
            values = None if values is None else values[:, -1].float()
        return Generated(tokens, logps, value_out)

    @staticmethod
    def _stopped(generated: torch.Tensor, done: torch.Tensor, stop_strings, tokenizer) -> torch.Tensor:
        """Rows whose generated text (up to the first eos) now contains a stop string."""
        hit = torch.zeros_like(done)
        for i, row in enumerate(generated.tolist()):
            if not done[i] and any(s in tokenizer.decode(row) for s in stop_strings):
                hit[i] = True
        return hit
