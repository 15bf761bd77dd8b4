"""Offline preference-optimisation losses, as pure functions of per-sequence log-probabilities.

Inputs are summed log-probs of each answer under the policy (``*_logps``) and, for the
reference-based losses, under the reference model (``ref_*_logps``); all are ``[B]`` tensors.
The formulas (and names) follow TRL 1.16's ``DPOTrainer``/``KTOTrainer``; where posttrain
deliberately differs the docstring says so. Each paired loss returns ``(loss, chosen_rewards,
rejected_rewards)`` with per-example losses averaged over the batch and the implicit rewards
detached (for logging).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Paired losses with a reference model (TRL 1.16's DPOTrainer loss_type values; "sft" is the NLL term).
REFERENCE_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
REFERENCE_FREE = ("simpo", "orpo", "sft")
PAIRED_LOSSES = (*REFERENCE_LOSSES, *REFERENCE_FREE)
UNPAIRED_LOSSES = ("kto", "apo_zero_unpaired")


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0, discopop_tau: float = 0.05,
             chosen_lengths=None, rejected_lengths=None, ipo_normalize_length: bool = False):
    """The DPO family with a reference model. With ``c = π_c - ref_c``, ``r = π_r - ref_r`` and ``h = c - r``:

    - ``sigmoid``: DPO (Rafailov et al., 2023), ``-log σ(βh)``; with ``label_smoothing`` ε > 0 it is
      conservative DPO (cDPO, Mitchell 2023): ``-(1-ε) log σ(βh) - ε log σ(-βh)``. (TRL 1.16 ignores
      label_smoothing for sigmoid; with ε = 0, the default, the two agree.)
    - ``hinge``: SLiC (Zhao et al., 2023), ``max(0, 1 - βh)``.
    - ``ipo``: IPO (Azar et al., 2023), ``(h - 1/(2β))^2`` on summed log-probs, as in the paper. With
      ``ipo_normalize_length`` (TRL 1.16's form) ``h`` uses per-token averages ``c/|y_c| - r/|y_r|``.
    - ``exo_pair``: EXO (Ji et al., 2024), ``KL([σ(βh), σ(-βh)] || [1-ε, ε])``; needs ε > 0.
    - ``nca_pair``: NCA (Chen et al., 2024), ``-log σ(βc) - ½ log σ(-βc) - ½ log σ(-βr)``.
    - ``robust``: robust DPO (Chowdhury et al., 2024), ``(-(1-ε) log σ(βh) + ε log σ(-βh)) / (1 - 2ε)``.
    - ``bco_pair``: BCO on pairs, ``-log σ(βc) - log σ(-βr)`` (no running-mean shift, as TRL 1.16).
    - ``sppo_hard``: SPPO with hard probabilities, ``(c - 1/(2β))^2 + (r + 1/(2β))^2``.
    - ``aot`` / ``aot_unpaired``: AOT (Melnyk et al., 2024): sigmoid(cDPO) loss on the sorted batch of
      ``π_c - π_r`` minus sorted ``ref_c - ref_r`` (``aot``), or sorted ``c`` minus sorted ``r``.
    - ``apo_zero``: APO (D'Oosterlinck et al., 2024), ``(1 - σ(βc)) + σ(βr)``.
    - ``apo_down``: ``σ(βc) + (1 - σ(βh))``.
    - ``discopop``: DiscoPOP (Chris Lu et al., 2024): with ``m = σ(βh/τ)``, ``(1-m)·(-log σ(βh)) + m·exp(-βh)``.
    - ``sigmoid_norm``: sigmoid on per-token averages, ``-log σ(β(c/|y_c| - r/|y_r|))``.

    ``chosen_lengths``/``rejected_lengths`` (answer token counts) are needed by ``sigmoid_norm`` and
    normalised ``ipo``. Rewards are ``βc`` and ``βr`` for every loss type.
    """
    c = chosen_logps - ref_chosen_logps
    r = rejected_logps - ref_rejected_logps
    h = c - r
    eps = label_smoothing
    if loss_type in ("sigmoid_norm", "ipo") and (loss_type == "sigmoid_norm" or ipo_normalize_length):
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(f"loss_type={loss_type!r} (length-normalised) needs chosen_lengths and rejected_lengths.")
        h = c / chosen_lengths.clamp(min=1) - r / rejected_lengths.clamp(min=1)

    if loss_type in ("sigmoid", "sigmoid_norm"):
        smoothing = eps if loss_type == "sigmoid" else 0.0
        losses = -(1 - smoothing) * F.logsigmoid(beta * h) - smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "exo_pair":
        if not 0 < eps < 1:
            raise ValueError(f"exo_pair needs 0 < label_smoothing < 1 (the paper suggests 1e-3), got {eps}.")
        losses = (torch.sigmoid(beta * h) * (F.logsigmoid(beta * h) - math.log1p(-eps))
                  + torch.sigmoid(-beta * h) * (F.logsigmoid(-beta * h) - math.log(eps)))
    elif loss_type == "nca_pair":
        losses = -F.logsigmoid(beta * c) - 0.5 * F.logsigmoid(-beta * c) - 0.5 * F.logsigmoid(-beta * r)
    elif loss_type == "robust":
        if not 0 <= eps < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {eps}.")
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "bco_pair":
        losses = -F.logsigmoid(beta * c) - F.logsigmoid(-beta * r)
    elif loss_type == "sppo_hard":
        losses = (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2
    elif loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            delta = (chosen_logps - rejected_logps).sort().values - (ref_chosen_logps - ref_rejected_logps).sort().values
        else:
            delta = c.sort().values - r.sort().values
        losses = -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    elif loss_type == "apo_zero":
        losses = (1 - torch.sigmoid(beta * c)) + torch.sigmoid(beta * r)
    elif loss_type == "apo_down":
        losses = torch.sigmoid(beta * c) + (1 - torch.sigmoid(beta * h))
    elif loss_type == "discopop":
        logits = beta * h
        mix = torch.sigmoid(logits / discopop_tau)
        losses = -F.logsigmoid(logits) * (1 - mix) + torch.exp(-logits) * mix
    else:
        raise ValueError(f"Unknown loss_type {loss_type!r}; reference-based ones are {', '.join(REFERENCE_LOSSES)}.")
    return losses.mean(), (beta * c).detach(), (beta * r).detach()


def chosen_nll(chosen_logps, chosen_lengths):
    """The ``sft`` term: mean token NLL of the chosen answers over the batch, ``-Σ logp / Σ |y_c|``."""
    return -chosen_logps.sum() / chosen_lengths.sum().clamp(min=1)


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


def kto_kl_estimate(kl_logps, ref_kl_logps):
    """KTO's estimate of ``KL(π || ref)``: the mean log-ratio over *mismatched* (prompt, completion)
    pairs of the batch, detached. The trainer averages it over processes and clamps it at 0 to get
    the reference point ``z0`` (as TRL 1.16)."""
    return (kl_logps - ref_kl_logps).mean().detach()


def kto_loss(logps, ref_logps, desirable, z0, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0, loss_type: str = "kto"):
    """KTO (Ethayarajh et al., 2024) for unpaired data, and TRL's unpaired APO-zero.

    ``logps``/``ref_logps``: ``[B]`` log-probs of each row's completion; ``desirable``: ``[B]`` bool;
    ``z0``: the reference point (see :func:`kto_kl_estimate`). With ``r = logps - ref_logps``, per row:

    - ``kto``: ``w_D (1 - σ(β(r - z0)))`` if desirable, ``w_U (1 - σ(β(z0 - r)))`` otherwise;
    - ``apo_zero_unpaired``: ``w_D (1 - σ(βr))`` if desirable, ``w_U σ(βr)`` otherwise (no z0).

    The loss is the mean over all B rows. Returns ``(loss, rewards)`` with ``rewards = βr`` detached.
    """
    ratio = logps - ref_logps
    desirable = desirable.bool()
    if loss_type == "kto":
        good, bad = 1 - torch.sigmoid(beta * (ratio - z0)), 1 - torch.sigmoid(beta * (z0 - ratio))
    elif loss_type == "apo_zero_unpaired":
        good, bad = 1 - torch.sigmoid(beta * ratio), torch.sigmoid(beta * ratio)
    else:
        raise ValueError(f"Unknown KTO loss_type {loss_type!r}; choose from {', '.join(UNPAIRED_LOSSES)}.")
    losses = torch.where(desirable, desirable_weight * good, undesirable_weight * bad)
    return losses.mean(), (beta * ratio).detach()
