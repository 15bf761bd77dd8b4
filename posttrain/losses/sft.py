"""Supervised fine-tuning: negative log-likelihood of the trainable tokens."""

from __future__ import annotations

import torch


def sft_loss(logps: torch.Tensor, num_items: torch.Tensor | int | None = None, dft: bool = False) -> torch.Tensor:
    """``-sum(logps) / num_items`` over the log-probs of the trainable tokens.

    ``dft`` (Dynamic Fine-Tuning, arXiv:2508.05629) weights each token's NLL by its probability,
    detached: ``-sum(exp(logps).detach() * logps) / num_items``.

    ``num_items`` is the number of trainable tokens in the whole optimizer step (all accumulation
    micro-batches, all processes); dividing by it instead of this micro-batch's count makes
    gradient accumulation and data parallelism give the same update as one big batch.
    """
    denom = logps.numel() if num_items is None else num_items
    if dft:
        logps = logps * logps.detach().exp()
    return -logps.sum() / torch.as_tensor(denom, device=logps.device).clamp(min=1)


@torch.no_grad()
def token_accuracy(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of positions whose prediction is the target: ``predicted`` the argmax ids ``[N]`` (as
    ``labelled_logps`` gives them) or logits ``[N, V]``; ``targets [N]``."""
    if predicted.dim() == 2:
        predicted = predicted.argmax(-1)
    return predicted.eq(targets).float().mean() if targets.numel() else torch.zeros((), device=targets.device)