"""Value-head models: shapes and dtypes, logits_to_keep, save/load round trips, LoRA trunks."""

import peft
import pytest
import torch

from posttrain.models import load_model
from posttrain.models.reference import adapter_disabled, is_peft_model, resolve_strategy
from posttrain.models.value_head import (
    VALUE_HEAD_FILE,
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    ValueHead,
)

CAUSAL = ["llama", "gpt2", "qwen2"]
LORA_TARGETS = {"llama": ["q_proj", "v_proj"], "t5": ["q", "v"]}


def model_class(arch):
    return AutoModelForSeq2SeqLMWithValueHead if arch == "t5" else AutoModelForCausalLMWithValueHead


@pytest.fixture(scope="module")
def batch(tok):
    ids = tok(["the film was great, I liked it", "dull"], padding=True, return_tensors="pt")
    return {"input_ids": ids.input_ids, "attention_mask": ids.attention_mask}


def inputs_for(arch, batch):
    if arch != "t5":
        return dict(batch)
    return dict(batch, decoder_input_ids=batch["input_ids"][:, :5], decoder_attention_mask=batch["attention_mask"][:, :5])


def perturb(params, seed, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * scale)


def files_in(path):
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("arch", CAUSAL + ["t5"])
def test_save_load_round_trip(arch, batch, tmp_path):
    cls = model_class(arch)
    model = cls.from_pretrained(f"tiny:{arch}").eval()
    # Move head and trunk off their seeded initialisation, so only reading the files reproduces them.
    perturb(model.v_head.parameters(), 1, scale=1.0)
    perturb(list(model.pretrained_model.parameters())[:2], 2)
    inputs = inputs_for(arch, batch)
    with torch.no_grad():
        out = model(**inputs)
    rows, cols = inputs.get("decoder_input_ids", inputs["input_ids"]).shape
    assert out.values.shape == (rows, cols) and out.values.dtype == torch.float32
    assert out.logits.shape[:2] == (rows, cols)

    model.save_pretrained(tmp_path)
    names = files_in(tmp_path)
    assert VALUE_HEAD_FILE in names and "model.safetensors" in names
    assert not any(n.endswith(".bin") for n in names)
    reloaded = cls.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        again = reloaded(**inputs)
    torch.testing.assert_close(again.values, out.values, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.logits, out.logits, atol=1e-6, rtol=0)
    fresh = cls.from_pretrained(f"tiny:{arch}").eval()  # the same seed without the files: different values
    with torch.no_grad():
        assert not torch.allclose(fresh(**inputs).values, out.values, atol=1e-3)


def test_head_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = ValueHead(64, seed=0), ValueHead(64, seed=0), ValueHead(64, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.summary.weight, b.summary.weight) and not torch.equal(a.summary.weight, c.summary.weight)
    assert torch.count_nonzero(a.summary.bias) == 0
    assert a.summary.weight.std().item() == pytest.approx(1 / 65**0.5, rel=0.3)
    built = AutoModelForCausalLMWithValueHead(load_model("tiny:llama"), seed=0)  # from an already built model
    assert torch.equal(built.v_head.summary.weight, a.summary.weight)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_bf16_trunk_gives_float32_values(arch, batch):
    model = model_class(arch).from_pretrained(f"tiny:{arch}", dtype=torch.bfloat16).eval()
    assert next(model.pretrained_model.parameters()).dtype == torch.bfloat16
    assert model.v_head.summary.weight.dtype == torch.float32
    inputs = inputs_for(arch, batch)
    with torch.no_grad():
        out = model(**inputs)
    assert out.values.shape == inputs.get("decoder_input_ids", inputs["input_ids"]).shape
    assert out.values.dtype == torch.float32 and out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.values).all()


def test_logits_to_keep_keeps_values_at_every_position(batch):
    model = AutoModelForCausalLMWithValueHead.from_pretrained("tiny:qwen2").eval()
    mask = batch["attention_mask"].bool().clone()
    mask[:, 0] = False
    with torch.no_grad():
        full = model(**batch)
        kept = model(**batch, logits_to_keep=mask)
        last = model(**batch, logits_to_keep=1)
    assert kept.logits.shape == (int(mask.sum()), full.logits.shape[-1])
    torch.testing.assert_close(kept.logits, full.logits[mask], atol=1e-5, rtol=0)
    assert last.logits.shape[1] == 1
    for out in (kept, last):
        assert out.values.shape == batch["input_ids"].shape
        torch.testing.assert_close(out.values, full.values, atol=1e-6, rtol=0)


def test_lora_trains_only_adapter_and_head(batch):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS["llama"])
    model = AutoModelForCausalLMWithValueHead.from_pretrained("tiny:llama", peft_config=config)
    assert model.is_peft and is_peft_model(model) and resolve_strategy(None, model, False) == "adapter"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("v_head.") for n in trainable)
    assert {"v_head.summary.weight", "v_head.summary.bias"} <= trainable
    perturb([p for n, p in model.named_parameters() if "lora_B" in n], 3)  # B starts at 0: A would get no grad
    model.train()
    model.gradient_checkpointing_enable()
    assert model.is_activation_checkpointing
    out = model(**batch)
    (out.values.sum() + out.logits.float().logsumexp(-1).sum()).backward()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_lora_save_load_and_disable_adapter(arch, batch, tmp_path):
    cls = model_class(arch)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[arch])
    model = cls.from_pretrained(f"tiny:{arch}", peft_config=config).eval()
    perturb([p for n, p in model.named_parameters() if "lora_B" in n], 4, scale=0.5)
    perturb(model.v_head.parameters(), 5, scale=1.0)
    inputs = inputs_for(arch, batch)
    with torch.no_grad():
        out = model(**inputs)
        base_logits = load_model(f"tiny:{arch}", cls.task).eval()(**inputs).logits
        with adapter_disabled(model):
            off = model(**inputs)
        with model.disable_adapter():
            off_again = model(**inputs)
    torch.testing.assert_close(off.logits, base_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(off_again.logits, base_logits, atol=1e-6, rtol=0)
    assert not torch.allclose(out.logits, base_logits, atol=1e-3)  # the adapter does change the outputs

    model.save_pretrained(tmp_path)
    names = files_in(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors", VALUE_HEAD_FILE} <= set(names)
    assert "model.safetensors" not in names and not any(n.endswith(".bin") for n in names)
    reloaded = cls.from_pretrained(str(tmp_path)).eval()
    assert reloaded.is_peft
    assert any(p.requires_grad for n, p in reloaded.named_parameters() if "lora_" in n)
    assert not any(p.requires_grad for n, p in reloaded.named_parameters() if "lora_" not in n and "v_head" not in n)
    with torch.no_grad():
        again = reloaded(**inputs)
    torch.testing.assert_close(again.values, out.values, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.logits, out.logits, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="already holds a LoRA adapter"):
        cls.from_pretrained(str(tmp_path), peft_config=config)


def test_generate_and_disable_adapter_errors(batch, tok):
    model = AutoModelForCausalLMWithValueHead.from_pretrained("tiny:gpt2").eval()
    assert not model.is_peft and not is_peft_model(model) and model.config.model_type == "gpt2"
    with pytest.raises(ValueError, match="needs a LoRA trunk"):
        model.disable_adapter()
    ids = batch["input_ids"][1:, :3]
    new = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert new.shape == (1, 7) and torch.equal(new[:, :3], ids)
    assert set(model.state_dict()) >= {"v_head.summary.weight", "v_head.summary.bias"}


DDP_SCRIPT = """
import sys, torch, peft
import torch.distributed as dist
from posttrain.models.value_head import AutoModelForCausalLMWithValueHead
torch.manual_seed(0)
config = peft.LoraConfig(r=4, target_modules=sys.argv[2].split(","))
model = AutoModelForCausalLMWithValueHead.from_pretrained("tiny:llama", peft_config=config)
ids = torch.randint(5, 200, (2, 6))
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
ddp(input_ids=ids, attention_mask=torch.ones_like(ids)).values.sum().backward()
assert model.v_head.summary.weight.grad is not None
del ddp  # the reducer holds the process group: free it first, then tear the group down
dist.destroy_process_group()
print("ddp ok")
"""


def test_output_works_with_pytree_and_ddp(batch, tmp_path):
    """DDP flattens forward outputs (pytree, ``_find_tensors``); a dict-style output with a ``values``
    field breaks that, since the field hides ``dict.values``. DDP runs in a subprocess: a gloo process
    group torn down inside the test process can hang at exit."""
    import subprocess
    import sys

    from torch.utils import _pytree as pytree

    config = peft.LoraConfig(r=4, target_modules=LORA_TARGETS["llama"])
    model = AutoModelForCausalLMWithValueHead.from_pretrained("tiny:llama", peft_config=config)
    out = model(**batch)
    leaves = pytree.tree_leaves(out)
    assert any(leaf is out.values for leaf in leaves) and any(leaf is out.logits for leaf in leaves)
    assert out["values"] is out.values
    proc = subprocess.run([sys.executable, "-c", DDP_SCRIPT, str(tmp_path / "store"), ",".join(LORA_TARGETS["llama"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ddp ok" in proc.stdout, proc.stderr[-3000:]
