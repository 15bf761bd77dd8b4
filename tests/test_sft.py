"""SFTTrainer: TRL-compatible config and data options, padding-free and accumulation invariance, resume,
atomic checkpoints, LoRA."""


import pytest
import torch
from transformers.trainer_utils import get_last_checkpoint

import dataclasses

from posttrain import SFTConfig, SFTTrainer, load_model
from posttrain.data.formats import DataFormatError
from posttrain.data import toy

from data_helpers import logged_runs_agree, on_device, runs_agree


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=4,
                logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0, lr_scheduler_type="constant",
                warmup_steps=0, max_length=64)
    base.update(kw)
    return SFTConfig(**base)


def rows_of_varied_length(n=8):
    # Completions of different lengths so that a per-micro-batch mean would weight tokens unequally.
    rows = toy.prompt_completion(n, seed=3)
    for i, row in enumerate(rows):
        row["completion"] = row["completion"] + " Really." * (i % 4)
    return rows


def loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, on_device(batch, trainer.model.device))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_padding_free_equals_padding(arch, tmp_path):
    """Padding-free packing must not let examples attend to each other: same loss and gradients."""
    trainer = SFTTrainer(f"tiny:{arch}", config(tmp_path), train_dataset=rows_of_varied_length())
    features = [trainer.train_dataset[i] for i in range(6)]
    padded = trainer.data_collator(features)
    trainer.data_collator.padding_free = True
    packed = trainer.data_collator(features)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert (packed["input_ids"] == trainer.processing_class.pad_token_id).sum() == 0  # no pad computed
    assert (padded["input_ids"] == trainer.processing_class.pad_token_id).sum() > 0  # the padded batch has some
    loss_pad, grads_pad = loss_and_grads(trainer, padded)
    loss_pack, grads_pack = loss_and_grads(trainer, packed)
    assert torch.allclose(loss_pad, loss_pack, atol=1e-5)
    for name in grads_pad:
        assert torch.allclose(grads_pad[name], grads_pack[name], atol=1e-5), name


def test_padding_free_without_position_ids_would_leak(tmp_path):
    """The invariance above is not vacuous: without restarting positions the loss differs."""
    trainer = SFTTrainer("tiny:llama", config(tmp_path, padding_free=True), train_dataset=rows_of_varied_length())
    packed = on_device(trainer.data_collator([trainer.train_dataset[i] for i in range(6)]), trainer.model.device)
    leaky = {k: v for k, v in packed.items() if k != "position_ids"}
    with torch.no_grad():
        assert abs(trainer.compute_loss(trainer.model, dict(packed)) - trainer.compute_loss(trainer.model, leaky)) > 1e-3


def test_accumulation_invariance(tmp_path):
    """Batch 8 x 1 step equals batch 1 x 8 accumulation steps: logged loss and updated weights."""
    def run(batch, accum, name):
        # bf16=False: an fp32 identity (bf16 autocast, the default on a bf16 GPU, rounds each micro-batch apart)
        args = config(tmp_path / name, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                      max_steps=2, optim="sgd", learning_rate=0.5, bf16=False)
        trainer = SFTTrainer("tiny:llama", args, train_dataset=rows_of_varied_length(16))
        trainer.train()
        weights = {k: v.cpu() for k, v in trainer.model.state_dict().items()}  # to compare with load_model's
        return [e["loss"] for e in trainer.state.log_history if "loss" in e], weights, trainer.model.device

    losses_big, weights_big, device = run(8, 1, "big")
    losses_acc, weights_acc, _ = run(1, 8, "acc")
    # On the CPU to 1e-5; on an accelerator (batch-shape-dependent kernels) within data_helpers' tolerance.
    assert losses_big == pytest.approx(losses_acc, **logged_runs_agree(device, abs=1e-5))
    start = load_model("tiny:llama").state_dict()
    assert any(not torch.allclose(start[k], weights_big[k]) for k in start)  # training did move the weights
    for key in weights_big:
        assert runs_agree(weights_big[key].to(device), weights_acc[key].to(device), atol=1e-5), key


class StopAt:
    """A callback that stops training after a given step (as a killed job would)."""

    def __new__(cls, step):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step >= step:
                    control.should_training_stop = True

        return _Stop()


def test_resume_matches_uninterrupted_run(tmp_path):
    rows = toy.prompt_completion(64, seed=5)
    common = dict(max_steps=20, save_strategy="steps", save_steps=10, lr_scheduler_type="cosine")
    straight = SFTTrainer("tiny:llama", config(tmp_path / "a", **common), train_dataset=rows)
    straight.train()
    stopped = SFTTrainer("tiny:llama", config(tmp_path / "b", **common), train_dataset=rows, callbacks=[StopAt(10)])
    stopped.train()
    assert stopped.state.global_step == 10
    resumed = SFTTrainer("tiny:llama", config(tmp_path / "b", **common), train_dataset=rows)
    resumed.train(resume_from_checkpoint=get_last_checkpoint(str(tmp_path / "b" / "out")))
    assert resumed.state.global_step == 20
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_checkpoints_are_atomic(tmp_path, monkeypatch):
    rows = toy.prompt_completion(32, seed=6)
    args = config(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer = SFTTrainer("tiny:llama", args, train_dataset=rows)
    original = trainer._save_rng_state
    calls = {"n": 0}

    def crash_on_second_save(output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed while saving")
        return original(output_dir)

    monkeypatch.setattr(trainer, "_save_rng_state", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    out = tmp_path / "out"
    # The half-written checkpoint-4 stays in the hidden staging area; resume picks checkpoint-2.
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-2")
    assert not (out / "checkpoint-4").exists() and (out / ".staging" / "checkpoint-4").exists()
    ckpt = out / "checkpoint-2"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "README.md").exists()
    assert not list(ckpt.glob("*.bin")) or all(p.name == "training_args.bin" for p in ckpt.glob("*.bin"))
    # A later run cleans the debris and completes.
    monkeypatch.setattr(trainer, "_save_rng_state", original)
    trainer.train(resume_from_checkpoint=str(ckpt))
    assert (out / "checkpoint-4").exists() and not (out / ".staging").exists()


def test_metrics_and_model_card(tmp_path):
    trainer = SFTTrainer("tiny:llama", config(tmp_path, max_steps=3), train_dataset=toy.prompt_completion(16))
    trainer.train()
    trainer.save_model()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert all("mean_token_accuracy" in e and 0 <= e["mean_token_accuracy"] <= 1 for e in logged)
    assert all(e["tokens_per_second"] > 0 for e in logged if "tokens_per_second" in e)
    card = (tmp_path / "out" / "README.md").read_text()
    for fragment in ("base_model: tiny:llama", "**sft**", '"learning_rate": 0.001', "transformers:", "mean_token_accuracy"):
        assert fragment in card


def test_conversational_sft_and_lm_text(tmp_path):
    for rows in (toy.conversations(8), toy.reviews(8)):
        trainer = SFTTrainer("tiny:llama", config(tmp_path, max_steps=2), train_dataset=rows)
        trainer.train()
        assert trainer.state.log_history[0]["loss"] > 0


def test_lora_trains_only_the_adapter(tmp_path):
    import peft

    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    base = load_model("tiny:llama")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    trainer = SFTTrainer(base, config(tmp_path, max_steps=5, learning_rate=1e-2), train_dataset=toy.prompt_completion(32),
                         peft_config=lora)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0]
    state = trainer.model.state_dict()
    changed = {k for k, v in state.items() if "lora_" in k and k.endswith("lora_B.default.weight") and v.abs().sum() > 0}
    assert changed  # lora_B starts at zero; training moved it
    for key, value in state.items():
        if "lora_" not in key:
            original = key.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(value.cpu(), before[original]), key  # the frozen base: exactly, on any device
    trainer.save_model()
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert "library_name: peft" in (tmp_path / "out" / "README.md").read_text()


def test_encoder_decoder_models_get_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="encoder-decoder"):
        SFTTrainer("tiny:t5", config(tmp_path), train_dataset=toy.prompt_completion(4))


def test_mixed_precision_and_bf16_weights_train(tmp_path):
    from posttrain import load_model

    for model, extra in (("tiny:llama", dict(bf16=True, use_cpu=True)), (load_model("tiny:llama", dtype="bfloat16"), {})):
        trainer = SFTTrainer(model, config(tmp_path, max_steps=4, learning_rate=3e-3, **extra),
                             train_dataset=toy.prompt_completion(16))
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        assert losses[-1] < losses[0]


# ---- TRL 1.16 compatibility --------------------------------------------------------------------------

# Defaults that deliberately differ from TRL's SFTConfig (each documented in the field's help).
DELIBERATE = {"gradient_checkpointing", "save_total_limit"}


def test_every_trl_sft_field_exists_with_trls_default():
    trl = pytest.importorskip("trl")
    ours = {f.name: f for f in dataclasses.fields(SFTConfig)}
    for f in dataclasses.fields(trl.SFTConfig):
        assert f.name in ours, f"TRL's SFTConfig.{f.name} is missing"
        if f.name not in DELIBERATE and f.default is not dataclasses.MISSING:
            assert ours[f.name].default == f.default, f.name
        assert ours[f.name].metadata.get("help"), f"{f.name} has no help text"


@pytest.mark.parametrize("field, value", [("activation_offloading", True), ("chat_template_path", "t.jinja"),
                                          ("router_aux_loss_coef", 0.1), ("dataset_kwargs", {"skip_prepare_dataset": True})])
def test_unimplemented_trl_fields_fail_clearly(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        config(tmp_path, **{field: value})


def test_trl_spellings_map_onto_posttrain(tmp_path):
    args = config(tmp_path, truncation_mode="keep_end", packing_strategy="bfd-requeue", loss_type="chunked_nll",
                  pad_to_multiple_of="none")
    assert (args.truncation_side, args.packing_strategy, args.loss_type, args.pad_to_multiple_of) == (
        "left", "bfd_split", "nll", None)
    assert config(tmp_path).pad_to_multiple_of is None  # "auto" off Neuron


def trained_tokens(trainer, i=0):
    return sum(trainer.train_dataset[i]["completion_mask"][1:]), len(trainer.train_dataset[i]["input_ids"]) - 1


def test_loss_masks_follow_trl_defaults(tmp_path):
    conv = SFTTrainer("tiny:llama", config(tmp_path), train_dataset=toy.conversations(4))
    trained, total = trained_tokens(conv)
    assert trained == total  # assistant_only_loss=False: every token, as TRL
    only = SFTTrainer("tiny:llama", config(tmp_path, assistant_only_loss=True), train_dataset=toy.conversations(4))
    assert 0 < trained_tokens(only)[0] < total
    pc = SFTTrainer("tiny:llama", config(tmp_path), train_dataset=toy.prompt_completion(4))
    assert 0 < trained_tokens(pc)[0] < trained_tokens(pc)[1]  # completion_only_loss=None: the completion only
    everything = SFTTrainer("tiny:llama", config(tmp_path, completion_only_loss=False),
                            train_dataset=toy.prompt_completion(4))
    assert trained_tokens(everything)[0] == trained_tokens(everything)[1]
    with pytest.raises(ValueError, match="assistant_only_loss=True needs conversational rows"):
        SFTTrainer("tiny:llama", config(tmp_path, assistant_only_loss=True), train_dataset=toy.prompt_completion(4))


def test_formatting_func_and_dataset_text_field_ignore_extra_columns(tmp_path):
    data = [dict(r, id=i, source="toy") for i, r in enumerate(toy.prompt_completion(6))]
    fmt = lambda row: f"Q: {row['prompt']} A:{row['completion']}"  # noqa: E731  (one row in, one string out)
    trainer = SFTTrainer("tiny:llama", config(tmp_path, max_steps=1, completion_only_loss=False), train_dataset=data,
                         formatting_func=fmt)
    tok = trainer.processing_class
    assert trainer.train_dataset[0]["input_ids"] == tok(fmt(data[0]) + tok.eos_token)["input_ids"]
    trainer.train()
    with pytest.raises(ValueError, match="no completion"):
        SFTTrainer("tiny:llama", config(tmp_path, completion_only_loss=True), train_dataset=data, formatting_func=fmt)
    with pytest.raises(DataFormatError, match="must return one string"):
        SFTTrainer("tiny:llama", config(tmp_path), train_dataset=data, formatting_func=lambda b: [fmt(b)])
    texts = [{"body": r["prompt"] + r["completion"], "id": i, "source": "toy"} for i, r in enumerate(toy.prompt_completion(6))]
    trainer = SFTTrainer("tiny:llama", config(tmp_path, max_steps=1, dataset_text_field="body"), train_dataset=texts)
    assert trainer.train_dataset[0]["input_ids"] == tok(texts[0]["body"] + tok.eos_token)["input_ids"]
    trainer.train()


def test_rows_truncated_to_nothing_trainable_are_dropped(tmp_path, caplog):
    data = toy.prompt_completion(4)
    data[1]["prompt"] = " ".join(["The film was long and slow."] * 20)
    trainer = SFTTrainer("tiny:llama", config(tmp_path, max_length=16), train_dataset=data)
    assert len(trainer.train_dataset) == 3 and "Dropped 1 of 4 train rows" in caplog.text


def _prompt_completion_rows(n):
    return rows_of_varied_length(n)


@pytest.mark.parametrize("data, extra", [(toy.conversations, {}), (_prompt_completion_rows, {}),
                                         (_prompt_completion_rows, {"packing": True, "max_length": 48})],
                         ids=["messages", "prompt_completion", "packing"])
def test_first_loss_equals_trls(tmp_path, data, extra):
    """The same saved model, data and seed give TRL 1.16's first logged loss (and the same number of rows)."""
    trl = pytest.importorskip("trl")
    import datasets

    from posttrain.models.loading import load_tokenizer

    model_dir = str(tmp_path / "model")
    load_model("tiny:llama").save_pretrained(model_dir)
    load_tokenizer("tiny:llama").save_pretrained(model_dir)
    kw = dict(max_steps=1, logging_steps=1, report_to="none", seed=0, per_device_train_batch_size=2, bf16=False,
              gradient_checkpointing=False, use_cpu=True, save_strategy="no", disable_tqdm=True)
    kw = {"max_length": 64, **kw, **extra}
    ours = SFTTrainer(model_dir, SFTConfig(output_dir=str(tmp_path / "a"), **kw), train_dataset=data(8))
    theirs = trl.SFTTrainer(model_dir, args=trl.SFTConfig(output_dir=str(tmp_path / "b"), **kw),
                            train_dataset=datasets.Dataset.from_list(data(8)))
    assert len(ours.train_dataset) == len(theirs.train_dataset)
    ours.train(), theirs.train()
    assert ours.state.log_history[0]["loss"] == pytest.approx(theirs.state.log_history[0]["loss"], abs=1e-5)


def test_model_init_kwargs_and_dataset_num_proc_reach_loading(tmp_path):
    """TRL's model_init_kwargs (a JSON string on the CLI) load a model given by name; dataset_num_proc
    tokenizes in worker processes with the same ids."""
    rows = toy.sft_prompt_completion(6, seed=1) if hasattr(toy, "sft_prompt_completion") else [
        {"prompt": f"Q{i}:", "completion": f" answer {i}"} for i in range(6)]
    args = config(tmp_path, model_init_kwargs='{"dtype": "bfloat16"}', dataset_num_proc=2, max_steps=1)
    assert args.model_init_kwargs == {"dtype": "bfloat16"}
    trainer = SFTTrainer("tiny:llama", args=args, train_dataset=rows)
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
    single = SFTTrainer("tiny:llama", args=config(tmp_path, max_steps=1), train_dataset=rows)
    assert trainer.train_dataset["input_ids"] == single.train_dataset["input_ids"]
