"""Offline tiny models of real architectures, and the from_pretrained path on local directories."""

import pytest
import torch
import transformers

from posttrain import load_model, load_tokenizer
from posttrain.models.tiny import ARCHITECTURES, build_tiny_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_models_are_seeded_and_run(arch, tokenizer):
    task = "seq2seq" if arch == "t5" else "causal-lm"
    a, b = build_tiny_model(f"tiny:{arch}", task, seed=0), build_tiny_model(f"tiny:{arch}", task, seed=0)
    c = build_tiny_model(f"tiny:{arch}", task, seed=1)
    pa, pb, pc = (next(iter(m.state_dict().values())) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    eos = tokenizer.eos_token  # T5's classifier reads the eos position
    ids = tokenizer(["the film was great" + eos, "dull" + eos], padding=True, return_tensors="pt")
    extra = {"decoder_input_ids": ids.input_ids} if arch == "t5" else {}
    logits = a(**ids, **extra).logits
    assert logits.shape[:2] == ids.input_ids.shape and logits.shape[-1] >= len(tokenizer)
    classifier = build_tiny_model(f"tiny:{arch}", "seq-cls")
    assert classifier(**ids).logits.shape == (2, 1)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "t5"])
def test_saved_directories_reload_through_from_pretrained(arch, tmp_path):
    task = "seq2seq" if arch == "t5" else "causal-lm"
    model, tokenizer = load_model(f"tiny:{arch}", task), load_tokenizer(f"tiny:{arch}")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = load_model(str(tmp_path))  # causal-lm is upgraded to seq2seq for encoder-decoder configs
    auto = (transformers.AutoModelForSeq2SeqLM if arch == "t5" else transformers.AutoModelForCausalLM)
    reloaded_auto = auto.from_pretrained(tmp_path)
    tok2 = load_tokenizer(str(tmp_path))
    assert tok2("the film").input_ids == tokenizer("the film").input_ids
    assert tok2.chat_template == tokenizer.chat_template and tok2.pad_token == tokenizer.pad_token
    ids = tokenizer("the film was great", return_tensors="pt").input_ids
    extra = {"decoder_input_ids": ids} if arch == "t5" else {}
    with torch.no_grad():
        expected = model(ids, **extra).logits
        assert torch.allclose(reloaded(ids, **extra).logits, expected)
        assert torch.allclose(reloaded_auto(ids, **extra).logits, expected)


def test_reward_head_from_a_saved_causal_lm_directory(tmp_path):
    load_model("tiny:qwen2").save_pretrained(tmp_path)
    load_tokenizer("tiny:qwen2").save_pretrained(tmp_path)
    classifier = load_model(str(tmp_path), "seq-cls")
    assert classifier.config.num_labels == 1 and classifier.config.pad_token_id is not None


def test_unknown_names_say_what_exists():
    with pytest.raises(ValueError, match="tiny:llama"):
        load_model("tiny:mamba")
    with pytest.raises(ValueError, match="size suffix"):
        load_model("tiny:llama-7b")
    with pytest.raises(ValueError, match="Unknown task"):
        load_model("tiny:llama", "vision")


def test_dtype_is_applied():
    assert next(load_model("tiny:llama", dtype="bfloat16").parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["tiny:llama-5m", "tiny:qwen2-50m"])
def test_benchmark_sizes_run_a_forward_pass(name):
    model = load_model(name)
    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    assert heads % kv == 0
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape[:2] == (1, 3)
