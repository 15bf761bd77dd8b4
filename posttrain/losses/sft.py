"""Supervised fine-tuning: negative log-likelihood of the trainable tokens."""

from __future__ import annotations

import torch


def sft_loss(logps: torch.Tensor, mask: torch.Tensor, num_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """``-sum(logps * mask) / num_items``.

    ``num_items`` is the number of trainable tokens in the whole optimizer step (all accumulation
    micro-batches, all processes); dividing by it instead of this micro-batch's count makes
    gradient accumulation and data parallelism give the same update as one big batch.
    """
    denom = mask.sum() if num_items is None else num_items
    return -(logps * mask).sum() / torch.as_tensor(denom, device=logps.device).clamp(min=1)


@torch.no_grad()
def token_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, total) next-token argmax predictions over non-ignored labels, as tensors (no device sync)."""
    pred, target = logits[:, :-1].argmax(-1), labels[:, 1:]
    mask = target != ignore_index
    return (pred.eq(target) & mask).sum(), mask.sum()
