"""Per-token log-probabilities: of given labels (offline trainers) and of sampled completions (online
trainers), the one home of both.

``log_softmax(logits).gather(labels)`` would materialise a full-vocabulary float32 copy of the
logits (and autograd would keep it for the backward pass). Here the forward works on row chunks
and keeps only the per-row log-normaliser; the backward recomputes the softmax chunk by chunk. Peak
extra memory is one chunk, whatever the logits' dtype.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import NamedTuple

import torch

from ..models.loading import is_encoder_decoder

IGNORE_INDEX = -100
CHUNK_BYTES = 1 << 26  # ~64 MiB of float32 per chunk


def _rows_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


class _SelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        flat, idx = logits.reshape(-1, logits.shape[-1]), index.reshape(-1)
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        out = torch.empty(idx.shape, dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        step = _rows_per_chunk(flat.shape[-1])
        for s in range(0, flat.shape[0], step):
            chunk = flat[s: s + step].to(dtype)
            lse[s: s + step] = torch.logsumexp(chunk, dim=-1)
            out[s: s + step] = chunk.gather(-1, idx[s: s + step, None]).squeeze(-1) - lse[s: s + step]
        ctx.save_for_backward(logits, index, lse)
        return out.view(index.shape)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, index, lse = ctx.saved_tensors
        flat, idx, g = logits.reshape(-1, logits.shape[-1]), index.reshape(-1), grad_out.reshape(-1).to(lse.dtype)
        grad = torch.empty_like(flat)
        step = _rows_per_chunk(flat.shape[-1])
        for s in range(0, flat.shape[0], step):
            # d/dx [x_y - logsumexp(x)] = onehot(y) - softmax(x)
            chunk = -torch.exp(flat[s: s + step].to(lse.dtype) - lse[s: s + step, None])
            chunk.scatter_add_(-1, idx[s: s + step, None], torch.ones_like(chunk[:, :1]))
            grad[s: s + step] = (chunk * g[s: s + step, None]).to(grad.dtype)
        return grad.view(logits.shape), None


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits, -1).gather(-1, index)`` in float32 (float64 for float64 logits), chunked, differentiable w.r.t. logits.

    ``index`` must hold valid token ids (replace ignore-index labels before calling).
    """
    return _SelectiveLogSoftmax.apply(logits, index)


class _OutputLayerLogps(torch.autograd.Function):
    """``log_softmax((hidden @ weight.T + bias) / temperature).gather(targets)`` (and the argmax) without ever
    holding more than one chunk of logits: the forward keeps only each row's log-normaliser, the backward
    recomputes each chunk's logits and turns them into the gradients of hidden, weight and bias at once."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature):
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        n, device = hidden.shape[0], hidden.device
        logps, lse = torch.empty(n, dtype=dtype, device=device), torch.empty(n, dtype=dtype, device=device)
        argmax = torch.empty(n, dtype=torch.long, device=device)
        step = _rows_per_chunk(weight.shape[0])
        for s in range(0, n, step):
            logits = _chunk_logits(hidden[s: s + step], weight, bias, temperature, dtype)
            lse[s: s + step] = torch.logsumexp(logits, dim=-1)
            logps[s: s + step] = logits.gather(-1, targets[s: s + step, None]).squeeze(-1) - lse[s: s + step]
            argmax[s: s + step] = logits.argmax(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.autocast = temperature, _autocast_state(device)
        ctx.mark_non_differentiable(argmax)
        return logps, argmax

    @staticmethod
    def backward(ctx, grad_logps, _grad_argmax):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=lse.dtype, device=bias.device) if want_bias else None
        g = grad_logps.to(lse.dtype)
        step = _rows_per_chunk(weight.shape[0])
        with torch.autocast(**ctx.autocast):  # recompute the logits exactly as the forward did
            for s in range(0, hidden.shape[0], step):
                h = hidden[s: s + step]
                # d logp / d logits = (onehot(target) - softmax) / temperature, in place: one chunk in memory
                grad = _chunk_logits(h, weight, bias, ctx.temperature, lse.dtype)
                grad.sub_(lse[s: s + step, None]).exp_().neg_()
                grad.scatter_add_(-1, targets[s: s + step, None], torch.ones_like(grad[:, :1]))
                grad.mul_(g[s: s + step, None] / ctx.temperature)
                if want_hidden:
                    grad_hidden[s: s + step] = (grad @ weight.to(grad.dtype)).to(hidden.dtype)
                if want_weight:
                    grad_weight += grad.T @ h.to(grad.dtype)
                if want_bias:
                    grad_bias += grad.sum(0)
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None)


def _chunk_logits(hidden, weight, bias, temperature, dtype):
    logits = torch.nn.functional.linear(hidden, weight, bias).to(dtype)
    return logits.div_(temperature) if temperature != 1.0 else logits


def _autocast_state(device) -> dict:
    kind = device.type
    enabled = torch.is_autocast_enabled(kind)
    return {"device_type": kind, "enabled": enabled, **({"dtype": torch.get_autocast_dtype(kind)} if enabled else {})}


# config fields of architectures whose logits are not the output layer's plain output
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def fusable_output_layer(model):
    """The model's output layer if its log-probs can be computed chunked from the hidden states (a plain
    ``nn.Linear`` whose output the model returns as its logits, not under DeepSpeed ZeRO-3), else None."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "pretrained_model", inner)  # a value head
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT
    layer = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    config = getattr(inner, "config", None)
    if type(layer) is not torch.nn.Linear or hasattr(layer.weight, "ds_id"):  # LoRA'd / quantized head, ZeRO-3
        return None
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    return layer


class LabelledLogps(NamedTuple):
    """Next-token log-probs of the N labelled tokens (row-major order) and the model output they came from."""

    logps: torch.Tensor  # [N] float32 (float64 for float64 models)
    rows: torch.Tensor  # [N] batch row of each labelled token's predicting position
    positions: torch.Tensor  # [N] position t whose hidden state predicts labels[row, t + 1]
    targets: torch.Tensor  # [N] the predicted labels
    predicted: torch.Tensor  # [N] the argmax token at each predicting position (for token accuracy)
    output: object  # the model's output (its logits field holds log-probs on the chunked path; values, etc.)


def takes_logits_to_keep(model) -> bool:
    """Whether the (possibly DDP- or PEFT-wrapped) model's forward accepts ``logits_to_keep``."""
    model = getattr(model, "module", model)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def labelled_logps(model, labels: torch.Tensor, temperature: float = 1.0, sources: torch.Tensor | None = None,
                   **inputs) -> LabelledLogps:
    """Run ``model(**inputs)`` and return the log-prob of each labelled next token under ``logits / temperature``.

    No full-vocabulary logits are built. The output layer runs only at the positions that predict a label (a
    boolean ``logits_to_keep`` mask, which transformers 5 causal LMs accept), and where it is a plain linear
    layer (``fusable_output_layer``) it runs inside ``_OutputLayerLogps``: one chunk of logits at a time,
    recomputed in the backward. Peak logit memory is one chunk (~64 MiB) whatever the batch and vocabulary.
    ``sources`` (optional, ``[N]``) says which kept position predicts each label when it is not the one right
    before it (prefix sharing: a later answer's first token is predicted from the prompt's last position).
    """
    keep, rows, positions = _predicting_positions(labels)
    targets = labels[rows, positions + 1]
    if not takes_logits_to_keep(model):  # older or custom models: full logits, then select
        out = model(**inputs, use_cache=False)
        return _from_logits(out, out.logits[keep], rows, positions, targets, temperature, sources)
    layer = fusable_output_layer(model)
    if layer is not None:
        captured = {}
        with _chunked_output_layer(layer, targets, temperature, sources, captured):
            out = model(**inputs, logits_to_keep=keep, use_cache=False)
        if out.logits is captured.get("logps"):
            return LabelledLogps(captured["logps"], rows, positions, targets, captured["predicted"], out)
        _warn_transformed(model)  # the model changed its output layer's result: compute it the plain way
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    return _from_logits(out, out.logits, rows, positions, targets, temperature, sources)


def _predicting_positions(labels: torch.Tensor):
    """``(keep, rows, positions)``: the positions whose next label is not -100, as a mask and row-major indices
    (the order of ``LabelledLogps``)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    rows, positions = keep.nonzero(as_tuple=True)
    return keep, rows, positions


def _from_logits(out, logits, rows, positions, targets, temperature, sources) -> LabelledLogps:
    if sources is not None:
        logits = logits[sources]
    if temperature != 1.0:
        logits = logits / temperature
    return LabelledLogps(selective_log_softmax(logits, targets), rows, positions, targets, logits.detach().argmax(-1), out)


@contextlib.contextmanager
def _chunked_output_layer(layer, targets, temperature, sources, captured: dict):
    """Make ``layer`` return the chunked log-probs of ``targets`` instead of logits, for one forward."""

    def forward(hidden):
        hidden = hidden.reshape(-1, hidden.shape[-1])
        if sources is not None:
            hidden = hidden.index_select(0, sources)
        captured["logps"], captured["predicted"] = _OutputLayerLogps.apply(hidden, layer.weight, layer.bias, targets,
                                                                          float(temperature))
        return captured["logps"]

    layer.forward = forward  # an instance attribute: module hooks (FSDP's among them) still run around it
    try:
        yield
    finally:
        del layer.forward


_warned: set = set()


def _warn_transformed(model) -> None:
    name = type(getattr(model, "module", model)).__name__
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"{name} transforms its output layer's logits; its log-probs are computed from full logits "
                      "(more memory), after a wasted forward on this call.", stacklevel=3)


def answer_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts of the answer tokens of each row of a batch.

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``completion_mask`` (1 on answer tokens),
    as ``PreferenceCollator`` and ``UnpairedCollator`` build them. Returns ``(sums, counts)``, ``[N]``.
    """
    labels = batch["input_ids"].masked_fill(~batch["completion_mask"].bool(), IGNORE_INDEX)
    out = labelled_logps(model, labels, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    n = labels.shape[0]
    sums = torch.zeros(n, dtype=out.logps.dtype, device=labels.device).index_add(0, out.rows, out.logps)
    return sums, torch.bincount(out.rows, minlength=n)


def shared_prefix_token_logps(model, batch: dict) -> torch.Tensor:
    """Per-token log-probs ``[B, L]`` (aligned with the target token; 0 at prompt and pad) of one row
    per pair laid out as ``prompt + chosen + rejected`` (``SharedPrefixCollator``).

    The prompt is computed once. ``position_ids`` restart the rejected answer at the prompt's end and
    a 4D mask lets each answer see the prompt and itself only, so every answer token gets exactly
    the log-prob it has in the unshared ``prompt + answer`` sequence. The first rejected token is
    predicted from the prompt's last position (the plain shift would use the chosen answer's last).
    """
    input_ids, segments = batch["input_ids"], batch["segment_ids"]  # 0 prompt, 1 chosen, 2 rejected, -1 pad
    mask = _shared_prefix_mask(segments, _attention_kind(model))
    labels = input_ids.masked_fill(segments <= 0, IGNORE_INDEX)
    out = labelled_logps(model, labels, sources=_shared_prefix_sources(labels, segments), input_ids=input_ids,
                         attention_mask=mask, position_ids=batch["position_ids"])
    token_logps = torch.zeros(input_ids.shape, dtype=out.logps.dtype, device=input_ids.device)
    return token_logps.index_put((out.rows, out.positions + 1), out.logps)


def _shared_prefix_sources(labels: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """``labelled_logps``'s ``sources`` for a shared-prefix layout (segment 0 the prompt, 1, 2, ... the answers):
    each labelled token is predicted by the position before it, except the first token of every answer after
    the first, which is predicted by the prompt's last position."""
    _, rows, positions = _predicting_positions(labels)
    entry = torch.full(labels.shape, -1, dtype=torch.long, device=labels.device)
    entry[rows, positions] = torch.arange(len(rows), device=labels.device)
    own, before = segments[rows, positions + 1], segments[rows, positions]
    later_start = (own > 1) & (own != before)
    prompt_last = (segments == 0).sum(1) - 1
    sources = torch.arange(len(rows), device=labels.device)
    sources[later_start] = entry[rows[later_start], prompt_last[rows[later_start]]]
    return sources


def shared_prefix_pair_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(chosen_sums, rejected_sums, chosen_counts, rejected_counts)``, each ``[B]``, from one
    shared-prefix row per pair (see ``shared_prefix_token_logps``)."""
    token_logps, segments = shared_prefix_token_logps(model, batch), batch["segment_ids"]
    chosen, rejected = segments == 1, segments == 2
    return (token_logps * chosen).sum(-1), (token_logps * rejected).sum(-1), chosen.sum(-1), rejected.sum(-1)


def _attention_kind(model) -> str:
    config = getattr(getattr(model, "module", model), "config", None)  # through DDP
    return getattr(config, "_attn_implementation", None) or "sdpa"


def _shared_prefix_mask(segments: torch.Tensor, attn_implementation: str) -> torch.Tensor:
    """``[B, 1, L, L]`` mask: causal, and an answer sees only the prompt and itself. Boolean for SDPA
    (True = attend), additive float for eager attention; other kernels take no custom mask."""
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"Prefix sharing needs a custom attention mask, which {attn_implementation!r} attention "
                         "does not take. Load the model with attn_implementation='sdpa' or turn prefix_sharing off.")
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    q, k = segments[:, :, None], segments[:, None, :]
    allowed = causal & (k != -1) & ((k == 0) | (k == q))
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)  # pad rows attend to themselves: no NaN
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, device=segments.device).masked_fill(~allowed, torch.finfo(torch.float32).min)


# ---- completions of a rollout (online trainers) ---------------------------------------------------


def model_inputs(model, rollout) -> dict:
    """Forward inputs whose outputs at the returned positions predict each completion token."""
    if is_encoder_decoder(model):
        config = getattr(model, "module", model).config
        start = torch.full_like(rollout.completion_ids[:, :1], config.decoder_start_token_id)
        decoder_ids = torch.cat([start, rollout.completion_ids[:, :-1]], dim=1)
        decoder_attention = torch.cat([torch.ones_like(start), rollout.completion_attention[:, :-1]], dim=1)
        return {"input_ids": rollout.prompt_ids, "attention_mask": rollout.prompt_attention,
                "decoder_input_ids": decoder_ids, "decoder_attention_mask": decoder_attention}
    attention = torch.cat([rollout.prompt_attention, rollout.completion_attention], dim=1)
    position_ids = (attention.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1),
            "attention_mask": attention, "position_ids": position_ids}


def completion_logps(model, rollout, temperature: float = 1.0, shared_group: int = 1) -> torch.Tensor:
    """``[B, C]`` log-probs of each completion token: ``forward_completion``'s, or with ``shared_group`` > 1
    each prompt computed once per group of that many consecutive rows (``group_shared_completion_logps``)."""
    if shared_group > 1:
        return group_shared_completion_logps(model, rollout, shared_group, temperature)
    return forward_completion(model, rollout, temperature)[0]


def group_shared_completion_logps(model, rollout, group_size: int, temperature: float = 1.0) -> torch.Tensor:
    """``[B, C]`` log-probs of each completion token (0 on padding), as ``forward_completion`` gives them, but
    with each prompt computed once per group: the rollout's rows come in groups of ``group_size`` consecutive
    completions of one prompt (as GRPO and RLOO sample them), and each group becomes one row
    ``prompt + completion_1 + ... + completion_G``. ``position_ids`` restart every completion at the prompt's
    end and a 4D mask lets a completion see the prompt and itself only (``_shared_prefix_mask``, as DPO's
    prefix sharing), so every token gets the log-prob it has in its own ``prompt + completion`` sequence. The
    first token of completions 2..G is predicted from the prompt's last position. Causal LMs only, with sdpa
    or eager attention."""
    if is_encoder_decoder(model):
        raise ValueError("Prompt sharing across a group is for decoder-only models; an encoder-decoder already "
                         "encodes each prompt once per row.")
    n, width = rollout.completion_ids.shape
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} rollout rows are not whole groups of {group_size}.")
    device, pad = rollout.completion_ids.device, 0
    rows, segments, positions, owners = [], [], [], []  # owners: (rollout row, completion index) of each token
    for g in range(n // group_size):
        first = g * group_size
        prompt = rollout.prompt_ids[first][rollout.prompt_attention[first].bool()]
        if not len(prompt):
            raise ValueError(f"Rollout row {first} has an empty prompt; prompt sharing needs at least one prompt token.")
        for r in range(first + 1, first + group_size):
            other = rollout.prompt_ids[r][rollout.prompt_attention[r].bool()]
            if not torch.equal(other, prompt):
                raise ValueError(f"Rollout rows {first} and {r} are in one group of {group_size} but have different "
                                 "prompts; prompt sharing needs each group's completions to share their prompt.")
        ids, seg, pos, own = [prompt], [torch.zeros(len(prompt), dtype=torch.long)], [torch.arange(len(prompt))], []
        for k in range(group_size):
            r = first + k
            length = int(rollout.completion_attention[r].sum())
            ids.append(rollout.completion_ids[r, :length])
            seg.append(torch.full((length,), k + 1, dtype=torch.long))
            pos.append(torch.arange(len(prompt), len(prompt) + length))
            own.append(torch.stack([torch.full((length,), r), torch.arange(length)], 1))
        rows.append(torch.cat(ids).to(device))
        segments.append(torch.cat(seg))
        positions.append(torch.cat(pos))
        owners.append(torch.cat(own) if own else torch.zeros(0, 2, dtype=torch.long))
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long, device=device)
    segment_ids = torch.full((len(rows), length), -1, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (ids, seg, pos) in enumerate(zip(rows, segments, positions)):
        input_ids[i, :len(ids)], segment_ids[i, :len(seg)], position_ids[i, :len(pos)] = ids, seg, pos
    segment_ids, position_ids = segment_ids.to(device), position_ids.to(device)
    mask = _shared_prefix_mask(segment_ids, _attention_kind(model))
    labels = input_ids.masked_fill(segment_ids <= 0, IGNORE_INDEX)
    out = labelled_logps(model, labels, temperature, sources=_shared_prefix_sources(labels, segment_ids),
                         input_ids=input_ids, attention_mask=mask, position_ids=position_ids)
    owner = torch.cat(owners).to(device)  # tokens in layout order: rows, then positions, as out.rows/positions
    result = torch.zeros((n, width), dtype=out.logps.dtype, device=device)
    return result.index_put((owner[:, 0], owner[:, 1]), out.logps)


def _values(out):
    """A value head's per-token values from a model output (None for a plain language model).
    (``ModelOutput`` is a dict, so ``out.values`` would be the dict method.)"""
    if isinstance(out, dict):
        return out.get("value", out.get("values"))
    return getattr(out, "value", getattr(out, "values", None))


def forward_completion(model, rollout, temperature: float = 1.0, with_values: bool = False):
    """``(logps, values)`` of each completion token, ``[B, C]`` each (values None without a value head).

    Log-probs are those of the sampling distribution (logits / temperature), in float32. A causal
    model runs its output layer only over the completion (``logits_to_keep``); values come from the
    same forward pass when the model has a value head.
    """
    inputs = model_inputs(model, rollout)
    completion, attention = rollout.completion_ids, rollout.completion_attention
    if is_encoder_decoder(model):  # decoder logits of the completion only (no prompt positions to skip)
        out = model(**inputs, use_cache=False)
        logits, values = out.logits, _values(out)
        if temperature != 1.0:
            logits = logits / temperature
        logps = selective_log_softmax(logits, completion) * attention
    else:  # only the positions that predict a completion token reach the output layer, chunked
        width, prompt_width = completion.shape[1], rollout.prompt_ids.shape[1]
        labels = torch.full_like(inputs["input_ids"], IGNORE_INDEX)
        labels[:, prompt_width:] = completion.masked_fill(attention == 0, IGNORE_INDEX)
        out = labelled_logps(model, labels, temperature, **inputs)
        logps = torch.zeros(completion.shape, dtype=out.logps.dtype, device=completion.device)
        logps = logps.index_put((out.rows, out.positions + 1 - prompt_width), out.logps)
        values = _values(out.output)
        values = None if values is None else values[:, prompt_width - 1: prompt_width - 1 + width]
    if with_values and values is None:
        raise ValueError("This trainer needs a value head on the policy: wrap it with "
                         "AutoModelForCausalLMWithValueHead (or the seq2seq one).")
    return logps, (values.float() if with_values else None)
