"""Offline preference-optimisation losses, as pure functions of per-sequence log-probabilities.

Inputs are summed log-probs of each answer under the policy (``*_logps``) and, for the
reference-based losses, under the reference model (``ref_*_logps``); all are ``[B]`` tensors.
Each function returns ``(loss, chosen_rewards, rejected_rewards)`` with per-example losses
averaged over the batch and the implicit rewards detached (for logging).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REFERENCE_FREE = ("simpo", "orpo")
PAIRED_LOSSES = ("sigmoid", "robust", "ipo", "hinge", "simpo", "orpo")


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    """The DPO family with a reference model; ``h = (π_c - ref_c) - (π_r - ref_r)``.

    - ``sigmoid``: DPO (Rafailov et al., 2023), ``-log σ(βh)``; with ``label_smoothing`` ε > 0 it is
      conservative DPO (cDPO, Mitchell 2023): ``-(1-ε) log σ(βh) - ε log σ(-βh)``.
    - ``robust``: robust DPO (Chowdhury et al., 2024), unbiased under label-flip rate ε:
      ``(-(1-ε) log σ(βh) + ε log σ(-βh)) / (1 - 2ε)``.
    - ``ipo``: IPO (Azar et al., 2023), ``(h - 1/(2β))^2``.
    - ``hinge``: SLiC (Zhao et al., 2023), ``max(0, 1 - βh)``.
    """
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}.")
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h)
                  + label_smoothing * F.logsigmoid(-beta * h)) / (1 - 2 * label_smoothing)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"Unknown loss_type {loss_type!r}; reference-based ones are sigmoid, robust, ipo, hinge.")
    return losses.mean(), (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def simpo_loss(chosen_avg_logps, rejected_avg_logps, beta: float = 2.0, gamma: float = 0.5):
    """SimPO (Meng et al., 2024), reference-free on length-normalised log-probs:
    ``-log σ(β·avg_c - β·avg_r - γ)``."""
    chosen_rewards, rejected_rewards = beta * chosen_avg_logps, beta * rejected_avg_logps
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses.mean(), chosen_rewards.detach(), rejected_rewards.detach()


def orpo_loss(chosen_avg_logps, rejected_avg_logps, chosen_nll, lam: float = 0.1):
    """ORPO (Hong et al., 2024): ``NLL(chosen) + λ · -log σ(log odds_c - log odds_r)`` where
    ``log odds(y) = avg_logp - log(1 - exp(avg_logp))``. ``chosen_nll`` is the mean token NLL of the
    chosen answers (the SFT term). Rewards reported are ``λ · avg_logp`` as in the paper's code."""
    log_odds = (chosen_avg_logps - rejected_avg_logps) - (
        torch.log1p(-torch.exp(chosen_avg_logps).clamp(max=1 - 1e-6))
        - torch.log1p(-torch.exp(rejected_avg_logps).clamp(max=1 - 1e-6)))
    ratio_loss = -F.logsigmoid(log_odds)
    loss = chosen_nll + lam * ratio_loss.mean()
    return loss, (lam * chosen_avg_logps).detach(), (lam * rejected_avg_logps).detach()


def kto_loss(logps, ref_logps, kl_logps, ref_kl_logps, desirable, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """KTO (Ethayarajh et al., 2024) for unpaired data.

    ``logps``/``ref_logps``: ``[B]`` log-probs of each row's completion; ``desirable``: ``[B]`` bool.
    ``kl_logps``/``ref_kl_logps``: log-probs of *mismatched* (prompt, completion) pairs from the
    same batch; their mean log-ratio, clamped at 0 and detached, is the reference point
    ``z0 ≈ KL(π || ref)``. Loss per row: ``w_D (1 - σ(β(r - z0)))`` if desirable,
    ``w_U (1 - σ(β(z0 - r)))`` otherwise, with ``r = logps - ref_logps``.
    Returns ``(loss, rewards, z0)``.
    """
    z0 = (kl_logps - ref_kl_logps).mean().clamp(min=0).detach()
    ratio = logps - ref_logps
    desirable = desirable.bool()
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio))))
    return losses.mean(), (beta * ratio).detach(), z0
