"""Losses and the shared log-prob function against hand-computed values."""

import math

import pytest
import torch

import posttrain.losses.logprobs as logprobs_module
from posttrain.losses import bradley_terry_loss, causal_lm_logprobs, selective_log_softmax, sft_loss, token_accuracy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_selective_log_softmax_matches_log_softmax_and_its_gradient(dtype, monkeypatch):
    monkeypatch.setattr(logprobs_module, "CHUNK_BYTES", 4 * 37 * 4)  # 4 rows per chunk: exercise the chunking
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 37, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 37, (3, 5))
    weights = torch.randn(3, 5)
    ours = selective_log_softmax(logits, labels)
    (ours * weights).sum().backward()
    grad_ours, logits.grad = logits.grad.clone(), None
    ref = torch.log_softmax(logits.double(), -1).gather(-1, labels[..., None]).squeeze(-1)
    (ref * weights.double()).sum().backward()
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.allclose(ours.double(), ref, atol=tol)
    assert torch.allclose(grad_ours.double(), logits.grad.double(), atol=tol)
    assert grad_ours.dtype == dtype


def test_causal_lm_logprobs_shifts_and_masks_by_hand():
    # vocab of 2, uniform logits except one position: log p = log(1/2) unless said otherwise
    logits = torch.zeros(1, 3, 2)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0)])  # p(token 1 | pos 1) = 3/4
    labels = torch.tensor([[-100, 0, 1]])
    logps, mask = causal_lm_logprobs(logits, labels)
    assert mask.tolist() == [[True, True]]
    assert torch.allclose(logps, torch.tensor([[math.log(0.5), math.log(0.75)]]))
    labels = torch.tensor([[-100, -100, 1]])
    logps, mask = causal_lm_logprobs(logits, labels)
    assert mask.tolist() == [[False, True]] and logps[0, 0] == 0


def test_sft_loss_by_hand():
    logps = torch.tensor([[-1.0, -2.0], [-3.0, -5.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert sft_loss(logps, mask).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert sft_loss(logps, mask, num_items=6).item() == pytest.approx(1.0)  # whole-step normaliser


def test_token_accuracy_by_hand():
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])  # predicts 1, 0, (1)
    labels = torch.tensor([[-100, 1, 1]])  # targets at positions 1, 2 are predicted by positions 0, 1
    correct, total = token_accuracy(logits, labels)
    assert (correct.item(), total.item()) == (1, 2)


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    expected = (math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-6)
    margin = torch.tensor([1.0, -1.0])  # diff - margin = [0, 1]
    expected_margin = (math.log(2.0) + math.log(1 + math.exp(-1.0))) / 2
    assert bradley_terry_loss(chosen, rejected, margin).item() == pytest.approx(expected_margin, abs=1e-6)
    centred = bradley_terry_loss(chosen, rejected, center_coefficient=0.5).item()
    assert centred == pytest.approx(expected + 0.5 * (1.0 + 0.0) / 2, abs=1e-6)
