"""Quantized bases (bitsandbytes 4-bit NF4 with double quantization, and 8-bit) + LoRA, on this CPU: every trainer
trains through the adapter, the base's integer weights never change, the reference is the adapter-off quantized
base, only the adapter is saved and it reloads on the quantized base, and resuming equals not stopping."""

import hashlib
import os

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from peft import LoraConfig  # noqa: E402
from transformers import BitsAndBytesConfig  # noqa: E402

from posttrain import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer, SFTConfig,  # noqa: E402
                       SFTTrainer, load_model, load_tokenizer)
from posttrain.config import ModelArguments  # noqa: E402
from posttrain.data import toy  # noqa: E402
from posttrain.models.loading import is_quantized  # noqa: E402

NF4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=torch.float32)
RUN = dict(report_to="none", disable_tqdm=True, seed=0, save_strategy="no")


def lora(**kw):
    return LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM", **kw)


@torch.no_grad()
def base_fingerprint(model) -> str:
    """A hash of every quantized layer's effective weight, read as the layer's output for the identity matrix
    (exact: each output is one weight times 1). The packed bytes are no fingerprint: on CPUs bitsandbytes repacks
    4-bit weights into another layout at the first no-grad forward, the same weights in another order."""
    digest = hashlib.sha256()
    for name, module in sorted(model.named_modules(), key=lambda item: item[0]):
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            eye, mode = torch.eye(module.in_features, dtype=torch.float32), module.training
            digest.update(name.encode())
            digest.update(module.eval()(eye).float().contiguous().numpy().tobytes())  # one path: eval (8-bit has two)
            module.train(mode)
    return digest.hexdigest()


def quantized_layers(model) -> int:
    return sum(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    """A full-precision SFT'd review model: the base every quantized run below starts from."""
    out = str(tmp_path_factory.mktemp("sft"))
    trainer = SFTTrainer("tiny:llama", SFTConfig(output_dir=out, max_steps=100, per_device_train_batch_size=32,
                                                 learning_rate=3e-3, **RUN), train_dataset=toy.prompt_completion(
                                                     3000, seed=1, positive=None))
    trainer.train()
    trainer.save_model(out)
    return out


def test_quantized_sft_trains_the_adapter_only_saves_it_and_reloads_it(tmp_path):
    out = str(tmp_path / "sft")
    args = SFTConfig(output_dir=out, max_steps=30, per_device_train_batch_size=16, learning_rate=3e-3,
                     logging_steps=10, model_init_kwargs={"quantization_config": NF4}, **RUN)
    trainer = SFTTrainer("tiny:llama", args, train_dataset=toy.prompt_completion(480, seed=1), peft_config=lora())
    assert is_quantized(trainer.model) and quantized_layers(trainer.model) == 14  # 2 layers x 7 linear
    before = base_fingerprint(trainer.model)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0] - 0.1, losses
    assert base_fingerprint(trainer.model) == before  # the 4-bit base never changes
    trainer.save_model(out)
    files = set(os.listdir(out))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "model.safetensors" not in files
    assert os.path.getsize(os.path.join(out, "adapter_model.safetensors")) < 200_000  # the adapter alone
    reloaded = load_model(out, quantization_config=NF4, seed=args.seed).eval()
    assert is_quantized(reloaded)
    ids = torch.tensor([load_tokenizer("tiny:llama")("I went to see the film and")["input_ids"]])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, trainer.model(ids).logits)


def test_quantized_dpo_reference_is_the_adapter_off_quantized_base(sft_dir, tmp_path):
    args = DPOConfig(output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=16, learning_rate=2e-3,
                     beta=0.1, logging_steps=10, **RUN)
    model = load_model(sft_dir, quantization_config=NF4)
    trainer = DPOTrainer(model, args=args, train_dataset=toy.preference_pairs(480, seed=2), peft_config=lora())
    assert trainer.reference_strategy == "adapter" and trainer.ref_model is None  # one copy of the base
    before = base_fingerprint(trainer.model)
    batch = next(iter(trainer.get_train_dataloader()))
    reference = trainer.reference_pair_logps(batch)
    with torch.no_grad():  # a freshly loaded quantized base, no adapter at all
        fresh = trainer.pair_logps(load_model(sft_dir, quantization_config=NF4).eval(), batch)[:2]
    for got, want in zip(reference, fresh):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[0] > 0.6 and losses[-1] < losses[0] - 0.1, losses  # from about log 2
    assert base_fingerprint(trainer.model) == before


def test_quantized_grpo_raises_the_reward_and_resumes_exactly(sft_dir, tmp_path):
    prompts = [{"prompt": r["prompt"]} for r in toy.review_prompts(64, seed=0)]

    def short(completions, **kw):  # for the resume check: any reward
        return [-len(c) / 20 for c in completions]

    def config(out, steps, save_steps=None):
        return GRPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=32, num_generations=8,
                          max_completion_length=12, learning_rate=3e-3, logging_steps=1, beta=0.04,
                          model_init_kwargs={"quantization_config": NF4}, report_to="none", disable_tqdm=True,
                          seed=0, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500)

    # the review model learns to continue positively (VADER sentiment)
    trainer = GRPOTrainer(sft_dir, ["sentiment"], args=config(str(tmp_path / "full"), 40), train_dataset=prompts,
                          peft_config=lora())
    assert trainer.reference.strategy == "adapter" and is_quantized(trainer.model)
    before = base_fingerprint(trainer.model)
    trainer.train()
    rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.1, rewards  # last quarter vs first
    assert base_fingerprint(trainer.model) == before

    # 4 steps straight (a checkpoint at 2) vs the same run resumed from that checkpoint
    straight = GRPOTrainer("tiny:llama", [short], args=config(str(tmp_path / "a"), 4, save_steps=2),
                           train_dataset=prompts, peft_config=lora())
    straight.train()
    resumed = GRPOTrainer("tiny:llama", [short], args=config(str(tmp_path / "b"), 4, save_steps=2),
                          train_dataset=prompts, peft_config=lora())
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    want = {n: p for n, p in straight.model.named_parameters() if p.requires_grad}
    got = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert want.keys() == got.keys()
    start = GRPOTrainer("tiny:llama", [short], args=config(str(tmp_path / "c"), 1), train_dataset=prompts,
                        peft_config=lora()).model
    assert max((want[n] - p).abs().max() for n, p in start.named_parameters() if n in want) > 1e-4  # it trained
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0, msg=name)


def test_quantized_ppo_trains_with_a_value_head_and_the_adapter_off_reference(sft_dir, tmp_path):
    # 40 generations of 16 rollouts, 4 epochs of 2 micro-batches each (8 optimizer steps per generation)
    args = PPOConfig(output_dir=str(tmp_path), max_steps=40 * 8, per_device_train_batch_size=8,
                     steps_per_generation=2, num_iterations=4, max_completion_length=16, learning_rate=1e-3,
                     init_kl_coef=0.05, logging_steps=8, model_init_kwargs={"quantization_config": NF4}, **RUN)
    trainer = PPOTrainer(sft_dir, ["sentiment"], args=args, train_dataset=[{"prompt": r["prompt"]} for r in
                                                                     toy.review_prompts(64, seed=0)],
                         peft_config=lora())
    assert trainer.reference.strategy == "adapter" and is_quantized(trainer.model)
    trainable = {("lora" if "lora_" in n else n.split(".")[0]) for n, p in trainer.model.named_parameters()
                 if p.requires_grad}
    assert trainable == {"lora", "v_head"}
    before = base_fingerprint(trainer.model)
    trainer.train()
    rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]  # one per generation (40)
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.1, rewards  # last quarter vs first
    assert base_fingerprint(trainer.model) == before
    trainer.save_model()
    files = set(os.listdir(str(tmp_path)))
    assert {"adapter_model.safetensors", "value_head.safetensors"} <= files and "model.safetensors" not in files


def test_eight_bit_base_trains_too(tmp_path):
    q8 = BitsAndBytesConfig(load_in_8bit=True)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, learning_rate=3e-3,
                     logging_steps=2, model_init_kwargs={"quantization_config": q8}, **RUN)
    trainer = SFTTrainer("tiny:llama", args, train_dataset=toy.prompt_completion(48, seed=1), peft_config=lora())
    assert quantized_layers(trainer.model) == 14
    before = base_fingerprint(trainer.model)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0]
    assert base_fingerprint(trainer.model) == before


def test_a_quantized_base_without_an_adapter_is_a_clear_error(tmp_path):
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, model_init_kwargs={"quantization_config": NF4}, **RUN)
    with pytest.raises(ValueError, match="trains only through a LoRA adapter"):
        SFTTrainer("tiny:llama", args, train_dataset=toy.prompt_completion(8, seed=1))
    with pytest.raises(ValueError, match="add --use_peft"):
        ModelArguments(load_in_4bit=True)
    with pytest.raises(ValueError, match="exclusive"):
        ModelArguments(load_in_4bit=True, load_in_8bit=True, use_peft=True)
    quantization = ModelArguments(load_in_4bit=True, use_peft=True, use_bnb_nested_quant=True).quantization_config()
    assert quantization.load_in_4bit and quantization.bnb_4bit_use_double_quant
    assert quantization.bnb_4bit_quant_type == "nf4"


def test_the_command_line_trains_a_qlora_adapter(tmp_path):
    import json

    from posttrain.cli import main

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in toy.prompt_completion(64, seed=1)))
    out = tmp_path / "out"
    assert main(["sft", "--model_name_or_path", "tiny:llama", "--dataset_name", str(data), "--output_dir", str(out),
                 "--max_steps", "4", "--per_device_train_batch_size", "8", "--load_in_4bit", "--use_peft",
                 "--use_bnb_nested_quant", "--lora_target_modules", "all-linear", "--report_to", "none",
                 "--disable_tqdm", "true"]) == 0
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    assert is_quantized(load_model(str(out), quantization_config=NF4, seed=42))


@pytest.mark.parametrize("reentrant", [False, True])
def test_quantized_lora_with_gradient_checkpointing_trains_the_same(tmp_path, reentrant):
    losses = []
    for checkpointing in (False, True):
        args = SFTConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=3e-3,
                         logging_steps=1, gradient_checkpointing=checkpointing,
                         gradient_checkpointing_kwargs={"use_reentrant": reentrant},
                         model_init_kwargs={"quantization_config": NF4}, **RUN)
        trainer = SFTTrainer("tiny:llama", args, train_dataset=toy.prompt_completion(32, seed=1), peft_config=lora())
        trainer.train()
        losses.append([e["loss"] for e in trainer.state.log_history if "loss" in e])
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], abs=1e-5)
