"""DPOTrainer: learning, reference strategies (copy, adapter, precomputed, none), prefix sharing,
TRL's config fields, signature and metric names, combined losses, bad rows, resume."""

import math

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.trainer_utils import get_last_checkpoint

from posttrain import DataFormatError, DPOConfig, DPOTrainer, SFTConfig, SFTTrainer, load_model
from posttrain.data import toy
from posttrain.data.collate import PreferenceCollator, SharedPrefixCollator
from posttrain.losses.logprobs import shared_prefix_token_logps
from posttrain.models.tiny import tiny_config

from data_helpers import (assert_runs_agree, logged, logged_runs_agree, on_device, runs_agree, summed_logps,
                          trl_or_none)


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=1e-3, max_steps=4,
                logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0, max_length=64,
                lr_scheduler_type="constant", warmup_steps=0, reference_cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return DPOConfig(**base)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    """A tiny Llama fine-tuned on the preferred (positive) style, as DPO is run in practice."""
    out = tmp_path_factory.mktemp("sft")
    args = SFTConfig(output_dir=str(out), max_steps=40, per_device_train_batch_size=16, learning_rate=3e-3,
                     save_strategy="no", disable_tqdm=True, max_length=64, logging_steps=10)
    trainer = SFTTrainer("tiny:llama", args, train_dataset=toy.prompt_completion(400, seed=1))
    trainer.train()
    trainer.save_model()
    return str(out)


def test_dpo_separates_held_out_pairs_and_margin_grows(sft_dir, tmp_path):
    trainer = DPOTrainer(sft_dir, config(tmp_path, max_steps=40, logging_steps=10),
                         train_dataset=toy.preference_pairs(300, seed=2), eval_dataset=toy.preference_pairs(100, seed=3))
    trainer.train()
    held_out = trainer.evaluate()
    margins = logged(trainer, "rewards/margins")
    print(f"held-out implicit-reward accuracy {held_out['eval_rewards/accuracies']:.3f}, train margins {margins}")
    assert held_out["eval_rewards/accuracies"] >= 0.9
    assert margins[-1] > margins[0] > 0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert logged(trainer, key)


# gpt2 drops out through nn.Dropout modules; llama only through its attention's dropout rate.
DROPOUT = {"gpt2": dict(resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5), "llama": dict(attention_dropout=0.5)}


@pytest.mark.parametrize("arch", DROPOUT)
def test_first_loss_is_log_2_only_with_dropout_disabled(arch, tmp_path):
    """Policy == reference, so every implicit reward is 0 and the sigmoid loss is -log σ(0) = log 2,
    unless dropout in the training-mode policy makes its log-probs differ from the eval-mode reference."""
    def first_loss(disable):
        model_config = tiny_config(arch)
        model_config.update(DROPOUT[arch])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(model_config)
        model.config.name_or_path = f"tiny:{arch}"  # the tokenizer to load
        # bf16=False: log 2 is an fp32 identity (bf16 autocast, the default on a bf16 GPU, rounds the policy's
        # forward and not necessarily the reference's)
        trainer = DPOTrainer(model, config(tmp_path / str(disable), max_steps=1, disable_dropout=disable, bf16=False),
                             train_dataset=toy.preference_pairs(8, seed=10))
        trainer.train()
        return logged(trainer, "loss")[0]

    assert first_loss(True) == pytest.approx(math.log(2), abs=1e-5)
    with_dropout = first_loss(False)
    print(f"{arch}: first loss with dropout {with_dropout:.5f}, log 2 = {math.log(2):.5f}")
    assert abs(with_dropout - math.log(2)) > 1e-4  # ten times the tolerance above


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_prefix_sharing_gives_the_unshared_token_logps(arch, tmp_path):
    trainer = DPOTrainer(f"tiny:{arch}", config(tmp_path), train_dataset=toy.preference_pairs(8, seed=4))
    features = [trainer.train_dataset[i] for i in range(8)]
    pad = trainer.processing_class.pad_token_id
    model = trainer.model.eval()
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        model.to(dtype)
        plain = on_device(PreferenceCollator(pad)(features), model.device)
        with torch.no_grad():  # the unshared reference: full logits, a plain log-softmax
            logits = model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits
            unshared = torch.log_softmax(logits[:, :-1].double(), -1).gather(
                -1, plain["input_ids"][:, 1:, None]).squeeze(-1)
            mask = plain["completion_mask"][:, 1:].bool()
            shared = shared_prefix_token_logps(model, on_device(SharedPrefixCollator(pad)(features), model.device))
        for i, f in enumerate(features):
            p, c, r = len(f["prompt_ids"]), len(f["chosen_ids"]), len(f["rejected_ids"])
            # unshared logps[t] predicts token t+1; shared logps are aligned with the target token
            expected_chosen, expected_rejected = unshared[i, p - 1: p - 1 + c], unshared[8 + i, p - 1: p - 1 + r]
            assert mask[i, p - 1: p - 1 + c].all() and mask[8 + i, p - 1: p - 1 + r].all()
            assert torch.allclose(shared[i, p: p + c].double(), expected_chosen.double(), atol=tol, rtol=0)
            assert torch.allclose(shared[i, p + c: p + c + r].double(), expected_rejected.double(), atol=tol, rtol=0)


def test_prefix_sharing_trains_like_the_unshared_run(tmp_path):
    rows = toy.preference_pairs(32, seed=5)
    # bf16=False: an fp32 identity (bf16 autocast, the default on a bf16 GPU, rounds the two layouts apart)
    plain = DPOTrainer("tiny:llama", config(tmp_path / "a", bf16=False), train_dataset=rows)
    plain.train()
    shared = DPOTrainer("tiny:llama", config(tmp_path / "b", prefix_sharing=True, bf16=False), train_dataset=rows)
    shared.train()
    tolerance = logged_runs_agree(plain.model.device, abs=1e-5)  # CPU: 1e-5; accelerator: data_helpers'
    assert logged(shared, "loss") == pytest.approx(logged(plain, "loss"), **tolerance)


def test_precomputed_reference_matches_copy_and_skips_the_reference_forward(tmp_path):
    rows = toy.preference_pairs(48, seed=6)
    # bf16=False: an fp32 identity (under bf16 autocast, the default on a bf16 GPU, the copy's reference forward
    # is rounded to bf16 and the precomputed one is not)
    copy = DPOTrainer("tiny:llama", config(tmp_path, reference="copy", max_steps=6, bf16=False), train_dataset=rows)
    copy.train()
    pre = DPOTrainer("tiny:llama", config(tmp_path, reference="precomputed", max_steps=6, bf16=False),
                     train_dataset=rows)
    assert pre.ref_model is None
    pre.train()
    print(f"reference forwards during training: copy {copy.reference_forwards}, precomputed {pre.reference_forwards}")
    assert copy.reference_forwards == 6 and pre.reference_forwards == 0
    tolerance = logged_runs_agree(copy.model.device, abs=1e-5)  # CPU: 1e-5; accelerator: data_helpers'
    assert logged(pre, "loss") == pytest.approx(logged(copy, "loss"), **tolerance)
    assert logged(pre, "rewards/margins") == pytest.approx(logged(copy, "rewards/margins"), **tolerance)
    # A second run finds the cache (keyed by model, tokenizer and data) instead of recomputing.
    calls = {"n": 0}
    original = DPOTrainer.pair_logps

    def counting(self, model, batch):
        calls["n"] += 1
        return original(self, model, batch)

    DPOTrainer.pair_logps = counting
    try:
        again = DPOTrainer("tiny:llama", config(tmp_path, reference="precomputed", bf16=False), train_dataset=rows)
        assert calls["n"] == 0 and again.reference_cache_path == pre.reference_cache_path
        other_data = DPOTrainer("tiny:llama", config(tmp_path, reference="precomputed", bf16=False),
                                train_dataset=rows[:40])
        assert calls["n"] > 0 and other_data.reference_cache_path != pre.reference_cache_path
    finally:
        DPOTrainer.pair_logps = original


def test_lora_reference_is_the_adapter_switched_off(tmp_path):
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    base = load_model("tiny:llama")
    reference = load_model("tiny:llama")  # an untouched copy, only to check the values
    # bf16=False: the check below is an fp32 identity (under bf16 autocast, the default on a bf16 GPU, the
    # prepared policy's forward -- adapter off included -- would run in bf16 and the plain reference's not)
    trainer = DPOTrainer(base, config(tmp_path, max_steps=5, learning_rate=1e-2, bf16=False),
                         train_dataset=toy.preference_pairs(32), peft_config=lora)
    assert trainer.reference_strategy == "adapter" and trainer.ref_model is None
    trainer.train()
    batch = on_device(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]), trainer.model.device)
    reference.to(trainer.model.device)
    trainer.model.eval()
    ref_chosen, ref_rejected = trainer.reference_pair_logps(batch)
    with torch.no_grad():
        expected = trainer.pair_logps(reference, batch)
        policy = trainer.pair_logps(trainer.model, batch)
    # On the CPU to atol 1e-5 (allclose's default rtol 1e-5); on an accelerator, whose fp32 kernels are not
    # bit-reproducible (and these are sums of ~-80), within data_helpers' tolerance
    assert runs_agree(ref_chosen, expected[0], atol=1e-5) and runs_agree(ref_rejected, expected[1], atol=1e-5)
    assert not torch.allclose(policy[0], expected[0], atol=1e-3)  # the adapter did learn something
    assert logged(trainer, "rewards/margins")[-1] > logged(trainer, "rewards/margins")[0]


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_reference_free_losses_run_without_a_reference(loss_type, tmp_path):
    trainer = DPOTrainer("tiny:llama", config(tmp_path, loss_type=loss_type, max_steps=6, beta=2.0 if loss_type == "simpo" else 0.1),
                         train_dataset=toy.preference_pairs(48))
    assert trainer.reference_strategy == "none" and trainer.ref_model is None
    trainer.train()
    assert trainer.reference_forwards == 0
    margins = logged(trainer, "rewards/margins")
    assert margins[-1] > margins[0]


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "robust", "bco_pair", "apo_zero"])
def test_other_reference_losses_learn(loss_type, tmp_path):
    trainer = DPOTrainer("tiny:llama", config(tmp_path, loss_type=loss_type, max_steps=6, label_smoothing=0.1
                                              if loss_type == "robust" else 0.0), train_dataset=toy.preference_pairs(48))
    trainer.train()
    margins = logged(trainer, "rewards/margins")
    assert margins[-1] > margins[0]


@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("chosen"), "Row 3 has columns ['prompt', 'rejected'] but row 0 has ['chosen', 'prompt', "
                                "'rejected']; every row needs the same columns."),
    (lambda r: r.update(rejected=r["chosen"]), "Row 3: 'chosen' and 'rejected' are identical, so the pair teaches "
                                               "nothing. Drop the row or fix one of the answers."),
    (lambda r: r.update(chosen=""), "Row 3, column 'chosen' is an empty string. Fill it in or drop the row."),
    (lambda r: r.update(rejected="   "), "Row 3, column 'rejected' is an empty string. Fill it in or drop the row."),
])
def test_bad_preference_rows_name_the_row(change, message, tmp_path):
    rows = toy.preference_pairs(6)
    change(rows[3])
    with pytest.raises(DataFormatError) as err:
        DPOTrainer("tiny:llama", config(tmp_path), train_dataset=rows)
    assert str(err.value) == message


def test_reference_strategy_errors(tmp_path):
    rows = toy.preference_pairs(8)
    with pytest.raises(ValueError, match="LoRA policy"):
        DPOTrainer("tiny:llama", config(tmp_path, reference="adapter"), train_dataset=rows)
    with pytest.raises(ValueError, match="reference-free"):
        DPOTrainer("tiny:llama", config(tmp_path, reference="none"), train_dataset=rows)
    with pytest.raises(ValueError, match="Unknown loss_type"):
        config(tmp_path, loss_type="dpo++")
    with pytest.raises(ValueError, match="KTOTrainer"):
        config(tmp_path, loss_type="kto")


def test_resume_matches_uninterrupted_run(tmp_path):
    from transformers import TrainerCallback

    class StopAt5(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            control.should_training_stop = state.global_step >= 5

    rows = toy.preference_pairs(64, seed=9)
    common = dict(max_steps=10, save_strategy="steps", save_steps=5, lr_scheduler_type="cosine")
    straight = DPOTrainer("tiny:llama", config(tmp_path / "a", **common), train_dataset=rows)
    straight.train()
    stopped = DPOTrainer("tiny:llama", config(tmp_path / "b", **common), train_dataset=rows, callbacks=[StopAt5()])
    stopped.train()
    resumed = DPOTrainer("tiny:llama", config(tmp_path / "b", **common), train_dataset=rows)
    resumed.train(resume_from_checkpoint=get_last_checkpoint(str(tmp_path / "b" / "out")))
    # on the CPU to 1e-6; on an accelerator, whose kernels are not bit-reproducible, as data_helpers explains
    assert_runs_agree(straight.model.state_dict(), resumed.model.state_dict(), atol=1e-6)


def test_trl_config_fields_and_defaults(tmp_path):
    """TRL 1.16's DPOConfig names and defaults; a TRL option posttrain lacks is refused, never ignored."""
    trl = trl_or_none()  # without TRL (CI) the comparison is skipped and the rest still runs
    names = ("learning_rate", "loss_type", "loss_weights", "beta", "label_smoothing", "discopop_tau", "max_length",
             "precompute_ref_log_probs", "precompute_ref_batch_size", "disable_dropout", "truncation_mode",
             "logging_steps", "use_weighting", "ld_alpha", "f_divergence_type", "sync_ref_model",
             "ref_model_mixup_alpha", "ref_model_sync_steps", "padding_free")
    if trl is not None:
        ours, theirs = DPOConfig(output_dir=str(tmp_path)), trl.DPOConfig(output_dir=str(tmp_path), bf16=False)
        for name in names:
            assert getattr(ours, name) == getattr(theirs, name), name
    assert config(tmp_path, loss_type="ipo").loss_type == ["ipo"]  # a string becomes a list, as TRL
    with pytest.raises(ValueError, match="loss_weights has 1 values for 2"):
        config(tmp_path, loss_type=["sigmoid", "sft"], loss_weights=[1.0])
    for name, value in (("use_weighting", True), ("ld_alpha", 0.5), ("sync_ref_model", True),
                        ("f_divergence_type", "js_divergence"), ("activation_offloading", True)):
        with pytest.raises(ValueError, match=f"{name}=.*not implemented in posttrain"):
            config(tmp_path, **{name: value})
    assert config(tmp_path, precompute_ref_log_probs=True).reference == "precomputed"
    assert config(tmp_path, reference="precomputed").precompute_ref_log_probs
    with pytest.raises(ValueError, match="contradicts"):
        config(tmp_path, precompute_ref_log_probs=True, reference="copy")
    with pytest.raises(ValueError, match="exo_pair needs label_smoothing"):
        config(tmp_path, loss_type="exo_pair")


def test_trl_signature_and_combined_loss(tmp_path):
    """DPOTrainer(model, ref_model, args) as TRL; the old DPOTrainer(model, config) too. The loss of
    ["sigmoid", "sft"] with weights [1, 0.5] at step one (policy == reference) is log 2 + 0.5 * the
    token-mean NLL of the chosen answers, summed here by hand."""
    rows = toy.preference_pairs(8, seed=10)
    with pytest.raises(TypeError, match="posttrain DPOConfig"):
        DPOTrainer("tiny:llama", None, SFTConfig(output_dir=str(tmp_path)), train_dataset=rows)
    # bf16=False: the logged loss is checked against an fp32 sum by hand (bf16 is the default on a bf16 GPU)
    args = config(tmp_path, max_steps=1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], bf16=False)
    model, ref_model = load_model("tiny:llama"), load_model("tiny:llama", seed=1)
    trainer = DPOTrainer(model, ref_model, args, train_dataset=rows)
    assert trainer.ref_model is not None and trainer.reference_strategy == "copy"
    old_style = DPOTrainer(load_model("tiny:llama"), args, train_dataset=rows)
    assert old_style.args is args and old_style.reference_strategy == "copy"
    old_style.train()
    batch = old_style.data_collator([old_style.train_dataset[i] for i in range(8)])
    model = load_model("tiny:llama")
    nll = -summed_logps(model, {k: v[:8] for k, v in batch.items()}).sum() / batch["completion_mask"][:8, 1:].sum()
    assert logged(old_style, "loss")[0] == pytest.approx(math.log(2) + 0.5 * nll.item(), abs=1e-4)
    assert logged(old_style, "rewards/margins")[0] == pytest.approx(0.0, abs=1e-6)
