"""Every preference loss against values computed by hand (math module, not torch)."""

import math

import pytest
import torch

from posttrain.losses.preference import dpo_loss, kto_loss, orpo_loss, simpo_loss


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# policy chosen/rejected and reference chosen/rejected log-probs: h = [1.0, -0.5]
PC, PR = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
RC, RR = torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -1.5])
BETA = 0.5


@pytest.mark.parametrize("loss_type,eps,expected", [
    ("sigmoid", 0.0, (softplus(-0.5) + softplus(0.25)) / 2),
    ("sigmoid", 0.1, (0.9 * softplus(-0.5) + 0.1 * softplus(0.5) + 0.9 * softplus(0.25) + 0.1 * softplus(-0.25)) / 2),
    ("robust", 0.1, ((0.9 * softplus(-0.5) - 0.1 * softplus(0.5)) / 0.8
                     + (0.9 * softplus(0.25) - 0.1 * softplus(-0.25)) / 0.8) / 2),
    ("ipo", 0.0, (0.0 + 2.25) / 2),
    ("hinge", 0.0, (0.5 + 1.25) / 2),
])
def test_reference_based_losses(loss_type, eps, expected):
    loss, chosen_rewards, rejected_rewards = dpo_loss(PC, PR, RC, RR, BETA, loss_type, eps)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([0.25, 0.0])
    assert rejected_rewards.tolist() == pytest.approx([-0.25, 0.25])


def test_dpo_loss_rejects_unknown_types_and_bad_smoothing():
    with pytest.raises(ValueError, match="Unknown loss_type"):
        dpo_loss(PC, PR, RC, RR, loss_type="nope")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, loss_type="robust", label_smoothing=0.5)


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
    kl, ref_kl = torch.tensor([-2.0, -2.0]), torch.tensor([-2.5, -2.3])  # z0 = mean(0.5, 0.3) = 0.4
    desirable = torch.tensor([True, False])
    loss, rewards, z0 = kto_loss(logps, ref, kl, ref_kl, desirable, beta=1.0, desirable_weight=1.0,
                                 undesirable_weight=2.0)
    assert z0.item() == pytest.approx(0.4)
    expected = ((1 - sigmoid(0.5 - 0.4)) + 2.0 * (1 - sigmoid(0.4 - (-0.5)))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert rewards.tolist() == pytest.approx([0.5, -0.5])
    # A negative KL estimate is clamped: the reference point never goes below zero.
    _, _, z0 = kto_loss(logps, ref, ref_kl, kl, desirable)
    assert z0.item() == 0.0
