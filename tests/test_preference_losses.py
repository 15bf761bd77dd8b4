"""Every preference loss against values computed by hand (math module, not torch)."""

import math

import pytest
import torch

from posttrain.losses.preference import chosen_nll, dpo_loss, kto_kl_estimate, kto_loss, orpo_loss, simpo_loss


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def logsig(x):
    return -softplus(-x)


# policy chosen/rejected and reference chosen/rejected log-probs: c = [0.5, 0.0], r = [-0.5, 0.5], h = c - r = [1.0, -0.5]
PC, PR = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
RC, RR = torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -1.5])
LC, LR = torch.tensor([2, 4]), torch.tensor([1, 2])  # answer lengths: per-token h = [0.25 + 0.5, 0 - 0.25]
BETA = 0.5  # βc = [0.25, 0], βr = [-0.25, 0.25], βh = [0.5, -0.25]


def exo(x, eps):
    return sigmoid(x) * (logsig(x) - math.log(1 - eps)) + sigmoid(-x) * (logsig(-x) - math.log(eps))


def discopop(x, tau):
    m = sigmoid(x / tau)
    return softplus(-x) * (1 - m) + math.exp(-x) * m


@pytest.mark.parametrize("loss_type,eps,expected", [
    ("sigmoid", 0.0, (softplus(-0.5) + softplus(0.25)) / 2),
    ("sigmoid", 0.1, (0.9 * softplus(-0.5) + 0.1 * softplus(0.5) + 0.9 * softplus(0.25) + 0.1 * softplus(-0.25)) / 2),
    ("robust", 0.1, ((0.9 * softplus(-0.5) - 0.1 * softplus(0.5)) / 0.8
                     + (0.9 * softplus(0.25) - 0.1 * softplus(-0.25)) / 0.8) / 2),
    ("ipo", 0.0, ((1.0 - 1.0) ** 2 + (-0.5 - 1.0) ** 2) / 2),  # (h - 1/(2β))^2 on summed log-probs
    ("hinge", 0.0, (0.5 + 1.25) / 2),
    ("exo_pair", 0.1, (exo(0.5, 0.1) + exo(-0.25, 0.1)) / 2),
    ("nca_pair", 0.0, (softplus(-0.25) + 0.5 * softplus(0.25) + 0.5 * softplus(-0.25)
                       + softplus(0) + 0.5 * softplus(0) + 0.5 * softplus(0.25)) / 2),
    ("bco_pair", 0.0, (softplus(-0.25) + softplus(-0.25) + softplus(0) + softplus(0.25)) / 2),
    ("sppo_hard", 0.0, ((0.5 - 1) ** 2 + (-0.5 + 1) ** 2 + (0 - 1) ** 2 + (0.5 + 1) ** 2) / 2),
    ("apo_zero", 0.0, ((1 - sigmoid(0.25)) + sigmoid(-0.25) + (1 - sigmoid(0)) + sigmoid(0.25)) / 2),
    ("apo_down", 0.0, (sigmoid(0.25) + 1 - sigmoid(0.5) + sigmoid(0) + 1 - sigmoid(-0.25)) / 2),
    ("discopop", 0.0, (discopop(0.5, 0.05) + discopop(-0.25, 0.05)) / 2),
    ("sigmoid_norm", 0.0, (softplus(-0.5 * 0.75) + softplus(0.5 * 0.25)) / 2),
])
def test_reference_based_losses(loss_type, eps, expected):
    loss, chosen_rewards, rejected_rewards = dpo_loss(PC, PR, RC, RR, BETA, loss_type, eps, 0.05, LC, LR)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([0.25, 0.0])
    assert rejected_rewards.tolist() == pytest.approx([-0.25, 0.25])


def test_ipo_length_normalised_is_trls_form():
    loss, _, _ = dpo_loss(PC, PR, RC, RR, BETA, "ipo", chosen_lengths=LC, rejected_lengths=LR,
                          ipo_normalize_length=True)
    assert loss.item() == pytest.approx(((0.75 - 1.0) ** 2 + (-0.25 - 1.0) ** 2) / 2, abs=1e-6)


def test_aot_losses_sort_the_batch():
    pc, pr = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -1.0, -1.0])
    rc, rr = torch.tensor([0.0, -3.0, -1.0]), torch.tensor([-1.0, -1.0, -1.0])
    # aot: sorted(π_c - π_r) = [-2, -1, 1] minus sorted(ref_c - ref_r) = [-2, 0, 1] -> [0, -1, 0]
    loss, _, _ = dpo_loss(pc, pr, rc, rr, beta=1.0, loss_type="aot")
    assert loss.item() == pytest.approx((softplus(0) + softplus(1) + softplus(0)) / 3, abs=1e-6)
    # aot_unpaired: sorted c = [-2, -1, 1] minus sorted r = [-1, 0, 0] -> [-1, -1, 1]
    loss, _, _ = dpo_loss(pc, pr, rc, rr, beta=1.0, loss_type="aot_unpaired")
    assert loss.item() == pytest.approx((softplus(1) + softplus(1) + softplus(-1)) / 3, abs=1e-6)


def test_sft_term_is_the_token_mean_nll_of_chosen():
    assert chosen_nll(PC, LC).item() == pytest.approx(3.0 / 6.0)


def test_dpo_loss_rejects_unknown_types_and_bad_smoothing():
    with pytest.raises(ValueError, match="Unknown loss_type"):
        dpo_loss(PC, PR, RC, RR, loss_type="nope")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, loss_type="exo_pair", label_smoothing=0.0)
    with pytest.raises(ValueError, match="lengths"):
        dpo_loss(PC, PR, RC, RR, loss_type="sigmoid_norm")


def test_simpo_loss():
    loss, chosen, rejected = simpo_loss(torch.tensor([-0.5, -1.0]), torch.tensor([-1.0, -0.5]), beta=2.0, gamma=0.5)
    assert loss.item() == pytest.approx((softplus(-0.5) + softplus(1.5)) / 2, abs=1e-6)
    assert chosen.tolist() == [-1.0, -2.0] and rejected.tolist() == [-2.0, -1.0]


def test_orpo_loss():
    chosen_avg, rejected_avg = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    loss, _, _ = orpo_loss(chosen_avg, rejected_avg, chosen_nll=torch.tensor(1.0), lam=0.1)
    # log odds: chosen log(0.5/0.5) = 0, rejected log(0.25/0.75); -log σ(log 3) = log(4/3)
    assert loss.item() == pytest.approx(1.0 + 0.1 * math.log(4 / 3), abs=1e-6)


def test_kto_loss():
    logps, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.5])
    kl, ref_kl = torch.tensor([-2.0, -2.0]), torch.tensor([-2.5, -2.3])  # mean(0.5, 0.3) = 0.4
    desirable = torch.tensor([True, False])
    z0 = kto_kl_estimate(kl, ref_kl)
    assert z0.item() == pytest.approx(0.4)
    loss, rewards = kto_loss(logps, ref, desirable, z0, beta=1.0, desirable_weight=1.0, undesirable_weight=2.0)
    expected = ((1 - sigmoid(0.5 - 0.4)) + 2.0 * (1 - sigmoid(0.4 - (-0.5)))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert rewards.tolist() == pytest.approx([0.5, -0.5])
    assert kto_kl_estimate(ref_kl, kl).item() == pytest.approx(-0.4)  # the trainer clamps it at 0
    # TRL's unpaired APO-zero: no reference point; desirable 1 - σ(βr), undesirable σ(βr).
    loss, _ = kto_loss(logps, ref, desirable, z0, beta=1.0, undesirable_weight=2.0, loss_type="apo_zero_unpaired")
    assert loss.item() == pytest.approx(((1 - sigmoid(0.5)) + 2.0 * sigmoid(-0.5)) / 2, abs=1e-6)
