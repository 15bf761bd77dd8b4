"""The math of online RL (PPO, GRPO, RLOO) as pure functions of tensors.

Per-token tensors are ``[B, T]`` over the *response* tokens, right-padded; ``mask`` is 0/1 float or
bool of the same shape. Masked-out positions never contribute, and are zeroed *before* any
arithmetic (``masked_fill``), so garbage or ``-inf`` in padding cannot leak NaNs into values or
gradients. Statistics returned for logging are detached.
"""

from __future__ import annotations

import math

import torch

KL_ESTIMATORS = ("k1", "k3", "abs", "mse")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
ADVANTAGE_SCALES = ("group", "batch", "none")  # scale=True/False mean "group"/"none", as in TRL


def _bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Sum of ``x`` over the entries where ``mask`` is set (over all entries, or along ``dim``)."""
    x = x.masked_fill(~_bool(mask), 0)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``x`` over the masked entries; 0 (not NaN) where no entry is masked in."""
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and variance over the masked entries only.

    The variance is *unbiased* (Bessel's correction, divides by ``n - 1``, as TRL does); with fewer
    than two entries it is taken as 0. With ``shift_mean=False`` the mean is added back after
    scaling. Unmasked entries are returned as 0.
    """
    m = _bool(mask)
    mean = masked_mean(x, m)
    n = m.sum()
    var = masked_sum((x - mean) ** 2, m) / (n - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened.masked_fill(~m, 0)


def kl_per_token(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π || ref) from samples of π (Schulman, "Approximating KL divergence").

    - ``k1``: ``logp - ref`` (unbiased, can be negative);
    - ``k3``: ``exp(ref - logp) - (ref - logp) - 1`` (unbiased and non-negative);
    - ``abs``: ``|logp - ref|``;  ``mse``: ``0.5 (logp - ref)^2`` (k2, as in TRL 0.11).
    """
    diff = logps - ref_logps
    if estimator == "k1":
        return diff
    if estimator == "k3":
        return torch.expm1(-diff) + diff  # = exp(ref - logp) - (ref - logp) - 1
    if estimator == "abs":
        return diff.abs()
    if estimator == "mse":
        return 0.5 * diff.square()
    raise ValueError(f"Unknown KL estimator {estimator!r}; valid ones are {', '.join(KL_ESTIMATORS)}.")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al., 2016) on right-padded rows.

    ``δ_t = r_t + γ V_{t+1} - V_t`` and ``A_t = δ_t + γλ A_{t+1}``, where the value and advantage
    after a row's last valid token are 0 (the episode ends). Positions outside ``mask`` inside a row
    (tool output in a TextEnvironment episode) are skipped: ``t + 1`` is the next valid position, so the
    advantages before a tool call still see the rewards after it. Returns ``(advantages, returns)``
    with ``returns = advantages + values``; both are 0 outside ``mask``. Not differentiable by design
    (inputs are detached).
    """
    m = _bool(mask)
    rewards = rewards.detach().masked_fill(~m, 0)
    values = values.detach().masked_fill(~m, 0)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv).masked_fill(~m[:, t], 0)
        advantages[:, t] = adv
        # masked positions pass the next valid position's value on; at the row end that is 0
        next_value = torch.where(m[:, t], values[:, t], next_value)
        next_adv = torch.where(m[:, t], adv, next_adv)
    return advantages, (advantages + values).masked_fill(~m, 0)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_completion_length: int | None = None,
              num_items=None) -> torch.Tensor:
    """Reduce ``[B, T]`` per-token losses to a scalar, with TRL's ``loss_type`` normalisations.

    With ``S`` the masked sum of ``per_token``, ``n_i`` the loss tokens of row ``i``, ``N = Σ n_i``:

    - ``grpo``: ``(1/B) Σ_i (Σ_t x_it / max(n_i, 1))`` (TRL ``grpo``): an empty row -- a dropped
      sample -- counts as 0, so every row weighs the same however the batch is split;
    - ``bnpo``: ``S / N`` (this batch's tokens; TRL ``bnpo``);
    - ``dr_grpo``: ``S / (B * max_completion_length)`` (TRL ``dr_grpo``; needs a positive length);
    - ``dapo``: ``S / num_items`` (clamped to >= 1 as TRL does), ``num_items`` = loss tokens of the
      whole optimizer step; ``None`` means ``N`` (then equal to ``bnpo``).

    Gradient accumulation (TRL divides grpo/bnpo/dr_grpo by the accumulation steps, which is exact for
    equal micro-batches). To make a window of micro-batches equal one big batch, a trainer:

    - ``grpo``: weights each micro-batch's loss by ``rows / rows_in_window``;
    - ``dr_grpo``: the same weight, so ``B`` becomes the window's rows;
    - ``dapo``: passes ``num_items`` = the window's loss tokens and weight 1 (what TRL does). Under DDP,
      which averages gradients over processes, pass ``window tokens of all processes / num_processes``
      (TRL's choice) for the global token mean; the process's own count gives the mean of per-process means;
    - ``bnpo``: per micro-batch as TRL (weight ``1 / steps``); not invariant to how the window is split.
    """
    m = _bool(mask)
    if loss_type == "grpo":
        return masked_mean(per_token, m, dim=-1).mean()
    if loss_type == "bnpo" or (loss_type == "dapo" and num_items is None):
        return masked_mean(per_token, m)
    if loss_type == "dr_grpo":
        if max_completion_length is None or max_completion_length <= 0:
            raise ValueError("loss_type 'dr_grpo' needs a positive max_completion_length.")
        return masked_sum(per_token, m) / (per_token.shape[0] * max_completion_length)
    if loss_type == "dapo":
        n = torch.as_tensor(num_items, dtype=per_token.dtype, device=per_token.device)
        return masked_sum(per_token, m) / n.clamp(min=1)
    raise ValueError(f"Unknown loss_type {loss_type!r}; valid ones are {', '.join(LOSS_TYPES)}.")


def clipped_policy_loss(logps, old_logps, advantages, mask, epsilon: float, loss_type: str = "dapo",
                        max_completion_length: int | None = None, epsilon_high: float | None = None, num_items=None):
    """PPO's clipped surrogate (Schulman et al., 2017), with DAPO's asymmetric clip (TRL GRPO, token level).

    ``r = exp(logp - old_logp)``; per token ``-min(A r, A clip(r, 1 - ε_low, 1 + ε_high))`` with
    ``ε_low = epsilon`` and ``ε_high = epsilon_high`` (default ``epsilon``), reduced by
    :func:`aggregate` (``loss_type``, ``max_completion_length``, ``num_items``). ``advantages`` is
    ``[B]`` (one per sequence) or ``[B, T]``.

    Returns ``(loss, stats)``; stats are detached token means over valid tokens:
    ``clipfrac`` (share of tokens where the clipped term is strictly larger, i.e. the gradient is
    cut; TRL's ``clip_ratio/region_mean``), ``approx_kl`` = ``0.5 (logp - old_logp)^2`` (k2, as TRL's
    PPO logs) and ``ratio_mean``.
    """
    m = _bool(mask)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    log_ratio = (logps - old_logps).masked_fill(~m, 0)
    ratio = torch.exp(log_ratio)
    high = epsilon if epsilon_high is None else epsilon_high
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - epsilon, 1 + high)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate(per_token, m, loss_type, max_completion_length, num_items)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), m),
            "approx_kl": masked_mean(0.5 * log_ratio.square(), m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, stats


def grpo_kl(logps, ref_logps, old_logps, bias_correction: bool, mask=None) -> torch.Tensor:
    """GRPO's per-token KL penalty (TRL ``_compute_loss``), to add as ``beta * kl`` before :func:`aggregate`.

    ``k3 = exp(ref - logp) - (ref - logp) - 1``; with ``bias_correction`` (TRL's
    ``use_bias_correction_kl``) it is multiplied by the token importance ratio ``exp(logp - old_logp)``
    and the gradient flows through both factors:
    ``d/dlogp = r k3 + r (1 - exp(ref - logp))``. ``old_logps`` is unused (may be ``None``) without
    it. With ``mask``, positions outside it are zeroed first (KL 0, ratio 1, no gradient).
    """
    m = None if mask is None else ~_bool(mask)
    diff = logps - ref_logps if m is None else (logps - ref_logps).masked_fill(m, 0)
    kl = torch.expm1(-diff) + diff  # = k3, see kl_per_token
    if bias_correction:
        log_ratio = logps - old_logps if m is None else (logps - old_logps).masked_fill(m, 0)
        kl = kl * torch.exp(log_ratio)
    return kl


def rloo_sequence_loss(logps, old_logps, advantages, mask, epsilon: float, epsilon_high: float | None = None):
    """RLOO's sequence-level clipped loss (Ahmadian et al., 2024; TRL 1.16 ``RLOOTrainer``).

    ``r_i = exp(Σ_t logp_it - Σ_t old_logp_it)`` over the masked tokens of row ``i`` (``old_logps`` is
    ``[B, T]`` per token, or ``[B]`` already summed as TRL stores it); loss
    ``mean_i -min(r_i A_i, clip(r_i, 1 - ε_low, 1 + ε_high) A_i)`` over all ``B`` rows, ``ε_low =
    epsilon``, ``ε_high = epsilon_high`` (default ``epsilon``). At ``r = 1`` its gradient is the
    REINFORCE-LOO estimator ``-(1/B) Σ_i A_i ∇ Σ_t logp_it``. Under accumulation weight by
    ``B / rows_in_window``. Returns ``(loss, stats)``, detached means over rows: ``clipfrac`` (share of
    sequences whose clipped term is strictly larger) and ``ratio_mean``.
    """
    m = _bool(mask)
    if old_logps.dim() == 1:
        log_ratio = masked_sum(logps, m, dim=-1) - old_logps
    else:
        log_ratio = masked_sum(logps - old_logps, m, dim=-1)
    ratio = torch.exp(log_ratio)
    advantages = advantages.reshape(-1)
    high = epsilon if epsilon_high is None else epsilon_high
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - epsilon, 1 + high)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {"clipfrac": (clipped > unclipped).to(ratio.dtype).mean(), "ratio_mean": ratio.mean()}
    return loss, stats


def clipped_value_loss(values, old_values, returns, mask, clip_range: float):
    """PPO's clipped value loss: ``0.5 * masked_mean(max((v - R)^2, (clip(v, old - c, old + c) - R)^2))``.

    Returns ``(loss, clipfrac)`` where ``clipfrac`` (detached) is the share of valid tokens at which
    the clipped error is strictly larger.
    """
    m = _bool(mask)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err = (values - returns).square()
    err_clipped = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), m)
    clipfrac = masked_mean((err_clipped > err).to(values.dtype), m).detach()
    return loss, clipfrac


def _nanstd(x: torch.Tensor) -> torch.Tensor:
    """Unbiased std over the last dim of the non-NaN entries (keepdim); NaN with fewer than two (TRL ``nanstd``)."""
    count = (~torch.isnan(x)).sum(-1, keepdim=True)
    var = torch.nansum((x - torch.nanmean(x, -1, keepdim=True)).square(), -1, keepdim=True) / (count - 1).clamp(min=1)
    return torch.where(count > 1, var.sqrt(), torch.full_like(var, float("nan")))


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards cannot be split into groups of {group_size}.")
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, scale="group") -> torch.Tensor:
    """GRPO advantages (TRL ``sum_then_normalize``); groups are consecutive blocks of ``group_size``.

    A NaN reward marks an unscorable completion: statistics use the scorable rewards only and its
    advantage is 0. ``A = r - nanmean(group)``, then divided by ``nanstd(group) + 1e-4``
    (``scale="group"`` or ``True``), by ``nanstd(batch) + 1e-4`` (``"batch"``) or not at all
    (``"none"`` or ``False``, Dr. GRPO); stds are unbiased. As in TRL, an advantage that is NaN (a
    std over fewer than two scorable rewards) becomes 0.
    """
    if isinstance(scale, bool):  # TRL's config maps True/False to "group"/"none"
        scale = "group" if scale else "none"
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"Unknown advantage scale {scale!r}; valid ones are {', '.join(ADVANTAGE_SCALES)}.")
    grouped = _groups(rewards, group_size)
    advantages = grouped - torch.nanmean(grouped, -1, keepdim=True)
    if scale == "group":
        advantages = advantages / (_nanstd(grouped) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (_nanstd(rewards.reshape(1, -1)) + 1e-4)
    advantages = advantages.reshape(-1)
    return torch.where(torch.isnan(advantages), torch.zeros_like(advantages), advantages)


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int, normalize: bool = False) -> torch.Tensor:
    """RLOO advantages (Kool et al., 2019; Ahmadian et al., 2024; TRL 1.16), NaN-aware.

    ``A_i = r_i - (Σ_{j≠i} r_j) / (k - 1)`` over the ``k`` scorable (non-NaN) rewards of row ``i``'s
    consecutive group. Undefined advantages — unscorable rows, the only scorable row of a group,
    every row when ``group_size == 1`` — become 0. ``normalize`` (TRL's ``normalize_advantages``):
    ``(A - nanmean(A)) / (nanstd(A) + 1e-4)`` over the batch's defined advantages only.
    """
    grouped = _groups(rewards, group_size)
    count = (~torch.isnan(grouped)).sum(-1, keepdim=True)
    baseline = (torch.nansum(grouped, -1, keepdim=True) - grouped) / (count - 1).clamp(min=1)
    advantages = torch.where(count > 1, grouped - baseline, torch.full_like(grouped, float("nan"))).reshape(-1)
    if normalize:
        advantages = (advantages - torch.nanmean(advantages)) / (_nanstd(advantages).squeeze(-1) + 1e-4)
    return torch.where(torch.isnan(advantages), torch.zeros_like(advantages), advantages)


class FixedKLController:
    """A constant KL coefficient; ``update`` does nothing."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al., 2019): after each batch,
    ``err = clip(current_kl / target - 1, -0.2, 0.2)`` and ``value *= 1 + err * n_steps / horizon``."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        err = min(max(float(current_kl) / self.target - 1, -0.2), 0.2)
        self.value *= 1 + err * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = (float(state[k]) for k in ("value", "target", "horizon"))


def kl_controller(init_kl_coef: float, target: float | None = None, horizon: float = 10000):
    """An :class:`AdaptiveKLController` when ``target`` is given, else a :class:`FixedKLController`."""
    if target is None:
        return FixedKLController(init_kl_coef)
    return AdaptiveKLController(init_kl_coef, target, horizon)


class RunningMoments:
    """Running mean and std of all scores seen, merged batch by batch (Chan et al., 1979).

    Kept as python floats in double precision. ``std`` is the unbiased std of everything seen
    (1.0 until two scores have been seen, so dividing by it is a no-op at the start).
    """

    def __init__(self):
        self.mean, self.m2, self.count = 0.0, 0.0, 0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def update(self, x: torch.Tensor) -> tuple[float, float]:
        """Fold in a batch of scores; returns the batch's ``(mean, unbiased std)`` (std 0.0 for one score)."""
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            raise ValueError("RunningMoments.update needs at least one score.")
        batch_mean = x.mean().item()
        batch_m2 = (x - batch_mean).square().sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total
        return batch_mean, math.sqrt(batch_m2 / (n - 1)) if n > 1 else 0.0

    def state_dict(self) -> dict:
        return {"mean": self.mean, "m2": self.m2, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.m2, self.count = float(state["mean"]), float(state["m2"]), int(state["count"])
