"""Per-token log-probabilities of given labels: the one function every trainer uses.

``log_softmax(logits).gather(labels)`` would materialise a full-vocabulary float32 copy of the
logits (and autograd would keep it for the backward pass). Here the forward works on row chunks
and keeps only the per-row log-normaliser; the backward recomputes the softmax chunk by chunk. Peak
extra memory is one chunk, whatever the logits' dtype.
"""

from __future__ import annotations

import torch

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


def causal_lm_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift for next-token prediction and return ``(logps, mask)``, both ``[B, T-1]``.

    ``logps[b, t]`` is log p(labels[b, t+1] | tokens <= t); positions whose label is -100 have
    ``mask`` 0 and ``logps`` 0.
    """
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logps = selective_log_softmax(logits, labels.masked_fill(~mask, 0))
    return logps * mask, mask
