"""Per-token log-probabilities: of given labels (offline trainers) and of sampled completions (online
trainers), the one home of both.

``log_softmax(logits).gather(labels)`` would materialise a full-vocabulary float32 copy of the
logits (and autograd would keep it for the backward pass). Here the forward works on row chunks
and keeps only the per-row log-normaliser; the backward recomputes the softmax chunk by chunk. Peak
extra memory is one chunk, whatever the logits' dtype.
"""

from __future__ import annotations

import inspect
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


class LabelledLogps(NamedTuple):
    """Next-token log-probs at the N positions whose next label is not -100 (row-major order)."""

    logps: torch.Tensor  # [N] float32 (float64 for float64 models)
    rows: torch.Tensor  # [N] batch row of each position
    positions: torch.Tensor  # [N] position t whose logits predict labels[row, t + 1]
    logits: torch.Tensor  # [N, V] the logits at those positions
    targets: torch.Tensor  # [N] the predicted labels


def takes_logits_to_keep(model) -> bool:
    """Whether the (possibly DDP- or PEFT-wrapped) model's forward accepts ``logits_to_keep``."""
    model = getattr(model, "module", model)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def labelled_logps(model, labels: torch.Tensor, temperature: float = 1.0, **inputs) -> LabelledLogps:
    """Run ``model(**inputs)`` and return the log-probs of each labelled next token (of ``logits /
    temperature``; the returned logits are scaled too).

    The output layer runs only at the positions that predict a label (a boolean ``logits_to_keep``
    mask, which transformers 5 causal LMs accept): prompt and pad positions never get logits, which
    saves most of the vocabulary projection and its memory when prompts are long or vocabularies big.
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    rows, positions = keep.nonzero(as_tuple=True)
    targets = labels[rows, positions + 1]
    if takes_logits_to_keep(model):
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    else:  # older or custom models: full logits, then select
        logits = model(**inputs, use_cache=False).logits[keep]
    if temperature != 1.0:
        logits = logits / temperature
    return LabelledLogps(selective_log_softmax(logits, targets), rows, positions, logits, targets)


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
    mask = _shared_prefix_mask(segments, getattr(model.config, "_attn_implementation", None) or "sdpa")
    labels = input_ids.masked_fill(segments <= 0, IGNORE_INDEX)
    out = labelled_logps(model, labels, input_ids=input_ids, attention_mask=mask, position_ids=batch["position_ids"])
    # Where each (row, position) landed among the kept positions, to swap in the right predictor.
    entry = torch.full(input_ids.shape, -1, dtype=torch.long, device=input_ids.device)
    entry[out.rows, out.positions] = torch.arange(len(out.rows), device=input_ids.device)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    prompt_last, first_rejected = batch["prompt_lengths"] - 1, batch["first_rejected"]
    fixed = selective_log_softmax(out.logits[entry[rows, prompt_last]], input_ids[rows, first_rejected])
    logps = out.logps.index_put((entry[rows, first_rejected - 1],), fixed)
    token_logps = torch.zeros(input_ids.shape, dtype=logps.dtype, device=input_ids.device)
    return token_logps.index_put((out.rows, out.positions + 1), logps)


def shared_prefix_pair_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(chosen_sums, rejected_sums, chosen_counts, rejected_counts)``, each ``[B]``, from one
    shared-prefix row per pair (see ``shared_prefix_token_logps``)."""
    token_logps, segments = shared_prefix_token_logps(model, batch), batch["segment_ids"]
    chosen, rejected = segments == 1, segments == 2
    return (token_logps * chosen).sum(-1), (token_logps * rejected).sum(-1), chosen.sum(-1), rejected.sum(-1)


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
    mask = _shared_prefix_mask(segment_ids, getattr(model.config, "_attn_implementation", None) or "sdpa")
    labels = input_ids.masked_fill(segment_ids <= 0, IGNORE_INDEX)
    out = labelled_logps(model, labels, temperature, input_ids=input_ids, attention_mask=mask,
                         position_ids=position_ids)
    # out.logps[i] is predicted by the position before target i; a later completion's first token is predicted
    # by the prompt's last position instead (as the rejected answer in shared_prefix_token_logps)
    entry = torch.full(input_ids.shape, -1, dtype=torch.long, device=device)
    entry[out.rows, out.positions] = torch.arange(len(out.rows), device=device)
    starts = (segment_ids > 1) & (segment_ids != torch.roll(segment_ids, 1, dims=1))
    start_rows, start_cols = starts.nonzero(as_tuple=True)
    prompt_last = (segment_ids == 0).sum(1) - 1
    fixed = selective_log_softmax(out.logits[entry[start_rows, prompt_last[start_rows]]],
                                  input_ids[start_rows, start_cols])
    logps = out.logps.index_put((entry[start_rows, start_cols - 1],), fixed)
    owner = torch.cat(owners).to(device)  # tokens in layout order: rows, then positions, as out.rows/positions
    result = torch.zeros((n, width), dtype=logps.dtype, device=device)
    return result.index_put((owner[:, 0], owner[:, 1]), logps)


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
    width = rollout.completion_ids.shape[1]
    if is_encoder_decoder(model):
        out = model(**inputs, use_cache=False)
        logits, values = out.logits, _values(out)
    else:
        out = model(**inputs, logits_to_keep=width + 1, use_cache=False)
        logits, values = out.logits[:, :-1], _values(out)
        values = None if values is None else values[:, -width - 1:-1]
    if temperature != 1.0:
        logits = logits / temperature
    logps = selective_log_softmax(logits, rollout.completion_ids) * rollout.completion_attention
    if with_values and values is None:
        raise ValueError("This trainer needs a value head on the policy: wrap it with "
                         "AutoModelForCausalLMWithValueHead (or the seq2seq one).")
    return logps, (values.float() if with_values else None)
