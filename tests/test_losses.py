"""Losses and the shared log-prob function against hand-computed values."""

import math

import pytest
import torch

import posttrain.losses.logprobs as logprobs_module
from posttrain.losses import bradley_terry_loss, labelled_logps, selective_log_softmax, sft_loss, token_accuracy


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


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_labelled_logps_runs_the_head_only_where_labels_are_and_matches_full_logits(arch):
    from posttrain import load_model
    from posttrain.losses.logprobs import takes_logits_to_keep

    model = load_model(f"tiny:{arch}")
    assert takes_logits_to_keep(model)
    ids = torch.randint(0, 500, (2, 7))
    labels = torch.full_like(ids, -100)
    labels[0, 3:6], labels[1, 6] = ids[0, 3:6], ids[1, 6]  # 4 labelled tokens
    out = labelled_logps(model, labels, input_ids=ids)
    assert out.logps.shape[0] == 4  # the output layer ran at 4 positions, not 14
    assert out.rows.tolist() == [0, 0, 0, 1] and out.positions.tolist() == [2, 3, 4, 5]
    full = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
    expected = [full[0, 2, ids[0, 3]], full[0, 3, ids[0, 4]], full[0, 4, ids[0, 5]], full[1, 5, ids[1, 6]]]
    assert torch.allclose(out.logps.double(), torch.stack(expected), atol=1e-5)


def test_sft_loss_by_hand():
    logps = torch.tensor([-1.0, -2.0, -3.0])  # the trainable tokens' log-probs
    assert sft_loss(logps).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert sft_loss(logps, num_items=6).item() == pytest.approx(1.0)  # whole-step normaliser


def test_token_accuracy_by_hand():
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # predicts 1, 0, 1
    assert token_accuracy(logits, torch.tensor([1, 1, 1])).item() == pytest.approx(2 / 3)


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    expected = (math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-6)
    margin = torch.tensor([1.0, -1.0])  # diff - margin = [0, 1]
    expected_margin = (math.log(2.0) + math.log(1 + math.exp(-1.0))) / 2
    assert bradley_terry_loss(chosen, rejected, margin).item() == pytest.approx(expected_margin, abs=1e-6)
    centred = bradley_terry_loss(chosen, rejected, center_coefficient=0.5).item()
    assert centred == pytest.approx(expected + 0.5 * (1.0 + 0.0) / 2, abs=1e-6)


def group_rollout(tok, group_size, seed):
    """Groups of ``group_size`` completions of different lengths per prompt; prompts of different lengths."""
    from posttrain.rollout import Rollout, pad_with_attention

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 400, (n,), generator=g).tolist() for n in (5, 2, 9)]
    completions = [torch.randint(3, 400, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
                   for _ in range(len(prompts) * group_size)]
    ids, attention = pad_with_attention([p for p in prompts for _ in range(group_size)], tok.pad_token_id, "left")
    comp, comp_attention = pad_with_attention(completions, tok.pad_token_id)
    return Rollout(ids, attention, comp, comp_attention, comp_attention.clone())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_group_shared_completion_logps_equal_the_unshared_forward_and_its_gradient(arch):
    """One row per group (prompt once, G completions after it) gives every completion token the log-prob and
    the gradient of the plain per-completion forward (1e-5, float32), at temperature 1 and 0.7."""
    from posttrain import load_model, load_tokenizer
    from posttrain.losses.logprobs import forward_completion, group_shared_completion_logps

    model, tok = load_model(f"tiny:{arch}", seed=0), load_tokenizer(f"tiny:{arch}")
    rollout = group_rollout(tok, 4, seed=1)
    for temperature in (1.0, 0.7):
        model.zero_grad()
        plain, _ = forward_completion(model, rollout, temperature)
        plain.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        shared = group_shared_completion_logps(model, rollout, 4, temperature)
        shared.sum().backward()
        assert shared.shape == plain.shape
        assert (shared[rollout.completion_attention == 0] == 0).all()
        assert torch.allclose(shared, plain, atol=1e-5, rtol=0), (shared - plain).abs().max()
        for name, p in model.named_parameters():
            assert torch.allclose(p.grad, grads[name], atol=1e-5, rtol=1e-4), name


def test_group_shared_completion_logps_refuse_what_they_cannot_share():
    from posttrain import load_model, load_tokenizer
    from posttrain.losses.logprobs import group_shared_completion_logps

    model, tok = load_model("tiny:llama", seed=0), load_tokenizer("tiny:llama")
    rollout = group_rollout(tok, 2, seed=2)
    with pytest.raises(ValueError, match="not whole groups of 4"):
        group_shared_completion_logps(model, rollout, 4)
    with pytest.raises(ValueError, match="different prompts"):  # groups of 3 straddle two prompts
        group_shared_completion_logps(model, rollout.select(list(range(6))), 3)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="custom attention mask"):
        group_shared_completion_logps(model, rollout, 2)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_chunked_output_layer_gives_the_full_logits_values_and_gradients(arch, monkeypatch):
    """Log-probs from the hidden states through the output layer one chunk at a time (recomputed in the
    backward) equal log_softmax of the full logits, and so do the gradients of every weight (1e-5, float32):
    several chunks, temperature 0.7, a bias on the output layer, label sources that repeat a position."""
    from posttrain import load_model
    from posttrain.losses import logprobs

    monkeypatch.setattr(logprobs, "CHUNK_BYTES", 4 * 1024 * 5)  # 5 rows of a 1024 vocabulary per chunk
    model = load_model(f"tiny:{arch}", seed=0)
    if arch == "qwen2":  # and an output layer with a bias (untied from the embeddings)
        head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.normal_()
        model.lm_head = head
    assert logprobs.fusable_output_layer(model) is not None
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (3, 11), generator=g)
    labels = ids.clone()
    labels[0, :4] = labels[2, 7:] = -100
    runs = {}
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(logprobs, "fusable_output_layer", lambda model: None)
        model.zero_grad()
        kept = (labels[:, 1:] != -100).sum().item()
        sources = torch.arange(kept)
        sources[5] = 2  # a position that predicts two labels (as prefix sharing asks)
        out = logprobs.labelled_logps(model, labels, 0.7, sources=sources, input_ids=ids)
        (out.logps * torch.linspace(0.5, 2, len(out.logps))).sum().backward()
        runs[fused] = (out, {n: p.grad.clone() for n, p in model.named_parameters()})
    (chunked, chunked_grads), (plain, plain_grads) = runs[True], runs[False]
    assert chunked.logps.shape == plain.logps.shape == (int((labels[:, 1:] != -100).sum()),)
    assert torch.allclose(chunked.logps, plain.logps, atol=1e-5, rtol=0)
    assert torch.equal(chunked.predicted, plain.predicted)
    for name, grad in plain_grads.items():
        assert torch.allclose(chunked_grads[name], grad, atol=1e-5, rtol=1e-4), name
    assert chunked.output.logits is chunked.logps  # the model returned the output layer's log-probs as they were


def test_chunked_output_layer_is_skipped_where_the_model_transforms_its_logits():
    from types import SimpleNamespace

    from posttrain.losses.logprobs import fusable_output_layer

    class Model(torch.nn.Module):
        def __init__(self, **config):
            super().__init__()
            self.head, self.config = torch.nn.Linear(4, 8), SimpleNamespace(**config)

        def get_output_embeddings(self):
            return self.head

    assert fusable_output_layer(Model()) is not None
    assert fusable_output_layer(Model(final_logit_softcapping=30.0)) is None  # Gemma 2
    assert fusable_output_layer(Model(logit_scale=0.0625)) is None  # Cohere
    lora = Model()
    lora.head = torch.nn.Sequential(torch.nn.Linear(4, 8))  # anything but a plain Linear (LoRA, quantized)
    assert fusable_output_layer(lora) is None
