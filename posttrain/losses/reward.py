"""Reward modeling on preference pairs (Bradley & Terry, 1952; Ouyang et al., 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       center_coefficient: float = 0.0) -> torch.Tensor:
    """Mean of ``-log σ(r_chosen - r_rejected - margin)``, plus ``center_coefficient * mean((r_c + r_r)^2)``.

    The margin (Llama 2, Touvron et al., 2023) asks clearly better answers to win by more; the
    centering term (Eisenstein et al., 2023) keeps rewards near zero so they are comparable across runs.
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coefficient:
        loss = loss + center_coefficient * ((chosen + rejected) ** 2).mean()
    return loss
