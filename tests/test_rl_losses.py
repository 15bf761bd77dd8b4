"""Online-RL math (PPO, GRPO, RLOO) against values computed by hand with scalar python."""

import json
import math
import statistics

import pytest
import torch

from posttrain.losses.rl import (AdaptiveKLController, FixedKLController, RunningMoments, aggregate,
                                 clipped_policy_loss, clipped_value_loss, gae, group_advantages, grpo_kl,
                                 kl_controller, kl_per_token, leave_one_out_advantages, masked_mean, masked_sum,
                                 masked_whiten, rloo_sequence_loss)

T = torch.tensor


def scalar_gae(rewards, values, gamma, lam):
    """GAE for one unpadded episode, one scalar at a time."""
    advantages, last = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        last = rewards[t] + gamma * next_value - values[t] + gamma * lam * last
        advantages[t] = last
    return advantages


def test_masked_mean_sum_and_whiten():
    x = T([[1.0, 2.0, 100.0], [4.0, float("nan"), -7.0]])
    mask = T([[1, 1, 0], [1, 0, 1]])
    assert masked_sum(x, mask).item() == pytest.approx(1 + 2 + 4 - 7)
    assert masked_mean(x, mask).item() == pytest.approx(0.0)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, -1.5])
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0  # empty mask: 0, not NaN

    valid = [1.0, 2.0, 4.0, -7.0]
    mean, var = statistics.mean(valid), statistics.variance(valid)  # variance: unbiased (n - 1)
    white = masked_whiten(x, mask.bool())
    expected = [[(1 - mean) / math.sqrt(var + 1e-8), (2 - mean) / math.sqrt(var + 1e-8), 0.0],
                [(4 - mean) / math.sqrt(var + 1e-8), 0.0, (-7 - mean) / math.sqrt(var + 1e-8)]]
    assert white.tolist()[0] == pytest.approx(expected[0], abs=1e-6)
    assert white.tolist()[1] == pytest.approx(expected[1], abs=1e-6)
    unshifted = masked_whiten(x + 3, mask, shift_mean=False)
    assert unshifted[0, 0].item() == pytest.approx((1 - mean) / math.sqrt(var) + mean + 3, abs=1e-5)
    assert unshifted[0, 2].item() == 0.0


def test_kl_estimators_against_math():
    logps, ref = T([-1.0, -2.0, -0.3]), T([-1.5, -1.0, -0.3])
    assert kl_per_token(logps, ref).tolist() == pytest.approx([0.5, -1.0, 0.0])
    k3 = [math.exp(r - lp) - (r - lp) - 1 for lp, r in [(-1.0, -1.5), (-2.0, -1.0), (-0.3, -0.3)]]
    assert k3 == pytest.approx([math.exp(-0.5) - 0.5, math.exp(1.0) - 2.0, 0.0])
    assert kl_per_token(logps, ref, "k3").tolist() == pytest.approx(k3, abs=1e-6)
    assert kl_per_token(logps, ref, "abs").tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert kl_per_token(logps, ref, "mse").tolist() == pytest.approx([0.125, 0.5, 0.0])
    with pytest.raises(ValueError, match="k1, k3, abs, mse"):
        kl_per_token(logps, ref, "k2")


def test_gae_hand_written_three_token_row():
    # γ=0.9, λ=0.8: δ2 = 1 - 0.3 = 0.7;  δ1 = 0.9*0.3 - 0.4 = -0.13;  δ0 = 0.9*0.4 - 0.5 = -0.14
    # A2 = 0.7;  A1 = -0.13 + 0.72*0.7 = 0.374;  A0 = -0.14 + 0.72*0.374 = 0.12928
    adv, ret = gae(T([[0.0, 0.0, 1.0]]), T([[0.5, 0.4, 0.3]]), T([[1, 1, 1]]), gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([0.12928, 0.374, 0.7], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0.62928, 0.774, 1.0], abs=1e-6)


def test_gae_rows_of_different_lengths():
    r0, v0 = [0.0, 0.0, 1.0], [0.5, 0.4, 0.3]
    r1, v1 = [0.1, -0.2, 0.0, 0.3, 2.0], [1.0, 0.5, -0.5, 0.2, 0.8]
    # padding of row 0 holds garbage that must not leak into its last valid token
    rewards = T([r0 + [7.0, 7.0], r1])
    values = T([v0 + [9.0, 9.0], v1])
    mask = T([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    exp0, exp1 = scalar_gae(r0, v0, 0.9, 0.8), scalar_gae(r1, v1, 0.9, 0.8)
    assert adv[0].tolist() == pytest.approx(exp0 + [0.0, 0.0], abs=1e-6)
    assert adv[1].tolist() == pytest.approx(exp1, abs=1e-6)
    assert ret[0].tolist() == pytest.approx([a + v for a, v in zip(exp0, v0)] + [0.0, 0.0], abs=1e-6)
    assert ret[1].tolist() == pytest.approx([a + v for a, v in zip(exp1, v1)], abs=1e-6)


# Policy-loss fixture: row 0 has A=+1 and 3 valid tokens, row 1 has A=-2 and 2 valid tokens plus a
# padded token whose log-ratio (100) would overflow exp() if it were not masked out.
LOG_RATIOS = [[0.5, -0.5, 0.1], [0.5, -0.5, 100.0]]
ADV = [1.0, -2.0]
MASK = [[1, 1, 1], [1, 1, 0]]


def hand_policy_tokens(eps_low, eps_high):
    """Per-token (loss, clipped?) for the valid tokens, row by row."""
    rows = []
    for lrs, a, m in zip(LOG_RATIOS, ADV, MASK):
        row = []
        for lr, valid in zip(lrs, m):
            if not valid:
                continue
            r = math.exp(lr)
            rc = min(max(r, 1 - eps_low), 1 + eps_high)
            row.append((max(-a * r, -a * rc), -a * rc > -a * r))
        rows.append(row)
    return rows


def policy_inputs():
    old = T([[-1.0, -2.0, -3.0], [-1.5, -0.5, -50.0]])
    logps = (old + T(LOG_RATIOS)).requires_grad_()
    return logps, old, T(ADV), T(MASK)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "dapo_window"])
def test_clipped_policy_loss_each_loss_type(loss_type):
    rows = hand_policy_tokens(0.2, 0.2)
    # spot checks of the fixture: +A r=e^.5 is clipped to 1.2; -A r=e^-.5 is clipped to 0.8
    assert rows[0][0] == (-1.2, True) and rows[1][1] == (pytest.approx(1.6), True)
    assert not rows[0][1][1] and not rows[0][2][1] and not rows[1][0][1]
    flat = [loss for row in rows for loss, _ in row]
    assert flat == pytest.approx([-1.2, -math.exp(-0.5), -math.exp(0.1), 2 * math.exp(0.5), 1.6])
    expected = {
        "grpo": (sum(flat[:3]) / 3 + sum(flat[3:]) / 2) / 2,  # mean of row means
        "bnpo": sum(flat) / 5,                                # this batch's 5 tokens
        "dr_grpo": sum(flat) / (2 * 4),                       # B=2 rows * max_completion_length=4
        "dapo": sum(flat) / 5,                                # num_items defaults to this batch's tokens
        "dapo_window": sum(flat) / 12,                        # num_items=12 tokens in the window
    }[loss_type]
    num_items = 12 if loss_type == "dapo_window" else None
    logps, old, adv, mask = policy_inputs()
    loss, stats = clipped_policy_loss(logps, old, adv, mask, 0.2, loss_type=loss_type.replace("_window", ""),
                                      max_completion_length=4, num_items=num_items)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    valid = [lr for row, m in zip(LOG_RATIOS, MASK) for lr, ok in zip(row, m) if ok]
    assert stats["clipfrac"].item() == pytest.approx(2 / 5)
    assert stats["approx_kl"].item() == pytest.approx(sum(0.5 * lr * lr for lr in valid) / 5, abs=1e-6)
    assert stats["ratio_mean"].item() == pytest.approx(sum(math.exp(lr) for lr in valid) / 5, abs=1e-6)
    loss.backward()
    assert torch.isfinite(logps.grad).all() and logps.grad[1, 2] == 0
    assert logps.grad[0, 0] == 0 and logps.grad[0, 1] != 0  # clipped tokens get no gradient


def test_clipped_policy_loss_asymmetric_clip_and_per_token_advantages():
    rows = hand_policy_tokens(0.2, 0.28)  # DAPO clip-higher: e^.1 still inside, e^.5 clipped at 1.28
    flat = [loss for row in rows for loss, _ in row]
    assert rows[0][0][0] == pytest.approx(-1.28)
    logps, old, adv, mask = policy_inputs()
    per_token_adv = adv.unsqueeze(-1).expand(2, 3).clone()
    loss, stats = clipped_policy_loss(logps, old, per_token_adv, mask, 0.2, epsilon_high=0.28)
    assert loss.item() == pytest.approx(sum(flat) / 5, abs=1e-5)
    assert stats["clipfrac"].item() == pytest.approx(sum(c for row in rows for _, c in row) / 5)


def test_aggregate_each_loss_type_counts_empty_rows_as_zero_and_errors():
    x = T([[1.0, 3.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0], [float("nan"), 2.0, 4.0, 9.0]])
    mask = T([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]])
    # valid tokens: row 0 {1, 3}, row 1 none, row 2 {2, 4, 9}; S = 19, N = 5
    assert aggregate(x, mask, "grpo").item() == pytest.approx((2.0 + 0.0 + 5.0) / 3)  # an empty row counts 0 (TRL)
    assert aggregate(x, mask, "bnpo").item() == pytest.approx(19 / 5)
    assert aggregate(x, mask, "dr_grpo", max_completion_length=4).item() == pytest.approx(19 / 12)
    assert aggregate(x, mask, "dapo").item() == pytest.approx(19 / 5)
    assert aggregate(x, mask, "dapo", num_items=10).item() == pytest.approx(19 / 10)
    assert aggregate(x, mask, "dapo", num_items=torch.tensor(10)).item() == pytest.approx(19 / 10)
    assert aggregate(x, torch.zeros(3, 4), "grpo").item() == 0.0
    assert aggregate(x, torch.zeros(3, 4), "bnpo").item() == 0.0
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate(x, mask, "dr_grpo")
    with pytest.raises(ValueError, match="grpo, bnpo, dr_grpo, dapo"):
        aggregate(x, mask, "token")  # the old names are gone


# Accumulation fixture: 4 rows, split into micro-batches rows {0, 1} (5 tokens) and {2, 3} (6 tokens).
ACC_LR = [[0.1, -0.05, 0.3, 0.0], [0.0, 0.2, 0.0, 0.0], [-0.1, 0.05, 0.0, 0.15], [0.25, -0.1, 0.0, 0.0]]
ACC_ADV = [1.0, -0.5, 2.0, -1.0]
ACC_MASK = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]


def acc_hand_rows():
    """Per-row lists of per-token losses (ε = 0.2), in scalar python."""
    rows = []
    for lrs, a, m in zip(ACC_LR, ACC_ADV, ACC_MASK):
        rows.append([max(-a * math.exp(lr), -a * min(max(math.exp(lr), 0.8), 1.2)) for lr, ok in zip(lrs, m) if ok])
    return rows


def test_accumulation_window_dapo_num_items_grpo_and_dr_grpo_weights():
    rows = acc_hand_rows()
    assert rows[0][2] == pytest.approx(-1.2)  # e^.3 is clipped for A > 0
    s_a, s_b = sum(rows[0]) + sum(rows[1]), sum(rows[2]) + sum(rows[3])
    old = torch.full((4, 4), -1.0, dtype=torch.float64)
    logps = (old + T(ACC_LR, dtype=torch.float64)).requires_grad_()
    adv, mask = T(ACC_ADV, dtype=torch.float64), T(ACC_MASK)
    halves = (slice(0, 2), slice(2, 4))

    def window(loss_type, weight, **kw):
        losses = [weight * clipped_policy_loss(logps[h], old[h], adv[h], mask[h], 0.2, loss_type, **kw)[0]
                  for h in halves]
        return sum(losses), torch.autograd.grad(sum(losses), logps)[0]

    def big(loss_type, **kw):
        loss = clipped_policy_loss(logps, old, adv, mask, 0.2, loss_type, **kw)[0]
        return loss, torch.autograd.grad(loss, logps)[0]

    big_bnpo, g_big = big("bnpo")
    assert big_bnpo.item() == pytest.approx((s_a + s_b) / 11, abs=1e-12)
    dapo, g_dapo = window("dapo", 1.0, num_items=11)  # the window's 11 tokens, weight 1
    assert dapo.item() == pytest.approx(big_bnpo.item(), abs=1e-12)
    assert torch.allclose(g_dapo, g_big, atol=1e-12, rtol=0)
    # bnpo per micro-batch as TRL (1 / steps) is not the big batch: (s_a / 5 + s_b / 6) / 2
    bnpo, _ = window("bnpo", 0.5)
    assert bnpo.item() == pytest.approx((s_a / 5 + s_b / 6) / 2, abs=1e-12)
    assert bnpo.item() != pytest.approx(big_bnpo.item(), abs=1e-3)
    # grpo and dr_grpo: each micro-batch weighted by rows / rows_in_window = 2 / 4
    row_means = [sum(r) / len(r) for r in rows]
    big_grpo, g_big_grpo = big("grpo")
    assert big_grpo.item() == pytest.approx(sum(row_means) / 4, abs=1e-12)
    grpo, g_grpo = window("grpo", 2 / 4)
    assert grpo.item() == pytest.approx(big_grpo.item(), abs=1e-12) and torch.allclose(g_grpo, g_big_grpo)
    big_dr, g_big_dr = big("dr_grpo", max_completion_length=4)
    assert big_dr.item() == pytest.approx((s_a + s_b) / (4 * 4), abs=1e-12)
    dr, g_dr = window("dr_grpo", 2 / 4, max_completion_length=4)
    assert dr.item() == pytest.approx(big_dr.item(), abs=1e-12) and torch.allclose(g_dr, g_big_dr)


def test_grpo_kl_value_and_gradient_by_hand():
    lp, ref, old = [-1.0, -2.0, -0.3], [-1.5, -1.0, -0.3], [-1.2, -1.8, -0.5]
    for bias in (False, True):
        logps = T(lp, dtype=torch.float64).requires_grad_()
        kl = grpo_kl(logps, T(ref, dtype=torch.float64), T(old, dtype=torch.float64) if bias else None, bias)
        (grad,) = torch.autograd.grad(kl.sum(), logps)
        for i, (l, r, o) in enumerate(zip(lp, ref, old)):
            d = r - l
            k3 = math.exp(d) - d - 1
            dk3 = 1 - math.exp(d)  # d/dl of exp(r - l) - (r - l) - 1
            w = math.exp(l - o) if bias else 1.0  # importance ratio; d/dl w = w
            assert kl[i].item() == pytest.approx(w * k3, abs=1e-12)
            assert grad[i].item() == pytest.approx((w * k3 + w * dk3) if bias else dk3, abs=1e-12)
    # token 0 by hand: k3 = e^-.5 - .5; with bias: e^.2 (e^-.5 - .5), gradient e^.2 (e^-.5 - .5 + 1 - e^-.5) = .5 e^.2
    assert grad[0].item() == pytest.approx(0.5 * math.exp(0.2), abs=1e-12)
    # padding: exp(170) overflows float32; with the mask it is 0 with a zero, finite gradient
    logps = T([[-1.0, 80.0]]).requires_grad_()
    kl = grpo_kl(logps, T([[-1.5, -90.0]]), T([[-1.2, 0.0]]), True, mask=T([[1, 0]]))
    kl.sum().backward()
    assert kl[0, 1].item() == 0.0 and logps.grad[0, 1].item() == 0.0 and torch.isfinite(logps.grad).all()
    assert kl[0, 0].item() == pytest.approx(math.exp(0.2) * (math.exp(-0.5) - 0.5), abs=1e-6)


# RLOO fixture: B=3 rows of 2, 3 and 1 valid tokens (N=6); padding holds garbage.
RLOO_MASK = [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
RLOO_ADV = [1.0, -2.0, 0.5]
RLOO_OLD = [[-1.0, -2.0, -3.0], [-0.5, -1.5, -0.7], [-2.0, 50.0, 50.0]]


def test_rloo_sequence_gradient_is_reinforce_loo_and_token_level_differs_by_b_over_n():
    old, adv, mask = T(RLOO_OLD, dtype=torch.float64), T(RLOO_ADV, dtype=torch.float64), T(RLOO_MASK)
    logps = old.clone().requires_grad_()  # on-policy: every sequence ratio is 1, nothing clipped
    loss, stats = rloo_sequence_loss(logps, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx(-(1.0 - 2.0 + 0.5) / 3)
    assert stats["ratio_mean"].item() == 1.0 and stats["clipfrac"].item() == 0.0
    (grad,) = torch.autograd.grad(loss, logps)
    # -(1/B) Σ_i A_i ∇ Σ_t logp_it: every valid token of row i gets -A_i / B, padding 0
    expected = [[-1 / 3, -1 / 3, 0.0], [2 / 3, 2 / 3, 2 / 3], [-0.5 / 3, 0.0, 0.0]]
    for got, want in zip(grad.tolist(), expected):
        assert got == pytest.approx(want, abs=1e-12)
    # old sums ([B], as TRL stores them) give the same
    old_sums = T([-3.0, -2.7, -2.0], dtype=torch.float64)
    assert rloo_sequence_loss(logps, old_sums, adv, mask, 0.2)[0].item() == pytest.approx(loss.item())
    # the old token-level aggregation (token mean over N=6) gives -A_i / N: the estimator times B / N = 1/2
    token_loss, _ = clipped_policy_loss(logps, old, adv, mask, 0.2, "bnpo")
    (token_grad,) = torch.autograd.grad(token_loss, logps)
    assert torch.allclose(token_grad, grad * 3 / 6, atol=1e-12, rtol=0)
    assert not torch.allclose(token_grad, grad)
    assert token_grad[1, 0].item() == pytest.approx(2 / 6)


def test_rloo_sequence_loss_clipped_by_hand():
    lr = T([[0.1, 0.2, 100.0], [-0.1, 0.05, 0.0], [-0.4, 100.0, 100.0]], dtype=torch.float64)
    old, adv, mask = T(RLOO_OLD, dtype=torch.float64), T(RLOO_ADV, dtype=torch.float64), T(RLOO_MASK)
    logps = (old + lr).requires_grad_()
    # sequence log-ratios .3, -.05, -.4; ε=0.2: row 0 (A=1) e^.3 > 1.2 is clipped to -1.2;
    # row 1 (A=-2): 2 e^-.05 inside; row 2 (A=.5): e^-.4 < .8 but A > 0, so -.5 e^-.4 > -.4 (not clipped)
    loss, stats = rloo_sequence_loss(logps, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx((-1.2 + 2 * math.exp(-0.05) - 0.5 * math.exp(-0.4)) / 3, abs=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["ratio_mean"].item() == pytest.approx((math.exp(0.3) + math.exp(-0.05) + math.exp(-0.4)) / 3)
    (grad,) = torch.autograd.grad(loss, logps)
    expected = [[0.0, 0.0, 0.0], [2 * math.exp(-0.05) / 3] * 3, [-0.5 * math.exp(-0.4) / 3, 0.0, 0.0]]
    for got, want in zip(grad.tolist(), expected):
        assert got == pytest.approx(want, abs=1e-12)
    # clip-higher ε_high=0.4: e^.3 < 1.4, nothing clipped
    loss, stats = rloo_sequence_loss(logps, old, adv, mask, 0.2, epsilon_high=0.4)
    assert loss.item() == pytest.approx((-math.exp(0.3) + 2 * math.exp(-0.05) - 0.5 * math.exp(-0.4)) / 3, abs=1e-12)
    assert stats["clipfrac"].item() == 0.0


def test_clipped_value_loss_with_clipping_active():
    # (v, old, R) per token, c = 0.2:
    #   (1.0, 0.5, 1.0): clip v -> 0.7, err 0 vs 0.09 -> 0.09 (clipped term wins)
    #   (0.6, 0.5, 0.0): inside the clip, 0.36
    #   (0.0, 0.5, 1.0): clip v -> 0.3, err 1 vs 0.49 -> 1.0
    #   (0.9, 0.5, 0.0): clip v -> 0.7, err 0.81 vs 0.49 -> 0.81
    values = T([[1.0, 0.6, 0.0], [0.9, 50.0, 50.0]])
    old = T([[0.5, 0.5, 0.5], [0.5, 0.0, 0.0]])
    returns = T([[1.0, 0.0, 1.0], [0.0, -50.0, -50.0]])
    mask = T([[1, 1, 1], [1, 0, 0]])
    loss, clipfrac = clipped_value_loss(values, old, returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.09 + 0.36 + 1.0 + 0.81) / 4, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 4)


def test_group_advantages_on_explicit_numbers():
    rewards = T([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 1.0, 1.0])
    dev = [-2.0, -1.0, 0.0, 3.0, -0.5, -0.5, 0.5, 0.5]
    std1, std2 = math.sqrt((4 + 1 + 0 + 9) / 3), math.sqrt(4 * 0.25 / 3)
    expected = [d / (std1 + 1e-4) for d in dev[:4]] + [d / (std2 + 1e-4) for d in dev[4:]]
    assert group_advantages(rewards, 4).tolist() == pytest.approx(expected, abs=1e-5)
    assert group_advantages(rewards, 4, True).tolist() == pytest.approx(expected, abs=1e-5)  # TRL: True = "group"
    batch_std = statistics.stdev(rewards.tolist())
    assert group_advantages(rewards, 4, "batch").tolist() == pytest.approx([d / (batch_std + 1e-4) for d in dev], abs=1e-5)
    assert group_advantages(rewards, 4, "none").tolist() == pytest.approx(dev)
    assert group_advantages(rewards, 4, False).tolist() == pytest.approx(dev)  # TRL: False = "none"
    # equal rewards in a group: zero advantage, no NaN; group_size 1 (TRL eval): zero
    assert group_advantages(T([2.0, 2.0]), 2).tolist() == [0.0, 0.0]
    assert group_advantages(T([2.0, 5.0]), 1).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(rewards, 3)
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(rewards, 4, "std")


NAN = float("nan")


def test_group_advantages_leave_unscorable_rewards_out():
    # group 1: scorable {1, 3, 5}: mean 3, unbiased std sqrt((4 + 0 + 4) / 2) = 2; group 2: none scorable;
    # group 3: one scorable reward (deviation 0, std undefined)
    rewards = T([1.0, NAN, 3.0, 5.0, NAN, NAN, NAN, NAN, 2.0, NAN, NAN, NAN])
    zeros8 = [0.0] * 8
    assert group_advantages(rewards, 4).tolist() == pytest.approx([-2 / 2.0001, 0.0, 0.0, 2 / 2.0001] + zeros8)
    assert group_advantages(rewards, 4, "none").tolist() == pytest.approx([-2.0, 0.0, 0.0, 2.0] + zeros8)
    # batch std over the scorable {1, 3, 5, 2}: mean 2.75, squares 3.0625 + .0625 + 5.0625 + .5625 = 8.75
    batch_std = math.sqrt(8.75 / 3)
    expected = [-2 / (batch_std + 1e-4), 0.0, 0.0, 2 / (batch_std + 1e-4)] + zeros8
    assert group_advantages(rewards, 4, "batch").tolist() == pytest.approx(expected, abs=1e-6)


def test_leave_one_out_advantages_on_explicit_numbers():
    rewards = T([1.0, 2.0, 3.0, 6.0, 0.0, 1.0])
    # group 1 (G=4): 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3;  group 2 of the G=2 split differs below
    assert leave_one_out_advantages(rewards[:4], 4).tolist() == pytest.approx([-8 / 3, -4 / 3, 0.0, 4.0])
    # G=2: each baseline is the other reward
    assert leave_one_out_advantages(rewards, 2).tolist() == pytest.approx([-1.0, 1.0, -3.0, 3.0, -1.0, 1.0])
    # normalize: mean 0, unbiased variance (64/9 + 16/9 + 0 + 16) / 3 = 224/27
    std = math.sqrt(224 / 27)
    assert leave_one_out_advantages(rewards[:4], 4, normalize=True).tolist() == pytest.approx(
        [a / (std + 1e-4) for a in [-8 / 3, -4 / 3, 0.0, 4.0]], abs=1e-6)
    assert leave_one_out_advantages(rewards, 1).tolist() == [0.0] * 6  # no sibling, no baseline (TRL eval)
    with pytest.raises(ValueError, match="groups of 4"):
        leave_one_out_advantages(rewards, 4)


def test_leave_one_out_advantages_leave_unscorable_rewards_out():
    rewards = T([1.0, NAN, 3.0, 5.0, 2.0, NAN, NAN, NAN, 4.0, 0.0, NAN, NAN])
    # group 1: scorable {1, 3, 5}, sum 9, k=3: 1 - 8/2, 3 - 6/2, 5 - 4/2;  group 2: one scorable -> 0;
    # group 3: {4, 0}, k=2: 4 - 0, 0 - 4; unscorable rows 0
    expected = [-3.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 4.0, -4.0, 0.0, 0.0]
    assert leave_one_out_advantages(rewards, 4).tolist() == pytest.approx(expected)
    # normalize over the defined advantages {-3, 0, 3, 4, -4} (not group 2's lone row): mean 0 (leave-one-out
    # advantages sum to 0 in each group), unbiased variance (9 + 0 + 9 + 16 + 16) / 4 = 12.5
    std = math.sqrt(12.5)
    assert leave_one_out_advantages(rewards, 4, normalize=True).tolist() == pytest.approx(
        [a / (std + 1e-4) for a in expected], abs=1e-6)


def test_adaptive_kl_controller_sequence_and_state_round_trip():
    ctl = kl_controller(0.1, target=6.0, horizon=10000)
    assert isinstance(ctl, AdaptiveKLController)
    expected = 0.1
    for kl, n, err in [(3.0, 256, -0.2),    # 3/6 - 1 = -0.5, clipped to -0.2
                       (6.6, 512, 0.1),     # 6.6/6 - 1 = 0.1, inside
                       (100.0, 128, 0.2),   # clipped to +0.2
                       (6.0, 64, 0.0)]:     # on target: unchanged
        ctl.update(kl, n)
        expected *= 1 + err * n / 10000
        assert ctl.value == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.1 * (1 - 0.00512) * (1 + 0.00512) * (1 + 0.00256), rel=1e-12)
    restored = AdaptiveKLController(1.0, 1.0, 1.0)
    restored.load_state_dict(json.loads(json.dumps(ctl.state_dict())))
    restored.update(12.0, 100)
    ctl.update(12.0, 100)
    assert restored.value == ctl.value == pytest.approx(expected * 1.002, rel=1e-12)

    fixed = kl_controller(0.05)
    assert isinstance(fixed, FixedKLController)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(json.loads(json.dumps(fixed.state_dict())))
    assert other.value == 0.05


def test_running_moments_match_concatenation():
    torch.manual_seed(0)
    batches = [torch.randn(5) * 3 + 1, torch.randn(1) + 10, torch.randn(8) - 2, torch.randn(2, 3)]
    rm = RunningMoments()
    assert rm.std == 1.0 and rm.mean == 0.0
    for i, batch in enumerate(batches):
        batch_mean, batch_std = rm.update(batch)
        values = batch.flatten().double().tolist()
        assert batch_mean == pytest.approx(statistics.mean(values), abs=1e-9)
        assert batch_std == pytest.approx(statistics.stdev(values) if len(values) > 1 else 0.0, abs=1e-9)
        seen = torch.cat([b.flatten() for b in batches[: i + 1]]).double()
        assert rm.mean == pytest.approx(seen.mean().item(), abs=1e-9)
        assert rm.std == pytest.approx(seen.std().item(), abs=1e-9)
        if i == 1:  # round trip mid-stream, through JSON
            state = json.loads(json.dumps(rm.state_dict()))
            rm = RunningMoments()
            rm.load_state_dict(state)
    with pytest.raises(ValueError):
        rm.update(torch.tensor([]))


def test_gae_skips_masked_positions_inside_a_row():
    """Tool output inside an episode (mask 0) is skipped: the row equals the same row with it cut out."""
    rewards = torch.tensor([[0.1, -0.2, 9.0, 9.0, 0.3, 1.0]])
    values = torch.tensor([[0.5, 0.4, 7.0, 7.0, 0.2, 0.6]])
    mask = torch.tensor([[1, 1, 0, 0, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    keep = mask[0].bool()
    cut_adv, cut_ret = gae(rewards[:, keep], values[:, keep], torch.ones(1, 4), gamma=0.9, lam=0.8)
    assert adv[0, keep].tolist() == pytest.approx(cut_adv[0].tolist())
    assert ret[0, keep].tolist() == pytest.approx(cut_ret[0].tolist())
    assert adv[0, ~keep].tolist() == [0.0, 0.0] and ret[0, ~keep].tolist() == [0.0, 0.0]
    # by hand for the cut row [0.1, -0.2, 0.3, 1.0] / [0.5, 0.4, 0.2, 0.6]
    deltas = [0.1 + 0.9 * 0.4 - 0.5, -0.2 + 0.9 * 0.2 - 0.4, 0.3 + 0.9 * 0.6 - 0.2, 1.0 - 0.6]
    expected, running = [], 0.0
    for d in reversed(deltas):
        running = d + 0.9 * 0.8 * running
        expected.insert(0, running)
    assert cut_adv[0].tolist() == pytest.approx(expected)
