"""posttrain's decoding loop (``rollout/decode.py``): the same samples as transformers' ``generate`` from the same
seed, each prompt prefilled once per group, log-probs and values from generation equal to a fresh forward,
finished rows dropped from the batch."""

import dataclasses

import pytest
import torch

from posttrain import load_model
from posttrain.data.tokenize import tokenize_prompt
from posttrain.losses.logprobs import forward_completion
from posttrain.models.value_head import AutoModelForCausalLMWithValueHead
from posttrain.rollout import HFGenerate, PolicySampler, SamplingConfig
from posttrain.rollout.decode import CachedDecode, Generated, prompt_groups

PROMPTS = ["Honestly, the film", "I went to see the sequel last night and it", "Five"]


def grouped(tokenizer, g=3):
    ids = [tokenize_prompt(tokenizer, p) for p in PROMPTS]
    return [row for row in ids for _ in range(g)]


def sample(backend, model, tokenizer, ids, sampling, seed=0):
    torch.manual_seed(seed)
    return PolicySampler(tokenizer, sampling, backend=backend)(model, ids)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("sampling", [SamplingConfig(max_new_tokens=12, temperature=0.7, top_k=40, top_p=0.9),
                                      SamplingConfig(max_new_tokens=8, temperature=1.3, min_p=0.05, min_new_tokens=4),
                                      SamplingConfig(max_new_tokens=8, temperature=0)])
def test_same_samples_as_generate_and_logprobs_of_a_fresh_forward(tokenizer, arch, sampling):
    model = load_model(f"tiny:{arch}", seed=1).eval()
    ids = grouped(tokenizer)
    ours = sample(CachedDecode(compact_fraction=None), model, tokenizer, ids, sampling)
    theirs = sample(HFGenerate(), model, tokenizer, ids, sampling)
    assert torch.equal(ours.completion_ids, theirs.completion_ids)
    assert torch.equal(ours.completion_attention, theirs.completion_attention)
    # the sampling-time log-probs (no second forward) against the forward the transformers backend ran
    assert ours.logprobs is not None
    assert (ours.logprobs - theirs.logprobs).abs().max() < 1e-5
    assert (ours.logprobs != 0).sum() == ours.completion_attention.sum()


def test_each_prompt_is_prefilled_once_per_group(tokenizer):
    model = load_model("tiny:llama", seed=1).eval()
    ids = grouped(tokenizer, g=4)
    prefill_rows = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: prefill_rows.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        sample(CachedDecode(), model, tokenizer, ids, SamplingConfig(max_new_tokens=3))
    finally:
        hook.remove()
    assert prefill_rows[0][0] == 3  # 3 distinct prompts, 12 rows
    assert all(shape == (12, 1) for shape in prefill_rows[1:])
    firsts, group = prompt_groups(torch.tensor([[1, 2], [1, 2], [0, 3], [1, 2]]), torch.ones(4, 2))
    assert firsts.tolist() == [0, 2, 3] and group.tolist() == [0, 0, 1, 2]  # runs of consecutive rows only


def test_compaction_drops_finished_rows_and_keeps_samples_and_logprobs_exact(tokenizer):
    """A model that ends rows early: after compaction the batch shrinks, the tokens are still those generate
    draws from the same seed, and every kept token's log-prob still equals a fresh forward's."""
    model = load_model("tiny:llama", seed=1).eval()
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():  # a bias that makes eos likely: rows end at different lengths
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 4.0
    model.lm_head = head
    batch_sizes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: batch_sizes.append(kw["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        rollout = sample(CachedDecode(), model, tokenizer, grouped(tokenizer, g=4), SamplingConfig(max_new_tokens=16))
    finally:
        hook.remove()
    lengths = rollout.completion_attention.sum(1)
    assert lengths.min() < lengths.max()  # rows did end early
    assert min(batch_sizes[1:]) < 12  # and the batch shrank
    theirs = sample(HFGenerate(), model, tokenizer, grouped(tokenizer, g=4), SamplingConfig(max_new_tokens=16))
    assert torch.equal(rollout.completion_ids, theirs.completion_ids)
    fresh, _ = forward_completion(model, rollout, 1.0)
    assert (rollout.logprobs - fresh).abs().max() < 1e-5
    assert (rollout.completion_ids[:, :-1] == tokenizer.eos_token_id).logical_and(
        rollout.completion_attention[:, 1:].bool()).sum() == 0  # nothing kept after an eos


def test_value_head_values_from_generation_equal_a_fresh_forward(tokenizer):
    policy = AutoModelForCausalLMWithValueHead(load_model("tiny:llama", seed=1)).eval()
    rollout = sample(CachedDecode(), policy, tokenizer, grouped(tokenizer, g=2),
                     SamplingConfig(max_new_tokens=6, temperature=0.9))
    logps, values = forward_completion(policy, rollout, 0.9, with_values=True)
    assert rollout.values is not None
    assert (rollout.logprobs - logps).abs().max() < 1e-5
    assert ((rollout.values - values) * rollout.completion_attention).abs().max() < 1e-5


def test_falls_back_to_the_forward_where_generation_logprobs_cannot_be_exact(tokenizer):
    model = load_model("tiny:llama", seed=1, dtype=torch.bfloat16).eval()
    generated = CachedDecode().generate(model, *_padded(tokenizer), SamplingConfig(max_new_tokens=4), tokenizer)
    assert isinstance(generated, Generated) and generated.logprobs is None  # bf16: not exact
    rollout = sample(CachedDecode(), model, tokenizer, grouped(tokenizer), SamplingConfig(max_new_tokens=4))
    fresh, _ = forward_completion(model, rollout, 1.0)
    assert torch.equal(rollout.logprobs, fresh)  # the sampler ran the forward
    if_free = PolicySampler(tokenizer, SamplingConfig(max_new_tokens=4))(model, grouped(tokenizer), with_logprobs="if_free")
    assert if_free.logprobs is None


def test_stop_strings_end_rows_as_generate_does(tokenizer):
    model = load_model("tiny:llama", seed=1).eval()
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, stop_strings=("e",))
    ours = sample(CachedDecode(compact_fraction=None), model, tokenizer, grouped(tokenizer), sampling)
    theirs = sample(HFGenerate(), model, tokenizer, grouped(tokenizer), sampling)
    assert torch.equal(ours.completion_ids, theirs.completion_ids)
    texts = [tokenizer.decode(row) for row in ours.completion_lists()]
    assert any(t.endswith("e") or "e" in t for t in texts)


def test_encoder_decoder_models_use_generate(tokenizer):
    model = load_model("tiny:t5", task="seq2seq", seed=1).eval()
    sampling = SamplingConfig(max_new_tokens=5)
    ours = sample(CachedDecode(), model, tokenizer, grouped(tokenizer), sampling)
    theirs = sample(HFGenerate(), model, tokenizer, grouped(tokenizer), sampling)
    assert torch.equal(ours.completion_ids, theirs.completion_ids)


def _padded(tokenizer):
    from posttrain.rollout import pad_with_attention

    return pad_with_attention(grouped(tokenizer), tokenizer.pad_token_id, side="left")


def test_unknown_backend_name_is_refused(tokenizer):
    with pytest.raises(ValueError, match="generation_backend must be one of"):
        PolicySampler(tokenizer, dataclasses.replace(SamplingConfig()), backend="vllm")


@pytest.mark.slow
def test_compiled_backend_samples_the_same_tokens(tokenizer):
    """generation_backend="compiled" (static cache + torch.compile, minutes on a CPU): the same tokens."""
    model = load_model("tiny:llama", seed=1).eval()
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.8)
    ours = sample("compiled", model, tokenizer, grouped(tokenizer), sampling)
    theirs = sample(HFGenerate(), model, tokenizer, grouped(tokenizer), sampling)
    assert torch.equal(ours.completion_ids, theirs.completion_ids)


def test_fsdp2_mixed_precision_means_generation_logprobs_are_not_exact(tmp_path):
    """Under an FSDP2 policy that computes in bf16, float32 weights do not make the log-probs exact."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from posttrain.rollout.decode import exact_logprobs_possible

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        plain = load_model("tiny:llama", seed=1)
        cast = fully_shard(load_model("tiny:llama", seed=1), mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16))
        full = fully_shard(load_model("tiny:llama", seed=1))
        assert exact_logprobs_possible(plain) and exact_logprobs_possible(full)
        assert not exact_logprobs_possible(cast)
    finally:
        if started:
            dist.destroy_process_group()
