"""Held-out evaluation (`evaluate_policy`), the demo's frontier probe (probing leaves training alone),
seeded heads on load, model-card sections and bar-only progress."""

import json

import pytest
import torch

from posttrain.data import toy
from posttrain.eval.policy import evaluate_policy
from posttrain.models.loading import load_model
from posttrain.rollout.sampling import PolicySampler

from data_helpers import assert_runs_agree

PROMPTS = toy.held_out_openings(7)


def prompt_length(prompts, completions, **kwargs):
    """A reward that depends on the prompt and the completion, so a sample given another row's value shows."""
    return [len(p) + len(c) / 1000 for p, c in zip(prompts, completions)]


def completion_chars(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


REWARDS = {"prompt_length": prompt_length, "chars": completion_chars}


@pytest.fixture(scope="module")
def policy():
    return load_model("tiny:llama", seed=0).eval()


@pytest.fixture(scope="module")
def other():
    return load_model("tiny:llama", seed=1).eval()


def evaluate(policy, tok, **kw):
    kw = {"rewards": REWARDS, "max_new_tokens": 8, "seed": 0, **kw}
    return evaluate_policy(policy, tok, PROMPTS, kw.pop("rewards"), **kw)


def completion_logps(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Log-probs of ``completion`` after ``prompt``, one row alone, without padding: from scratch."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logps = model(ids).logits[0].float().log_softmax(-1)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return logps[positions, torch.tensor(completion)]


# ---- evaluate_policy -------------------------------------------------------------------------------

def test_kl_to_itself_is_zero_and_to_another_model_positive(policy, other, tok):
    itself = evaluate(policy, tok, reference=policy)
    assert itself["kl"] == pytest.approx(0.0, abs=1e-5) and itself["kl_sum"] == pytest.approx(0.0, abs=1e-5)
    another = evaluate(policy, tok, reference=other)
    assert another["kl_sum"] > 0.05 and another["kl"] > 0.05 / 8  # completions of at most 8 tokens
    assert not {"kl", "kl_sum"} & set(evaluate(policy, tok))  # no reference, no KL


@pytest.mark.parametrize("batch_size", [3, 32])
def test_kl_equals_a_from_scratch_computation_on_the_sampled_completions(policy, other, tok, monkeypatch,
                                                                         batch_size):
    rollouts, original = [], PolicySampler.__call__

    def spy(self, *args, **kwargs):
        rollouts.append(original(self, *args, **kwargs))
        return rollouts[-1]

    monkeypatch.setattr(PolicySampler, "__call__", spy)
    result = evaluate(policy, tok, reference=other, batch_size=batch_size)
    assert len(rollouts) == -(-len(PROMPTS) // batch_size)  # one rollout per chunk
    kls, lengths, rows = [], [], 0
    for rollout in rollouts:
        for i in range(len(rollout)):
            prompt = rollout.prompt_ids[i][rollout.prompt_attention[i].bool()].tolist()
            assert prompt == tok(PROMPTS[rows], add_special_tokens=False)["input_ids"]  # rows in prompt order
            real = rollout.completion_attention[i].bool()
            completion = rollout.completion_ids[i][real].tolist()
            mask = rollout.completion_mask[i][real].float()
            assert len(completion) > 0
            diff = completion_logps(policy, prompt, completion) - completion_logps(other, prompt, completion)
            kls.append(float((diff * mask).sum()))
            lengths.append(float(mask.sum()))
            assert result["samples"][rows]["completion"] == tok.decode(completion, skip_special_tokens=True)
            rows += 1
    assert rows == len(PROMPTS)
    assert result["kl_sum"] == pytest.approx(sum(kls) / len(kls), abs=1e-4)  # nats per completion
    assert result["kl"] == pytest.approx(sum(kls) / sum(lengths), abs=1e-5)  # per token
    assert result["length"] == pytest.approx(sum(lengths) / len(lengths))


def test_sampling_is_seeded_and_leaves_the_callers_rng_alone(policy, tok):
    torch.manual_seed(123)
    first = evaluate(policy, tok, seed=5)
    after_call = torch.rand(4)
    torch.manual_seed(123)
    assert torch.equal(after_call, torch.rand(4))
    again = evaluate(policy, tok, seed=5)
    assert again["samples"] == first["samples"]
    other_seed = evaluate(policy, tok, seed=6)
    assert [s["completion"] for s in other_seed["samples"]] != [s["completion"] for s in first["samples"]]


@pytest.mark.parametrize("batch_size", [3, 32])
def test_one_sample_per_prompt_in_order_with_each_rewards_value(policy, tok, batch_size):
    result = evaluate(policy, tok, batch_size=batch_size)
    samples = result["samples"]
    assert [s["prompt"] for s in samples] == PROMPTS
    for s in samples:
        assert set(s) == {"prompt", "completion", "reward", *REWARDS}
        for name, fn in REWARDS.items():
            assert s[name] == pytest.approx(fn([s["prompt"]], [s["completion"]])[0])  # float32, as in training
        assert s["reward"] == pytest.approx(sum(s[name] for name in REWARDS))  # the weighted sum (weights 1)
    for name in [*REWARDS, "reward"]:
        assert result[name] == pytest.approx(sum(s[name] for s in samples) / len(samples))
    assert len({s["completion"] for s in samples}) > 1


def test_batch_size_keeps_prompts_and_their_order(policy, tok):
    # Completions themselves depend on the batching (the chunks' padding and the RNG stream are shared
    # across a chunk's rows), so only the prompts and their order are compared.
    small, large = evaluate(policy, tok, batch_size=3), evaluate(policy, tok, batch_size=32)
    assert [s["prompt"] for s in small["samples"]] == [s["prompt"] for s in large["samples"]] == PROMPTS


def test_no_prompts_is_an_error(policy, tok):
    with pytest.raises(ValueError, match="at least one prompt"):
        evaluate_policy(policy, tok, [], REWARDS)


# ---- the demo's frontier probe does not change training ----------------------------------------------

class FakeDemo:
    """What FrontierProbe needs of a Demo: ``measure(model, tokenizer)`` (here sentiment, no reference)."""

    def __init__(self):
        self.calls = 0

    def measure(self, model, tokenizer):
        from posttrain.rewards.builtin import sentiment

        self.calls += 1
        result = evaluate_policy(model, tokenizer, PROMPTS[:4], {"sentiment": sentiment}, max_new_tokens=8, seed=0)
        return {**result, "rm_score": result["sentiment"], "kl": 0.0}


def weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def check_probe_leaves_training_alone(run, every: int = 2, steps=(2,), unit: int = 1):
    """``run(name, callbacks) -> (start weights, end weights)``: training moves the weights, a probe every
    ``every`` steps of ``unit`` optimizer steps records a point at each of ``steps`` (by default: every 2 of
    4 steps, one point) and the probed run ends with the unprobed run's exact weights (on the CPU; on an
    accelerator, whose kernels are not bit-reproducible, within the tolerance data_helpers explains)."""
    from posttrain.demo import FrontierProbe

    probe = FrontierProbe(FakeDemo(), every=every, unit=unit)
    start, plain = run("plain", None)
    _, probed = run("probed", [probe])
    assert any(not torch.equal(start[n], plain[n]) for n in start)  # training moved the weights
    assert_runs_agree(plain, probed)
    check_probe_points(probe, list(steps))


def check_probe_points(probe, steps):
    assert [p["step"] for p in probe.points] == steps  # the final step is left to the evaluation after saving
    assert probe.demo.calls == len(steps)
    for point in probe.points:
        assert set(point) == {"step", "rm_score", "sentiment", "kl", "length"}
        assert point["rm_score"] == point["sentiment"] and 0 < point["length"] <= 8


@pytest.mark.parametrize("every,unit,steps", [
    (2, 4, (2,)),  # as the demo probes PPO: in generations (4 optimizer steps each here), every 2 of 4: one point
    (6, 1, (6, 12)),  # in optimizer steps: once inside a generation (its 2nd epoch) and once at a generation's end
])
def test_frontier_probe_does_not_change_ppo_training(tmp_path, every, unit, steps):
    from posttrain.trainers import PPOConfig, PPOTrainer

    def run(name, callbacks):
        # 4 generations of 4 prompts, 4 PPO epochs each (num_iterations' default): 16 optimizer steps
        args = PPOConfig(output_dir=str(tmp_path / name), max_steps=16, per_device_train_batch_size=4,
                         max_completion_length=8, learning_rate=1e-3, disable_tqdm=True, seed=0, logging_steps=1,
                         lr_scheduler_type="constant", save_strategy="no", report_to="none",
                         bf16=False)  # bf16 autocast (the GPU default) would amplify the kernels' run-to-run noise
        trainer = PPOTrainer("tiny:llama", ["sentiment"], args=args, train_dataset=toy.review_prompts(8, seed=3),
                             callbacks=callbacks)
        start = weights(trainer.model)
        trainer.train()
        assert trainer.state.global_step == 16
        return start, weights(trainer.model)

    # The probe is a TrainerCallback, called after every optimizer step.
    check_probe_leaves_training_alone(run, every=every, steps=steps, unit=unit)


def test_frontier_probe_does_not_change_dpo_training(tmp_path):
    from posttrain.trainers import DPOConfig, DPOTrainer

    def run(name, callbacks):
        model = load_model("tiny:llama", seed=0)
        for module in model.modules():  # attention dropout: training draws from the global RNG every step
            if hasattr(module, "attention_dropout"):
                module.attention_dropout = 0.1
        args = DPOConfig(output_dir=str(tmp_path / name), per_device_train_batch_size=4, learning_rate=1e-3,
                         max_steps=4, logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0,
                         max_length=64, lr_scheduler_type="constant", warmup_steps=0, report_to="none",
                         reference_cache_dir=str(tmp_path / name / "cache"), disable_dropout=False,
                         bf16=False)  # bf16 autocast (the GPU default) would amplify the kernels' run-to-run noise
        trainer = DPOTrainer(model, args, train_dataset=toy.preference_pairs(8, seed=4), callbacks=callbacks)
        start = weights(trainer.model)
        trainer.train()
        return start, weights(trainer.model)

    check_probe_leaves_training_alone(run)


# ---- a new head starts from the load's seed ------------------------------------------------------------

def test_new_reward_head_depends_only_on_the_seed(tmp_path, tok):
    from posttrain.models.tiny import build_tiny_model

    build_tiny_model("tiny:llama", seed=0).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    def head(seed):
        state = torch.get_rng_state()
        model = load_model(str(tmp_path), "seq-cls", seed=seed)
        assert torch.equal(torch.get_rng_state(), state)  # the load leaves the global RNG alone
        return model.score.weight.detach().clone()

    torch.manual_seed(0)
    first = head(3)
    torch.rand(1000)  # advance the global RNG between the loads
    assert torch.equal(head(3), first)
    assert not torch.equal(head(4), first)
    assert first.abs().sum() > 0


# ---- model cards -----------------------------------------------------------------------------------------

def test_appending_a_card_section_twice_replaces_it(tmp_path):
    from posttrain.card import append_card_section

    card = "---\nbase_model: tiny:llama\n---\n\n# out\n\nTrained with posttrain.\n\n## Final metrics\n\n- loss: 1.0\n"
    (tmp_path / "README.md").write_text(card, encoding="utf-8")
    append_card_section(str(tmp_path), "Held-out evaluation", ["- score: 0.1111", "- kl: 2.0"])
    once = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert once.startswith(card) and once.count("## Held-out evaluation") == 1 and "- score: 0.1111" in once
    append_card_section(str(tmp_path), "Held-out evaluation", ["- score: 0.2222"])
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert text.startswith(card)  # the rest of the card is kept
    assert text.count("## Held-out evaluation") == 1
    assert "- score: 0.2222" in text and "0.1111" not in text and "- kl: 2.0" not in text
    assert text.endswith("## Held-out evaluation\n\n- score: 0.2222\n")


# ---- bar-only progress -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bar_only", [True, False])
def test_bar_only_prints_no_log_entries(tmp_path, capsys, bar_only):
    from posttrain.run import run_training
    from posttrain.config import DataArguments, ModelArguments
    from posttrain.trainers import SFTConfig

    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in toy.prompt_completion(32)), encoding="utf-8")
    config = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=3, logging_steps=1, report_to="none",
                       per_device_train_batch_size=4, disable_tqdm=True, save_strategy="no")
    capsys.readouterr()
    trainer = run_training("sft", ModelArguments(model_name_or_path="tiny:llama"), DataArguments(dataset_name=str(path)), config,
                           bar_only=bar_only)
    out = capsys.readouterr().out
    assert sum("loss" in e for e in trainer.state.log_history) == 3  # the entries were logged either way
    assert ("{'loss'" in out) is not bar_only


def test_card_section_replaced_in_place_keeps_later_sections(tmp_path):
    from posttrain.card import append_card_section

    (tmp_path / "README.md").write_text("# card\n\nintro\n")
    append_card_section(str(tmp_path), "A", ["a1"])
    append_card_section(str(tmp_path), "B", ["b1"])
    append_card_section(str(tmp_path), "A", ["a2"])
    assert (tmp_path / "README.md").read_text() == "# card\n\nintro\n\n## A\n\na2\n\n## B\n\nb1\n"
