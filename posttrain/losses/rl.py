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
AGGREGATIONS = ("sequence", "token", "constant")
ADVANTAGE_SCALES = ("group", "batch", "none")


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


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, max_tokens: int | None = None) -> torch.Tensor:
    """Reduce ``[B, T]`` per-token losses to a scalar.

    - ``sequence``: mean over rows of each row's masked mean (GRPO); rows with no valid token are
      left out of the mean (0 if all rows are empty);
    - ``token``: sum over all valid tokens / number of valid tokens (DAPO);
    - ``constant``: sum over all valid tokens / (B * ``max_tokens``) (Dr. GRPO).
    """
    m = _bool(mask)
    if mode == "sequence":
        row_counts = m.sum(-1)
        row_means = masked_mean(per_token, m, dim=-1)
        has_tokens = row_counts > 0
        return masked_sum(row_means, has_tokens) / has_tokens.sum().clamp(min=1)
    if mode == "token":
        return masked_mean(per_token, m)
    if mode == "constant":
        if max_tokens is None or max_tokens <= 0:
            raise ValueError("aggregation 'constant' needs a positive max_tokens (the generation length budget).")
        return masked_sum(per_token, m) / (per_token.shape[0] * max_tokens)
    raise ValueError(f"Unknown aggregation {mode!r}; valid ones are {', '.join(AGGREGATIONS)}.")


def clipped_policy_loss(logps, old_logps, advantages, mask, clip_range: float, aggregation: str = "token",
                        max_tokens: int | None = None, clip_range_high: float | None = None):
    """PPO's clipped surrogate (Schulman et al., 2017), with DAPO's asymmetric clip.

    ``r = exp(logp - old_logp)``; per token ``max(-A r, -A clip(r, 1 - ε_low, 1 + ε_high))`` with
    ``ε_low = clip_range`` and ``ε_high = clip_range_high`` (default ``clip_range``), reduced by
    :func:`aggregate`. ``advantages`` is ``[B]`` (one per sequence) or ``[B, T]``.

    Returns ``(loss, stats)``; stats are detached token means over valid tokens:
    ``clipfrac`` (share of tokens where the clipped term is strictly larger, i.e. the gradient is
    cut), ``approx_kl`` = ``0.5 (logp - old_logp)^2`` (k2, as TRL's PPO logs) and ``ratio_mean``.
    """
    m = _bool(mask)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    log_ratio = (logps - old_logps).masked_fill(~m, 0)
    ratio = torch.exp(log_ratio)
    high = clip_range if clip_range_high is None else clip_range_high
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + high)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate(per_token, m, aggregation, max_tokens)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), m),
            "approx_kl": masked_mean(0.5 * log_ratio.square(), m),
            "ratio_mean": masked_mean(ratio, m),
        }
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


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO advantages: groups are consecutive blocks of ``group_size`` completions of one prompt.

    ``A = r - group mean``, then divided by ``group std + 1e-4`` (``scale="group"``, unbiased std
    as in TRL's GRPO), by ``batch std + 1e-4`` (``"batch"``, unbiased std of all ``B`` rewards) or
    not at all (``"none"``, Dr. GRPO).
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"Unknown advantage scale {scale!r}; valid ones are {', '.join(ADVANTAGE_SCALES)}.")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards cannot be split into groups of {group_size}.")
    if scale == "group" and group_size < 2:
        raise ValueError("scale='group' needs group_size >= 2 to compute a group std.")
    if scale == "batch" and rewards.shape[0] < 2:
        raise ValueError("scale='batch' needs at least 2 rewards to compute a batch std.")
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(-1, keepdim=True)
    if scale == "group":
        advantages = advantages / (grouped.std(-1, keepdim=True) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (rewards.std() + 1e-4)
    return advantages.reshape(-1)


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO advantages (Kool et al., 2019; Ahmadian et al., 2024): ``A_i = r_i - mean_{j≠i} r_j``
    over the other ``group_size - 1`` completions in its (consecutive) group."""
    if group_size < 2:
        raise ValueError(f"leave-one-out needs group_size >= 2, got {group_size}.")
    if rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards cannot be split into groups of {group_size}.")
    grouped = rewards.view(-1, group_size)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


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
